"""kernels.gelu_with_grad: GELU's output and gradient in one pass, against the torch reference and fp64."""
import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import _ops, _registry

cpp = pytest.mark.skipif(not _ops.cpp_available(), reason="the C++ extension is not built (kernels._C)")


def _isas():
    return list(range(int(torch.ops.jepa_cpp.gelu_best_isa()) + 1)) if _ops.cpp_available() else []


def _exact(h, g):
    """fp64 GELU and its gradient from erf and exp (torch's fp64 kernels)."""
    x, g = h.double(), g.double()
    cdf = 0.5 * (1 + torch.erf(x / 2 ** 0.5))
    return x * cdf, g * (cdf + x * torch.exp(-0.5 * x * x) / (2 * torch.pi) ** 0.5)


def _check(y, dh, h, g):
    # Bounds from the math: erf's approximation (|error| < 1.5e-7, as ATen's vectorised GELU) and a few
    # fp32 roundings, scaled by the magnitudes that enter each output (|h| for y, |g| for dh).
    y64, d64 = _exact(h, g)
    assert y.dtype == dh.dtype == torch.float32 and y.shape == dh.shape == h.shape
    assert ((y.double() - y64).abs() <= 1e-6 * (h.double().abs() + 1)).all()
    assert ((dh.double() - d64).abs() <= 1e-6 * g.double().abs() + 1e-30).all()


SHAPES = [(0,), (1,), (7,), (33, 17), (2, 3, 129), (1024, 96), (5000,)]


@cpp
@pytest.mark.parametrize("shape", SHAPES)
def test_every_loop_this_cpu_runs_matches_fp64_within_the_erf_bound(shape):
    torch.manual_seed(0)
    h = torch.randn(shape) * 4        # both tails, the middle, and exp(-h^2/2) down to underflow
    g = torch.randn(shape)
    for isa in _isas():
        gk = g.clone()
        y = torch.ops.jepa_cpp.gelu_with_grad_(h, gk, isa)
        _check(y, gk, h, g)


@cpp
def test_extremes_saturate_like_gelu():
    h = torch.tensor([-1e4, -100.0, -30.0, -13.5, -5.0, -0.0, 0.0, 1e-20, 5.0, 13.5, 30.0, 100.0, 1e4])
    g = torch.linspace(-2, 3, h.numel())
    for isa in _isas():
        gk = g.clone()
        y = torch.ops.jepa_cpp.gelu_with_grad_(h, gk, isa)
        assert torch.isfinite(y).all() and torch.isfinite(gk).all()
        _check(y, gk, h, g)
        assert y[0] == 0 and y[-1] == h[-1] and gk[-1] == g[-1] and gk[0] == 0


@cpp
@pytest.mark.parametrize("shape", SHAPES)
def test_dispatch_matches_the_reference(shape):
    torch.manual_seed(1)
    h, g = torch.randn(shape) * 3, torch.randn(shape)
    y, dh = kernels.gelu_with_grad(h, g.clone())
    y_ref, dh_ref = kernels.gelu_with_grad_ref(h, g)
    scale = 1 + h.abs()
    assert ((y - y_ref).abs() <= 2e-6 * scale).all()
    assert ((dh - dh_ref).abs() <= 2e-6 * g.abs() + 1e-30).all()
    assert _registry.pick("gelu_with_grad", h.device, dtype=h.dtype).backend == "cpp"


@cpp
def test_non_contiguous_inputs_are_taken():
    torch.manual_seed(2)
    h = (torch.randn(40, 30) * 3).t()
    g = torch.randn(40, 30).t()
    assert not h.is_contiguous() and not g.is_contiguous()
    y, dh = kernels.gelu_with_grad(h, g)
    _check(y, dh, h, g)


@cpp
@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_rounds_the_fp32_result_once(shape):
    # bf16 in, fp32 math, one rounding out (as ATen's bf16 GELU kernels): within a bf16 ulp of fp64 on the
    # bf16 inputs, plus the fp32 bound
    torch.manual_seed(5)
    h, g = (torch.randn(shape) * 4).bfloat16(), torch.randn(shape).bfloat16()
    y64, d64 = _exact(h, g)
    for isa in _isas():
        gk = g.clone()
        y = torch.ops.jepa_cpp.gelu_with_grad_(h, gk, isa)
        assert y.dtype == gk.dtype == torch.bfloat16
        assert ((y.double() - y64).abs() <= 2 ** -8 * y64.abs() + 1e-6 * (h.double().abs() + 1)).all()
        assert ((gk.double() - d64).abs() <= 2 ** -8 * d64.abs() + 1e-6 * g.double().abs() + 1e-30).all()
    y, dh = kernels.gelu_with_grad(h, g.clone())
    assert _registry.pick("gelu_with_grad", h.device, dtype=h.dtype).backend == "cpp"
    y_ref, dh_ref = kernels.gelu_with_grad_ref(h, g)   # ATen: at most one bf16 ulp apart
    assert ((y.float() - y_ref.float()).abs() <= 2 ** -7 * y_ref.float().abs() + 1e-6).all()
    assert ((dh.float() - dh_ref.float()).abs() <= 2 ** -7 * dh_ref.float().abs() + 1e-6).all()


