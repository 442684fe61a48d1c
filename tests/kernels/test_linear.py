"""kernels.linear: a linear layer's three products on the C++ loop, against fp64 and F.linear."""
import pytest
import torch
import torch.nn.functional as F

import kernels
from engine.models.layers import Linear
from kernels import _ops

linear_mod = __import__("sys").modules["kernels.linear"]

loop = pytest.mark.skipif(not (_ops.cpp_available() and bool(torch.ops.jepa_cpp.linear_ok())),
                          reason="the C++ loop needs the built extension (kernels._C) and an AVX-512 CPU")

EPS = torch.finfo(torch.float32).eps


def _within(out, ref64, terms, name):
    """|out - ref| <= 4 eps (K + 2) |terms| elementwise: fp32 sums of K products (in any order) round each
    partial sum at most once, so the error is bounded by the sum of the products' magnitudes `terms` (the
    same product of |operands|, in fp64), not by the result, which may cancel to 0."""
    K = terms[1]
    err = (out.double() - ref64).abs()
    bound = 4 * EPS * (K + 2) * terms[0] + 1e-30
    assert out.dtype == torch.float32 and out.shape == ref64.shape, name
    assert (err <= bound).all(), (name, (err - bound).max().item())


def _check(x, w, b):
    """Forward and every gradient of kernels.linear against the fp64 definition, through autograd."""
    xg, wg = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    bg = None if b is None else b.detach().clone().requires_grad_(True)
    y = kernels.linear(xg, wg, bg)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    y.backward(g)
    x64, w64, g64 = x.double(), w.double(), g.double()
    K_in, T = w.shape[1], max(g.reshape(-1, g.shape[-1]).shape[0], 1)
    ref = F.linear(x64, w64, None if b is None else b.double())
    absum = F.linear(x64.abs(), w64.abs(), None if b is None else b.double().abs())
    _within(y, ref, (absum, K_in), "y")
    _within(xg.grad, g64 @ w64, ((g64.abs() @ w64.abs()), w.shape[0]), "dx")
    g2, x2 = g64.reshape(-1, g.shape[-1]), x64.reshape(-1, x.shape[-1])
    _within(wg.grad, g2.t() @ x2, (g2.abs().t() @ x2.abs(), T), "dw")
    if b is not None:
        _within(bg.grad, g2.sum(0), (g2.abs().sum(0), T), "db")


SHAPES = [  # (rows, in, out)
    (0, 5, 7), (1, 1, 1), (1, 192, 576), (7, 5, 33), (13, 33, 17), (64, 96, 288), (257, 192, 97),
    (300, 768, 192), (1176, 192, 768), (600, 384, 96), (9, 1, 40), (40, 31, 1),
]


@loop
@pytest.mark.parametrize("T,I,O", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_products_and_gradients_match_fp64(T, I, O, bias):
    g = torch.Generator().manual_seed(T * 1000 + I * 10 + O)
    x = torch.randn(T, I, generator=g) * 3
    w = torch.randn(O, I, generator=g)
    b = torch.randn(O, generator=g) * 5 if bias else None
    _check(x, w, b)


@loop
def test_leading_dims_and_strided_inputs():
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(48, 40, generator=g), torch.randn(48, generator=g)
    _check(torch.randn(3, 11, 40, generator=g), w, b)                 # [B, N, in]
    wide = torch.randn(50, 64, generator=g)
    _check(wide[:, 5:45], w, b)                                       # rows with stride 64
    _check(torch.randn(40, 50, generator=g).t(), w, b)                # inner stride 50: copied to rows
    _check(torch.randn(50, 80, generator=g)[:, ::2], w, b)            # inner stride 2
    _check(torch.randn(50, 40, generator=g), torch.randn(40, 48, generator=g).t(), b)   # a transposed weight


@loop
def test_sums_that_cancel_to_zero_are_held_to_their_terms():
    # rows of x and -x: y's rows cancel pairwise in dw's sum over rows, which is then ~0
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 96, generator=g)
    x = torch.cat([x, -x])
    w = torch.randn(64, 96, generator=g)
    xg = x.clone().requires_grad_(True)
    wg = w.clone().requires_grad_(True)
    y = kernels.linear(xg, wg)
    y.backward(torch.ones_like(y))
    assert wg.grad.abs().max() <= 4 * EPS * 402 * (x.abs().sum(0).max())


@loop
@pytest.mark.parametrize("threads", [1, 2])
def test_thread_counts_agree(threads):
    g = torch.Generator().manual_seed(4)
    x, w, b = torch.randn(1000, 192, generator=g), torch.randn(300, 192, generator=g), torch.randn(300, generator=g)
    gy = torch.randn(1000, 300, generator=g)

    def products():
        xg, wg, bg = (t.clone().requires_grad_(True) for t in (x, w, b))
        y = kernels.linear(xg, wg, bg)
        y.backward(gy)   # 1000 rows: the weight gradient sums two row groups
        return y, xg.grad, wg.grad, bg.grad

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = products()
        torch.set_num_threads(threads)
        many = products()
    finally:
        torch.set_num_threads(before)
    for a, b_ in zip(one, many):   # every sum runs in the same order whichever thread runs it
        assert torch.equal(a, b_)


