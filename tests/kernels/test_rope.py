"""kernels.rope_qk: q and k turned in one pass, every backend against the plain-torch reference, forward and
backward, over packed and dense layouts, strided views, tails, odd sizes, empty inputs and each dtype."""
import pytest
import torch

import kernels
from kernels import _ops
from kernels.rope import rope_ref
from engine.models.rope import Rope3D

cpp = pytest.mark.skipif(not _ops.cpp_available(), reason="the C++ extension is not built (kernels._C)")
EPS = {torch.float32: 2.0 ** -22, torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}


def _backends():
    out = ["torch"]
    if _ops.cpp_available():
        out.append("cpp")
    if _ops.triton_runs_on(torch.device("cpu")):   # TRITON_INTERPRET=1
        out.append("triton")
    return out


def _magnitude(x, cos, sin):
    """Per output element, the size of what enters it: |x_d c_d| + |x_partner| max|s| on turned dims, |x_d|
    beyond. A tolerance scaled by it holds where the output cancels to ~0."""
    R = cos.shape[-1]
    xa = x.double().abs()
    xr = xa[..., :R]
    partner = torch.stack((xr[..., 1::2], xr[..., 0::2]), -1).flatten(-2)
    s = sin.double().abs()
    s_pair = torch.maximum(s, torch.stack((s[..., 1::2], s[..., 0::2]), -1).flatten(-2))
    return torch.cat([xr * cos.double().abs() + partner * s_pair, xa[..., R:]], -1)


def _close(got, want, mag, dtype):
    assert got.shape == want.shape and got.dtype == want.dtype
    err = (got.double() - want.double()).abs()
    bound = 4 * EPS[dtype] * mag + 1e-30
    assert (err <= bound).all(), f"max excess {(err - bound).max().item()}"


def _case(lead, H, Dh, R, dtype, seed, dense_tables=False):
    """q, k as views of one fused qkv tensor (strided rows), tables as Rope3D makes them or random."""
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(*lead, 3, H, Dh, generator=g) * 3).to(dtype).requires_grad_(True)
    q, k, _ = qkv.unbind(-3)
    tok = lead[-1:] if dense_tables else lead
    ang = torch.randn(*tok, 1, R, generator=g) * 4
    return qkv, q, k, ang.cos(), ang.sin()


SHAPES = [((0,), 2, 8, 8), ((4,), 0, 8, 8), ((1,), 1, 6, 6), ((7,), 3, 20, 18), ((33,), 2, 66, 60), ((50,), 4, 32, 30),
          ((3, 5), 3, 64, 60), ((2, 17), 1, 10, 4)]