@cpp
def test_bf16_nan_stays_nan():
    h = torch.tensor([float("nan"), 1.0, -2.0]).bfloat16()
    g = torch.ones(3).bfloat16()
    y = torch.ops.jepa_cpp.gelu_with_grad_(h, g)
    assert torch.isnan(y[0]) and torch.isnan(g[0]) and not torch.isnan(y[1:]).any()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_dtypes_take_the_reference(dtype):
    torch.manual_seed(3)
    h, g = (torch.randn(9, 5) * 3).to(dtype), torch.randn(9, 5).to(dtype)
    y, dh = kernels.gelu_with_grad(h, g)
    assert y.dtype == dh.dtype == dtype
    assert torch.equal(y, F.gelu(h)) and torch.equal(dh, torch.ops.aten.gelu_backward(g, h))
    assert _registry.pick("gelu_with_grad", h.device, dtype=dtype).backend == "torch"


def test_the_forced_torch_backend_is_the_reference():
    h, g = torch.randn(6, 4), torch.randn(6, 4)
    with kernels.backend("torch"):
        y, dh = kernels.gelu_with_grad(h, g)
    assert torch.equal(y, F.gelu(h)) and torch.equal(dh, torch.ops.aten.gelu_backward(g, h))


@cpp
def test_bad_calls_are_refused_by_name():
    with pytest.raises(ValueError, match="gelu_with_grad: h has shape"):
        kernels.gelu_with_grad(torch.randn(3, 4), torch.randn(4, 3))
    with pytest.raises(ValueError, match="gelu_with_grad: h is torch.float32"):
        kernels.gelu_with_grad(torch.randn(3), torch.randn(3, dtype=torch.float64))
    h = torch.randn(8)
    with pytest.raises(RuntimeError, match="refer to a single memory location"):   # g is written, h read
        torch.ops.jepa_cpp.gelu_with_grad_(h, h)
    with pytest.raises(RuntimeError, match="isa 7 is not run by this CPU"):
        torch.ops.jepa_cpp.gelu_with_grad_(h, h.clone(), 7)
    with kernels.backend("cpp"), pytest.raises(RuntimeError, match="takes fp32 or bf16"):
        kernels.gelu_with_grad(h.double(), h.double())


@cpp
def test_gelu_linear_backward_matches_autograd_through_the_plain_ops():
    # GeluLinear's input and weight gradients come from this kernel on CPU fp32.
    from engine.models.layers import GeluLinear
    torch.manual_seed(4)
    lin = GeluLinear(64, 24)
    h = (torch.randn(300, 64) * 3).requires_grad_()
    g = torch.randn(300, 24)
    (lin(h) * g).sum().backward()
    h2, w2 = h.detach().double().requires_grad_(), lin.weight.detach().double().requires_grad_()
    b2 = lin.bias.detach().double().requires_grad_()
    (F.linear(F.gelu(h2), w2, b2) * g.double()).sum().backward()
    # per element: a sum of 24 (d_h) or 300 (d_weight) products, each with a relative error ~1e-6
    dh_scale = (g.double().abs() @ w2.detach().abs()) * 1e-6
    dw_scale = (g.double().abs().t() @ (h2.detach().abs() + 1)) * 1e-6
    assert ((h.grad.double() - h2.grad).abs() <= dh_scale + 1e-12).all()
    assert ((lin.weight.grad.double() - w2.grad).abs() <= dw_scale + 1e-12).all()


@cpp
def test_jepa_cpu_baseline_picks_the_baseline_loop():
    # As the YUV resize: JEPA_CPU_BASELINE=1 runs what a CPU without AVX2 runs; otherwise the widest loop.
    import os
    import subprocess
    import sys
    from pathlib import Path
    code = ("import torch, kernels; print(torch.ops.jepa_cpp.gelu_isa(), torch.ops.jepa_cpp.gelu_best_isa())")
    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if k != "JEPA_CPU_BASELINE"}
    out = {}
    for flag in ("", "1"):
        e = dict(env, PYTHONPATH=root, **({"JEPA_CPU_BASELINE": flag} if flag else {}))
        r = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True, timeout=120, cwd=root)
        assert r.returncode == 0, r.stderr[-2000:]
        out[flag] = [int(v) for v in r.stdout.split()]
    best = int(torch.ops.jepa_cpp.gelu_best_isa())
    assert out["1"] == [0, best] and out[""] == [best, best]


@cpp
def test_a_double_backward_through_gelu_linear_matches_the_plain_ops():
    # create_graph=True differentiates GeluLinear's backward itself: the kernel has no derivative, so
    # that call takes the ATen ops, which have one.
    from engine.models.layers import GeluLinear
    torch.manual_seed(6)
    lin = GeluLinear(16, 8)
    h0 = torch.randn(20, 16) * 2
    grads = []
    for plain in (False, True):
        h = h0.clone().requires_grad_()
        out = F.linear(F.gelu(h), lin.weight, lin.bias) if plain else lin(h)
        (dh,) = torch.autograd.grad(out.pow(2).sum(), h, create_graph=True)
        (ddh,) = torch.autograd.grad(dh.pow(2).sum(), h)
        grads.append((dh.detach(), ddh))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())
