"""kernels.gather: every backend against gather_tokens_ref / scatter_tokens_ref / gather_layer_norm_ref."""
import os
import subprocess
import sys

import pytest
import torch

import kernels
from kernels import _ops
from kernels.gather import gather_layer_norm_ref

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPES = [(1, 1, 1, 1), (1, 7, 3, 7), (2, 5, 3, 0), (3, 17, 33, 9), (4, 64, 96, 20), (2, 13, 1, 13)]  # B,N,D,K


def _idx(B, N, K, g):
    return torch.stack([torch.randperm(N, generator=g)[:K] for _ in range(B)])


def _rows(idx_BK, N):
    return (idx_BK + torch.arange(idx_BK.shape[0])[:, None] * N).reshape(-1)


def test_cpp_extension_is_built():
    # The test command runs after the build: a missing extension is a failure, not a skip.
    _ops.require_cpp("test")
    assert hasattr(torch.ops.jepa_cpp, "gather_rows")


@pytest.mark.parametrize("bk", ["cpp", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B,N,D,K", SHAPES)
def test_gather_scatter_match_ref(bk, dtype, B, N, D, K):
    g = torch.Generator().manual_seed(B * 100 + N + D + K)
    x = torch.randn(B, N, D, generator=g).to(dtype)
    idx = _idx(B, N, K, g)
    rows = _rows(idx, N)
    with kernels.backend(bk):
        torch.testing.assert_close(kernels.gather_tokens(x, idx), kernels.gather_tokens_ref(x, idx), rtol=0, atol=0)
        y = kernels.gather_tokens(x, rows)
        torch.testing.assert_close(y, kernels.gather_tokens_ref(x, rows), rtol=0, atol=0)
        torch.testing.assert_close(kernels.scatter_tokens(y, rows, B, N), kernels.scatter_tokens_ref(y, rows, B, N),
                                   rtol=0, atol=0)
        if K:
            ref = gather_layer_norm_ref(x.double(), rows).to(dtype)
            tol = {torch.float32: 1e-5, torch.float64: 1e-10}.get(dtype, 2e-2)
            torch.testing.assert_close(kernels.gather_layer_norm(x, rows), ref, rtol=tol, atol=tol)


def test_layer_norm_eps_matches_target_path():
    x = torch.randn(2, 9, 16) * 1e-3   # small variance: eps matters
    rows = torch.tensor([0, 5, 17])
    want = torch.nn.functional.layer_norm(x, (16,)).reshape(-1, 16)[rows]
    with kernels.backend("cpp"):
        torch.testing.assert_close(kernels.gather_layer_norm(x, rows), want)


@pytest.mark.parametrize("bk", ["cpp", "torch"])
def test_non_contiguous_and_int32(bk):
    x = torch.randn(20, 3, 10).transpose(0, 1)   # [3, 20, 10] non-contiguous
    assert not x.is_contiguous()
    rows = torch.tensor([3, 59, 22, 40], dtype=torch.int32)
    with kernels.backend(bk):
        torch.testing.assert_close(kernels.gather_tokens(x, rows), kernels.gather_tokens_ref(x, rows.long()))


@pytest.mark.parametrize("bk", ["cpp", "torch"])
def test_gradcheck(bk):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    idx = _idx(2, 6, 4, g)
    rows = _rows(idx, 6)
    y = torch.randn(5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    with kernels.backend(bk):
        assert torch.autograd.gradcheck(lambda a: kernels.gather_tokens(a, rows), (x,))
        assert torch.autograd.gradcheck(lambda a: kernels.gather_tokens(a, idx), (x,))
        assert torch.autograd.gradcheck(lambda a: kernels.scatter_tokens(a, rows[:5], 2, 6), (y,))
        assert torch.autograd.gradgradcheck(lambda a: kernels.gather_tokens(a, rows), (x,))


@pytest.mark.parametrize("bk", ["cpp", "torch"])
def test_bad_inputs(bk):
    x = torch.randn(2, 4, 3)
    with kernels.backend(bk):
        with pytest.raises(IndexError, match="out of range"):
            kernels.gather_tokens(x, torch.tensor([0, 8]))
        with pytest.raises(IndexError, match="out of range"):
            kernels.gather_tokens(x, torch.tensor([[0, 4], [1, 2]]))   # 4 >= N in sample 0
        with pytest.raises(IndexError, match="out of range"):
            kernels.gather_tokens(x, torch.tensor([-1]))
        with pytest.raises(TypeError, match="int64 or int32"):
            kernels.gather_tokens(x, torch.tensor([0.0, 1.0]))
        with pytest.raises(ValueError, match=r"\[B, N, D\]"):
            kernels.gather_tokens(x[0], torch.tensor([0]))
        with pytest.raises(ValueError, match="batch"):
            kernels.gather_tokens(x, torch.zeros(3, 1, dtype=torch.long))


def test_cpp_raises_on_bad_rows_directly():
    _ops.require_cpp("test")
    x = torch.randn(4, 3)
    with pytest.raises(IndexError, match="out of range"):
        torch.ops.jepa_cpp.gather_rows(x, torch.tensor([4]))
    with pytest.raises(IndexError, match="out of range"):
        torch.ops.jepa_cpp.scatter_rows(torch.randn(1, 3), torch.tensor([-1]), 4)
    with pytest.raises(RuntimeError, match="appears twice"):
        torch.ops.jepa_cpp.scatter_rows(torch.randn(2, 3), torch.tensor([1, 1]), 4)
    with pytest.raises(RuntimeError, match="int64 or int32"):
        torch.ops.jepa_cpp.gather_rows(x, torch.tensor([1.0]))


@pytest.mark.parametrize("bk", ["cpp", "torch"])
def test_repeated_rows_need_accumulate(bk):
    x = torch.randn(2, 4, 3, requires_grad=True)
    with kernels.backend(bk):
        with pytest.raises(ValueError, match="row 1 appears more than once.*accumulate=True"):
            kernels.gather_tokens(x, torch.tensor([1, 1]))
        with pytest.raises(ValueError, match="row 5 appears more than once"):   # sample 1, token 1
            kernels.gather_tokens(x, torch.tensor([[0, 2], [1, 1]]))
        with torch.no_grad():   # no backward: repeats are fine
            torch.testing.assert_close(kernels.gather_tokens(x, torch.tensor([1, 1])), x.reshape(8, 3)[[1, 1]])
        y = kernels.gather_tokens(x, torch.tensor([1, 1, 6]), accumulate=True)
        y.backward(torch.ones_like(y))
    want = torch.zeros(8, 3)
    want[1], want[6] = 2, 1
    torch.testing.assert_close(x.grad.reshape(8, 3), want)


@pytest.mark.parametrize("bk", ["cpp", "torch"])
def test_scatter_refuses_repeated_rows(bk):
    with kernels.backend(bk), pytest.raises((ValueError, RuntimeError), match="appears"):
        kernels.scatter_tokens(torch.randn(2, 3), torch.tensor([1, 1]), 1, 4)


TRITON_SCRIPT = r"""
import torch, kernels
from kernels.triton_gather import gather_rows_triton, scatter_rows_triton, gather_layer_norm_triton
g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    for (M, D, T) in ((1, 1, 1), (12, 7, 5), (30, 40, 30), (9, 130, 0)):
        x = torch.randn(M, D, generator=g).to(dtype)
        rows = torch.randperm(M, generator=g)[:T]
        assert torch.equal(gather_rows_triton(x, rows), x[rows]), (dtype, M, D, T)
        y = x[rows]
        want = torch.zeros_like(x); want[rows] = y
        assert torch.equal(scatter_rows_triton(y, rows, M), want)
        if T:
            ln = torch.nn.functional.layer_norm(x.double()[rows], (D,)).to(dtype)
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            torch.testing.assert_close(gather_layer_norm_triton(x, rows, 1e-5), ln, rtol=tol, atol=tol)
# through the public op with the triton backend, including the backward
x = torch.randn(2, 6, 5, requires_grad=True)
rows = torch.tensor([0, 3, 7, 11])
with kernels.backend("triton"):
    y = kernels.gather_tokens(x, rows)
    y.backward(torch.ones_like(y))
assert torch.equal(y, x.detach().reshape(12, 5)[rows])
assert x.grad.reshape(12, 5)[rows].eq(1).all() and x.grad.sum() == 20
# bad rows are masked, never read out of bounds
assert gather_rows_triton(torch.ones(3, 4), torch.tensor([5])).eq(0).all()
print("OK")
"""


def test_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


def test_fallback_warns_once_when_not_built(monkeypatch):
    # A fresh clone (nothing built) still works: CPU calls use the torch reference with one warning.
    monkeypatch.setattr(_ops, "cpp_available", lambda: False)
    monkeypatch.setattr(_ops, "_warned", False)
    x, rows = torch.randn(2, 4, 3), torch.tensor([1, 6])
    with kernels.backend("auto"):
        with pytest.warns(RuntimeWarning, match="not built"):
            y = kernels.gather_tokens(x, rows)
        torch.testing.assert_close(y, kernels.gather_tokens_ref(x, rows))


def test_python_row_checks_read_the_device_once(monkeypatch):
    # Off CPU every host read of a tensor's value is a device sync: the range and uniqueness checks of a
    # differentiable gather share one read (the torch backend runs the checks the GPU backends get).
    x = torch.randn(2, 10, 4, requires_grad=True)
    reads = []
    for name in ("item", "tolist", "__int__", "__bool__", "__float__"):
        f = getattr(torch.Tensor, name)
        counted = lambda self, *a, _f=f, _n=name, **k: (reads.append(_n), _f(self, *a, **k))[1]  # noqa: E731
        monkeypatch.setattr(torch.Tensor, name, counted)
    with kernels.backend("torch"):
        kernels.gather_tokens(x, torch.tensor([0, 3, 12, 19]))
        assert len(reads) == 1, reads
        reads.clear()
        kernels.scatter_tokens(torch.randn(3, 4), torch.tensor([1, 7, 2]), 2, 10)
        assert len(reads) == 1, reads
        # a row out of range is reported as such, also when another row repeats
        with pytest.raises(IndexError, match=r"indices span \[3, 25\] but there are 20 rows"):
            kernels.gather_tokens(x, torch.tensor([3, 3, 25]))