@pytest.mark.parametrize("lead,H,Dh,R", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_backend_matches_the_reference_forward_and_backward(lead, H, Dh, R, dtype):
    for backend in _backends():
        for dense in ([False, True] if len(lead) == 2 else [False]):
            qkv, q, k, cos, sin = _case(lead, H, Dh, R, dtype, seed=len(lead) + Dh, dense_tables=dense)
            with kernels.backend(backend):
                qo, ko = kernels.rope_qk(q, k, cos, sin)
            qr, kr = rope_ref(q, cos, sin), rope_ref(k, cos, sin)
            _close(qo, qr, _magnitude(q, cos, sin), dtype)
            _close(ko, kr, _magnitude(k, cos, sin), dtype)
            assert qo.is_contiguous() and ko.is_contiguous()
            # backward: the transposed turn, against autograd through the reference, in fp64
            gq, gk = torch.randn_like(qo, dtype=torch.float32), torch.randn_like(ko, dtype=torch.float32)
            if not qo.numel():
                continue
            with kernels.backend(backend):   # the backward is the same op, transposed, on the same backend
                got = torch.autograd.grad((qo.float() * gq).sum() + (ko.float() * gk).sum(), qkv)[0]
            x64 = qkv.detach().double().requires_grad_(True)
            q64, k64, _ = x64.unbind(-3)
            want = torch.autograd.grad((rope_ref(q64, cos.double(), sin.double()) * gq.double()).sum()
                                       + (rope_ref(k64, cos.double(), sin.double()) * gk.double()).sum(), x64)[0]
            mag = torch.cat([_magnitude(gq, cos, sin).unsqueeze(-3), _magnitude(gk, cos, sin).unsqueeze(-3),
                             torch.zeros_like(gq, dtype=torch.float64).unsqueeze(-3)], -3)
            assert got.dtype == dtype
            _close(got, want.to(dtype), mag, dtype)
            assert (got[..., 2, :, :] == 0).all()   # v gets no gradient from the turn


@cpp
def test_every_cpp_loop_this_cpu_runs_agrees():
    qkv, q, k, cos, sin = _case((41,), 3, 40, 36, torch.float32, seed=5)
    q3, k3 = q.detach(), k.detach()
    c, s = cos.reshape(-1, 36).contiguous(), sin.reshape(-1, 36).contiguous()
    for transpose in (False, True):
        outs = [torch.ops.jepa_cpp.rope_qk(q3, k3, c, s, transpose, isa)
                for isa in range(int(torch.ops.jepa_cpp.gelu_best_isa()) + 1)]
        for qo, ko in outs[1:]:
            torch.testing.assert_close(qo, outs[0][0], rtol=0, atol=1e-5 * float(q3.abs().max()))
            torch.testing.assert_close(ko, outs[0][1], rtol=0, atol=1e-5 * float(k3.abs().max()))


def test_model_tables_with_a_tail_and_both_layouts():
    # Rope3D's own tables (head dim 20: three axes of 6 dims turned, 2 copied), in both frequency layouts
    for layout in (True, False):
        rope = Rope3D(20, (4, 6, 6), reference_layout=layout)
        ids = torch.randint(0, 144, (23,))
        cos, sin = rope.tables(ids)
        q, k = torch.randn(23, 2, 20), torch.randn(23, 2, 20)
        for backend in _backends():
            with kernels.backend(backend):
                qo, ko = kernels.rope_qk(q, k, cos, sin)
            _close(qo, rope.apply(q, cos, sin), _magnitude(q, cos, sin), torch.float32)
            assert torch.equal(qo[..., 18:], q[..., 18:]) and torch.equal(ko[..., 18:], k[..., 18:])


def test_bad_inputs_are_named():
    q, k = torch.randn(5, 2, 8), torch.randn(5, 2, 8)
    cos = sin = torch.ones(5, 1, 8)
    with pytest.raises(ValueError, match="q and k must match"):
        kernels.rope_qk(q, k[:4], cos, sin)
    with pytest.raises(ValueError, match="R even"):
        kernels.rope_qk(q, k, torch.ones(5, 1, 7), torch.ones(5, 1, 7))
    with pytest.raises(ValueError, match="R even"):
        kernels.rope_qk(q, k, torch.ones(5, 1, 10), torch.ones(5, 1, 10))
    with pytest.raises(ValueError, match="do not match q's token dims"):
        kernels.rope_qk(q, k, torch.ones(4, 1, 8), torch.ones(4, 1, 8))
    with pytest.raises(ValueError, match=r"\[\.\.\., H, Dh\]"):
        kernels.rope_qk(q[0], k[0], cos, sin)


def test_compiled_rope_is_one_node_with_its_backward():
    torch.manual_seed(0)
    qkv = torch.randn(9, 3, 2, 12, requires_grad=True)
    ang = torch.randn(9, 1, 12)

    def f(x):
        q, k, v = x.unbind(1)
        q, k = kernels.rope_qk(q, k, ang.cos(), ang.sin())
        return (q * k).sum() + v.sum()

    got = torch.compile(f, fullgraph=True, backend="inductor")(qkv)
    g_got, = torch.autograd.grad(got, qkv)
    x2 = qkv.detach().requires_grad_(True)
    q, k, v = x2.unbind(1)
    want = (rope_ref(q, ang.cos(), ang.sin()) * rope_ref(k, ang.cos(), ang.sin())).sum() + v.sum()
    g_want, = torch.autograd.grad(want, x2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(qkv.abs().max()) ** 2)
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-5 * float(qkv.abs().max()))


def test_q_and_k_of_different_layouts():
    # q a view of a fused qkv tensor, k contiguous, both from a head-major [H, T, Dh] buffer seen token-major
    g = torch.Generator().manual_seed(3)
    q = torch.randn(19, 3, 2, 16, generator=g)[:, 0]
    k = torch.randn(2, 19, 16, generator=g).transpose(0, 1)          # strides (16, 304, 1)
    ang = torch.randn(19, 1, 12, generator=g)
    cos, sin = ang.cos(), ang.sin()
    for backend in _backends():
        with kernels.backend(backend):
            qo, ko = kernels.rope_qk(q, k, cos, sin)
        _close(qo, rope_ref(q, cos, sin), _magnitude(q, cos, sin), torch.float32)
        _close(ko, rope_ref(k, cos, sin), _magnitude(k, cos, sin), torch.float32)
