"""kernels.ema_ and FlatEMA against ema_ref on every backend."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import kernels
from kernels import _ops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZES = [[1], [7, 1, 33], [70001, 5], [0, 3], [4, 100000]]   # odd sizes, empty, more than one chunk


def _lists(sizes, tdt, sdt, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(n, generator=g).to(tdt) for n in sizes]
    s = [torch.randn(n, generator=g).to(sdt) for n in sizes]
    return t, s


def test_cpp_extension_is_built():
    _ops.require_cpp("test")
    assert hasattr(torch.ops.jepa_cpp, "ema_")


@pytest.mark.parametrize("bk", ["cpp", "torch"])
@pytest.mark.parametrize("tdt,sdt", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                     (torch.float32, torch.float16), (torch.float64, torch.float64)])
@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("m", [0.996, 0.0, 1.0])
def test_ema_matches_ref(bk, tdt, sdt, sizes, m):
    t, s = _lists(sizes, tdt, sdt)
    want = [x.clone() for x in t]
    kernels.ema_ref(want, s, m)
    with kernels.backend(bk):
        kernels.ema_(t, s, m)
    tol = 1e-12 if tdt == torch.float64 else 1e-6
    for a, b in zip(t, want):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("bk", ["cpp", "torch"])
def test_tensor_momentum_and_shapes(bk):
    t = [torch.randn(3, 4), torch.randn(2, 5, 7)]
    s = [torch.randn(3, 4).bfloat16(), torch.randn(2, 5, 7).bfloat16()]
    want = [x.clone() for x in t]
    kernels.ema_ref(want, s, 0.9)
    with kernels.backend(bk):
        kernels.ema_(t, s, torch.tensor(0.9))
    for a, b in zip(t, want):
        torch.testing.assert_close(a, b)


def test_flat_buffer_single_tensor():
    t, s = torch.randn(1000), torch.randn(1000)
    want = t.clone()
    kernels.ema_ref(want, s, 0.5)
    kernels.ema_(t, s, 0.5)
    torch.testing.assert_close(t, want)


@pytest.mark.parametrize("flatten_source", [False, True])
def test_flat_ema(flatten_source):
    torch.manual_seed(0)
    src = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))
    tgt = nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))
    want = [p.detach().clone() for p in tgt.parameters()]
    kernels.ema_ref(want, [p.detach() for p in src.parameters()], 0.9)
    ema = kernels.FlatEMA(tgt, src, flatten_source=flatten_source)
    ema(0.9)
    for p, w in zip(tgt.parameters(), want):
        torch.testing.assert_close(p.detach(), w)
    assert ema.flat_target.numel() == sum(p.numel() for p in tgt.parameters())
    # the parameters are views of the flat buffer, so the module sees every update
    assert tgt[0].weight.data.data_ptr() == ema.flat_target.data_ptr()
    x = torch.randn(2, 5)
    src(x).sum().backward()   # flattened sources still train
    assert src[0].weight.grad is not None


@pytest.mark.parametrize("bk", ["cpp", "torch"])
def test_bad_inputs(bk):
    with kernels.backend(bk):
        with pytest.raises(ValueError, match="2 targets but 1 sources"):
            kernels.ema_([torch.zeros(2), torch.zeros(2)], [torch.zeros(2)], 0.9)
        with pytest.raises(ValueError, match="shape"):
            kernels.ema_([torch.zeros(2)], [torch.zeros(3)], 0.9)
        with pytest.raises(TypeError, match="not supported"):
            kernels.ema_([torch.zeros(2, dtype=torch.bfloat16)], [torch.zeros(2)], 0.9)
        with pytest.raises(TypeError, match="floating point"):
            kernels.ema_([torch.zeros(2, dtype=torch.long)], [torch.zeros(2, dtype=torch.long)], 0.9)
        with pytest.raises(ValueError, match="contiguous"):
            kernels.ema_([torch.zeros(4, 4).t()], [torch.zeros(4, 4)], 0.9)
        with pytest.raises(ValueError, match="scalar"):
            kernels.ema_([torch.zeros(2)], [torch.zeros(2)], torch.ones(2))


def test_cpp_checks_directly():
    _ops.require_cpp("test")
    with pytest.raises(RuntimeError, match="targets but"):
        torch.ops.jepa_cpp.ema_([torch.zeros(2)], [], torch.tensor(0.5))
    with pytest.raises(RuntimeError, match="not supported"):
        torch.ops.jepa_cpp.ema_([torch.zeros(2, dtype=torch.half)], [torch.zeros(2)], torch.tensor(0.5))


TRITON_SCRIPT = r"""
import torch, kernels
from kernels.triton_ema import ema_triton_
g = torch.Generator().manual_seed(0)
for sdt in (torch.float32, torch.float16, torch.bfloat16):
    t = [torch.randn(n, generator=g) for n in (1, 33, 5000)]
    s = [torch.randn(x.shape, generator=g).to(sdt) for x in t]
    want = [x.clone() for x in t]
    kernels.ema_ref(want, s, 0.99)
    ema_triton_(t, s, torch.tensor(0.99), BLOCK=1024)
    for a, b in zip(t, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
t = [torch.randn(10)]; s = [torch.randn(10)]; want = [t[0].clone()]
kernels.ema_ref(want, s, 0.5)
with kernels.backend("triton"):
    kernels.ema_(t, s, 0.5)
torch.testing.assert_close(t[0], want[0])
print("OK")
"""


def test_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
