"""kernels.ema_ against ema_ref on every backend; its input checks; the device pick."""
import os
import subprocess
import sys

import pytest
import torch

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
        for m in (float("nan"), 2.0, -0.1, 1.0 + 1e-9, torch.tensor(float("nan"))):
            t = torch.ones(2)
            with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
                kernels.ema_([t], [torch.zeros(2)], m)
            assert t.eq(1).all()   # refused before anything is written
        with pytest.raises(TypeError, match="both be tensors or both be lists"):
            kernels.ema_(torch.zeros(2), [torch.zeros(2)], 0.9)
        with pytest.raises(TypeError, match="both be tensors or both be lists"):
            kernels.ema_([torch.zeros(2)], torch.zeros(2), 0.9)
        with pytest.raises(TypeError, match="must be a tensor"):
            kernels.ema_([torch.zeros(2)], [[0.0, 0.0]], 0.9)
        with pytest.raises(TypeError, match="momentum must be a float"):
            kernels.ema_([torch.zeros(2)], [torch.zeros(2)], "0.9")


def test_device_pick_prefers_one_launch(monkeypatch):
    """On CUDA the EMA runs the multi-tensor CUDA kernel when built, else the one-launch Triton kernel;
    the pick reads only the device type, so this runs without a GPU."""
    from kernels import _registry
    cuda = torch.device("cuda")
    monkeypatch.setattr(_ops, "_TRITON", True)
    monkeypatch.setattr(_ops, "cuda_available", lambda: False)
    assert _registry.pick("ema_", cuda, fp64=False).backend == "triton"
    monkeypatch.setattr(_ops, "cuda_available", lambda: True)
    assert _registry.pick("ema_", cuda, fp64=False).backend == "cuda"
    assert _registry.pick("ema_", cuda, fp64=True).backend == "triton"   # the CUDA kernel is fp32-only
    monkeypatch.setattr(_ops, "_TRITON", False)
    assert _registry.pick("ema_", cuda, fp64=True).backend == "torch"
    assert _registry.pick("ema_", torch.device("cpu"), fp64=False).backend == "cpp"
    with kernels.backend("cpp"), pytest.raises(RuntimeError, match="'cpp' is forced.*runs on cpu tensors"):
        _registry.pick("ema_", cuda, fp64=False)


def test_cpp_checks_directly():
    _ops.require_cpp("test")
    with pytest.raises(RuntimeError, match="targets but"):
        torch.ops.jepa_cpp.ema_([torch.zeros(2)], [], torch.tensor(0.5))
    with pytest.raises(RuntimeError, match="not supported"):
        torch.ops.jepa_cpp.ema_([torch.zeros(2, dtype=torch.half)], [torch.zeros(2)], torch.tensor(0.5))


TRITON_SCRIPT = r"""
import torch, kernels
import kernels.triton_ema as te
te.CHUNK, te.BLOCK = 1024, 256   # several chunks per tensor at interpreter-sized shapes
launches = []
kernel = te._ema_kernel
class Counting:
    def __getitem__(self, grid):
        launches.append(grid)
        return kernel[grid]
te._ema_kernel = Counting()
g = torch.Generator().manual_seed(0)
for sdt in (torch.float32, torch.float16, torch.bfloat16):
    t = [torch.randn(n, generator=g) for n in (1, 33, 0, 5000, 2, 3)]
    s = [torch.randn(x.shape, generator=g).to(sdt) for x in t]
    want = [x.clone() for x in t]
    kernels.ema_ref(want, s, 0.99)
    launches.clear()
    te.ema_triton_(t, s, torch.tensor(0.99))
    assert len(launches) == 1 and launches[0] == (1 + 1 + 5 + 1 + 1,), launches   # one launch, every chunk
    for a, b in zip(t, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
t = [torch.randn(3, dtype=torch.float64)]; s = [torch.randn(3, dtype=torch.float64)]; want = [t[0].clone()]
kernels.ema_ref(want, s, 0.25)
te.ema_triton_(t, s, torch.tensor(0.25))
torch.testing.assert_close(t[0], want[0], rtol=1e-15, atol=1e-15)
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