@loop
@pytest.mark.parametrize("T,I,O", [(0, 5, 7), (1, 1, 1), (13, 33, 17), (300, 768, 192), (257, 192, 97), (9, 0, 4)])
def test_a_residual_is_added_as_the_rows_are_stored_bit_for_bit(T, I, O):
    # residual + (x w^T + b) in the product's store: the sum a separate add makes of the same product, to the
    # bit, and the residual's gradient is the output's (an add's backward)
    g = torch.Generator().manual_seed(T + I + O)
    x, w, b = torch.randn(T, I, generator=g), torch.randn(O, I, generator=g), torch.randn(O, generator=g)
    r = torch.randn(T, O + 5, generator=g)[:, 3:O + 3]   # a view with a row stride, as a residual slice is
    gy = torch.randn(T, O, generator=g)
    runs = []
    for fused in (True, False):
        xg, wg, bg, rg = (t.clone().requires_grad_(True) for t in (x, w, b, r))
        y = kernels.linear(xg, wg, bg, residual=rg) if fused else rg + kernels.linear(xg, wg, bg)
        y.backward(gy)
        runs.append([y, xg.grad, wg.grad, bg.grad, rg.grad])
    for a, b_ in zip(*runs):
        assert torch.equal(a, b_)
    with torch.no_grad():   # without autograd, the op itself
        assert torch.equal(kernels.linear(x, w, b, residual=r), r + kernels.linear(x, w, b))


def test_a_residual_that_is_not_the_output_shape_is_a_separate_add():
    g = torch.Generator().manual_seed(6)
    x, w, b = torch.randn(5, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(4, generator=g)
    for r in (torch.randn(4, generator=g), torch.randn(5, 4, dtype=torch.float64, generator=g)):   # broadcast, fp64
        assert not linear_mod.residual_fits(r, x, w)
        out = kernels.linear(x, w, b, residual=r)
        ref = r + F.linear(x, w, b)
        assert out.dtype == ref.dtype and torch.allclose(out, ref, atol=1e-5)


def test_other_calls_are_f_linear():
    g = torch.Generator().manual_seed(5)
    x, w, b = torch.randn(6, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(4, generator=g)
    assert torch.equal(kernels.linear(x.double(), w.double(), b.double()), F.linear(x.double(), w.double(), b.double()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kernels.linear(x, w, b)
        assert y.dtype == torch.bfloat16   # autocast's F.linear
    with kernels.backend("torch"):
        assert torch.equal(kernels.linear(x, w, b), F.linear(x, w, b))
    assert not linear_mod.fits(x, w.to(torch.bfloat16), None)


def test_linear_module_keeps_nn_linear_state():
    m = Linear(8, 4)
    assert isinstance(m, torch.nn.Linear) and set(m.state_dict()) == {"weight", "bias"}
    x = torch.randn(3, 8)
    assert torch.allclose(m(x), F.linear(x, m.weight, m.bias), atol=1e-6)


@loop
@pytest.mark.parametrize("T,I,O", [(0, 5, 7), (6, 0, 7), (6, 5, 0), (1, 1, 1), (600, 96, 100), (257, 33, 129),
                                   (800, 0, 9), (1537, 40, 3), (3100, 17, 70)])   # 2, 4 and 8 row groups
def test_weight_gradient_op_sums_the_bias_gradient_in_the_same_pass(T, I, O):
    g = torch.Generator().manual_seed(T + I + O)
    gy = torch.randn(T, O + 3, generator=g)[:, 2:O + 2] * 4                 # rows with a stride, as a view
    x = torch.randn(T, I, generator=g)
    dw, db = torch.ops.jepa_cpp.linear_dw(gy, x, True)
    g64, x64 = gy.double(), x.double()
    _within(dw, g64.t() @ x64, (g64.abs().t() @ x64.abs(), max(T, 1)), "dw")
    _within(db, g64.sum(0), (g64.abs().sum(0), max(T, 1)), "db")
    dw_only, none = torch.ops.jepa_cpp.linear_dw(gy, x)
    assert torch.equal(dw_only, dw) and none.numel() == 0


@loop
def test_cpp_ops_refuse_bad_input_by_name():
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with pytest.raises(RuntimeError, match="x has 8 features"):
        torch.ops.jepa_cpp.linear_fwd(x, torch.randn(3, 7), None)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.jepa_cpp.linear_fwd(x.double(), w.double(), None)
    with pytest.raises(RuntimeError, match="b must be"):
        torch.ops.jepa_cpp.linear_fwd(x, w, torch.randn(4))
    with pytest.raises(RuntimeError, match="rows"):
        torch.ops.jepa_cpp.linear_dw(torch.randn(4, 3), torch.randn(5, 8))


@loop
def test_a_double_backward_takes_differentiable_products():
    g = torch.Generator().manual_seed(6)
    x0, w, b = torch.randn(20, 16, generator=g), torch.randn(8, 16, generator=g), torch.randn(8, generator=g)
    grads = []
    for fn in (kernels.linear, F.linear):
        x = x0.clone().requires_grad_(True)
        wg = w.clone().requires_grad_(True)
        (dx,) = torch.autograd.grad(torch.tanh(fn(x, wg, b)).pow(2).sum(), x, create_graph=True)
        (dw,) = torch.autograd.grad(dx.pow(2).sum(), wg)
        grads.append((dx.detach(), dw))
    for a, r in zip(*grads):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-5 * r.abs().max().item())
