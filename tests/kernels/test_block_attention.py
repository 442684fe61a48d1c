"""kernels.block_attention: CPU path, Triton (interpreter) and dispatch against block_attention_ref.

Tolerance rule (FlashAttention's): the kernel's error vs an fp64 reference is at most 2x (forward) /
3x (grads) the error of the same-dtype torch reference (block_attention_ref) vs the same fp64 reference.
"""
import itertools
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import kernels
import kernels.block_attention  # noqa: F401  (the module; `kernels.block_attention` is the function)
from kernels.block_attention import block_attention_ref

ba = sys.modules["kernels.block_attention"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LENS = {
    "one_token": [1, 1, 1, 1],
    "odd_lengths": [7, 33, 65, 100, 17],
    "many_short": [3, 9, 1, 14, 20, 5, 11, 2, 19, 8, 6, 13, 4, 16, 10, 7, 12, 18, 15, 1] * 2,
    "few_long": [300, 257],
    "empty_seqs": [0, 5, 0, 9, 0],
    "equal": [24, 24, 24],
    # fp32: the C++ short-sequence kernel up to 256 tokens (frame masks included), ATen's flash kernel above, in one call
    "around_short_limit": [256, 257, 3, 255],
}


def _case(lens, H, D, dtype, causal, seed=0, cross=False):
    g = torch.Generator().manual_seed(seed)
    cu = torch.tensor([0] + lens).cumsum(0)
    T = int(cu[-1])
    q, k, v = (torch.randn(T, H, D, generator=g).to(dtype) for _ in range(3))
    frames = None
    if causal:   # sorted frame ids per sequence, several tokens per frame
        frames = torch.cat([torch.randint(0, 4, (n,), generator=g).sort().values for n in lens]).long()
    return q, k, v, cu, frames


def _run(fn, q, k, v, dout, **kw):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v, **kw)
    if not out.requires_grad:   # no token at all: nothing connects the output to the inputs
        return [out.detach()] + [torch.zeros_like(t) for t in (q, k, v)]
    out.backward(dout)
    return [out.detach(), q.grad, k.grad, v.grad]


def _check_rule(q, k, v, cu, frames, fn, seed=1, cu_k=None):
    """FlashAttention's rule on outputs and grads; the kernel is `fn` (same signature as the ref). Keys are
    packed as the queries unless `cu_k` is given."""
    cu_k = cu if cu_k is None else cu_k
    Lq, Lk = (int((c[1:] - c[:-1]).max()) if len(c) > 1 else 0 for c in (cu, cu_k))
    kw = dict(cu_seqlens_q=cu, cu_seqlens_k=cu_k, max_seqlen_q=Lq, max_seqlen_k=Lk, block_causal=frames)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed)).to(q.dtype)
    ref64 = _run(block_attention_ref, q.double(), k.double(), v.double(), dout.double(), **kw)
    ref = _run(block_attention_ref, q, k, v, dout, **kw)
    got = _run(fn, q, k, v, dout, **kw)
    eps_out, eps_acc = torch.finfo(q.dtype).eps, torch.finfo(torch.float32).eps
    terms = _term_magnitudes(q, k, v, dout, kw)
    for i, (g, r, t) in enumerate(zip(got, ref, ref64)):
        assert g.dtype == q.dtype and g.shape == t.shape
        assert torch.isfinite(g).all()
        if t.numel() == 0:
            continue
        err, err_ref = (g.double() - t).abs().max().item(), (r.double() - t).abs().max().item()
        # rounding floor where the reference happens to be exact: the output's own rounding, plus the
        # fp32 accumulation's rounding of the terms that sum (and may cancel) to it (one eps: `terms`
        # is already a worst case)
        floor = 4 * eps_out * t.abs().max().item() + eps_acc * terms[i]
        assert err <= (2 if i == 0 else 3) * err_ref + floor, (["out", "dq", "dk", "dv"][i], err, err_ref, floor)


def _term_magnitudes(q, k, v, dout, kw):
    """Upper bounds of the terms each output sums, for [out, dq, dk, dv]. An output can be 0 by
    cancellation (one-token sequences: dq = scale * P * (dO.v - dO.o) * k with o = v), and then its
    rounding error scales with these terms, not with the output.
      out_i = sum_j P_ij v_j                            -> max_i sum_j P_ij |v_j| (the reference on |v|)
      dv_j = sum_i P_ij dO_i                            -> the reference's dv with |dO|
      dq_i = scale sum_j P_ij (dO_i.v_j - dO_i.o_i) k_j -> 2 scale max|k| max_ij sum_d |dO_id v_jd|
      dk_j: the same with q for k."""
    q, k, v, dout = (t.double() for t in (q, k, v, dout))
    if q.numel() == 0:
        return [0.0] * 4
    out_abs, _, _, dv_abs = _run(block_attention_ref, q, k, v.abs(), dout.abs(), **kw)
    dot_max = torch.einsum("thd,shd->hts", dout.abs(), v.abs()).max().item()
    scale = q.shape[-1] ** -0.5
    return [out_abs.max().item(), 2 * scale * k.abs().max().item() * dot_max,
            2 * scale * q.abs().max().item() * dot_max, dv_abs.max().item()]


def _kernel(q, k, v, cu_seqlens_q, cu_seqlens_k, **kw):
    with kernels.backend("auto"):
        return kernels.block_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lens", list(LENS), ids=list(LENS))
def test_cpu_lengths_vs_ref(lens, causal, dtype):
    q, k, v, cu, frames = _case(LENS[lens], 2, 32, dtype, causal)
    _check_rule(q, k, v, cu, frames, _kernel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("D", [24, 32, 64, 80, 128])
def test_cpu_head_dims_vs_ref(D, causal, dtype):
    q, k, v, cu, frames = _case([5, 40, 0, 17, 17], 3, D, dtype, causal, seed=D)
    _check_rule(q, k, v, cu, frames, _kernel)


@pytest.mark.parametrize("call_us", [0.0, 1e6], ids=["per_length_buckets", "one_padded_bucket"])
@pytest.mark.parametrize("causal", [False, True])
def test_cpu_bucket_fallback_without_extension(monkeypatch, causal, call_us):
    # Without the C++ extension the CPU path is kernels/cpu_attention.py: views, gathered buckets, padding.
    import kernels.cpu_attention as ca
    monkeypatch.setattr(ba._ops, "cpp_available", lambda: False)
    monkeypatch.setattr(ca, "CALL_US", call_us)
    ca._plan.cache_clear()
    q, k, v, cu, frames = _case([24, 24, 24, 7, 33, 0, 31, 1, 7], 2, 24, torch.float32, causal, seed=7)
    try:
        _check_rule(q, k, v, cu, frames, _kernel)
    finally:
        ca._plan.cache_clear()


def test_cpu_short_kernel_cross_lengths_and_peaked_scores():
    # The C++ short-sequence kernel (fp32, <= 256 tokens) is bound in this build, and holds the rule where
    # query and key lengths differ (one side at the limit, one side past it: the flash kernel), with frame
    # ids that leave some queries no key, and a bound where scores are large enough that the softmax is
    # nearly one-hot.
    if not ba._ops.cpp_available():
        pytest.skip("the C++ extension is not built (make build)")
    assert torch.ops.jepa_cpp.block_attention_has_blas()
    g = torch.Generator().manual_seed(11)
    cu_q, cu_k = torch.tensor([0, 4, 34, 35, 291]), torch.tensor([0, 9, 11, 267, 530])
    q = torch.randn(291, 2, 24, generator=g)
    k, v = torch.randn(530, 2, 24, generator=g), torch.randn(530, 2, 24, generator=g)
    _check_rule(q, k, v, cu_q, None, _kernel, cu_k=cu_k)
    fq, fk = torch.randint(0, 5, (291,), generator=g), torch.randint(0, 5, (530,), generator=g)
    fq[:2] = -1   # sequence 0's first queries precede every key's frame: zero output, no gradient
    _check_rule(q, k, v, cu_q, (fq, fk), _kernel, cu_k=cu_k)
    out = kernels.block_attention(q, k, v, cu_q, cu_k, max_seqlen_q=256, max_seqlen_k=263, block_causal=(fq, fk))
    assert out[:2].eq(0).all() and out[2:].abs().sum() > 0
    # Logits of std ~64 (max ~300): a backward that recomputes P = exp(S - lse), as the flash kernel's and
    # this one do, rounds S - lse at |S|'s ulp, an error a reference that keeps P has not; so the bound
    # adds that rounding (eps * max|S|) to the terms each output sums. Both kernels meet it, not the rule.
    q8, k8 = 8 * q, 8 * k
    kw = dict(cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=256, max_seqlen_k=263)
    dout = torch.randn(q.shape, generator=g)
    got = _run(_kernel, q8, k8, v, dout, **kw)
    ref = _run(block_attention_ref, q8, k8, v, dout, **kw)
    ref64 = _run(block_attention_ref, q8.double(), k8.double(), v.double(), dout.double(), **kw)
    terms = _term_magnitudes(q8, k8, v, dout, kw)
    s_max = max((q8[a:b].double().transpose(0, 1) @ k8[c:d].double().permute(1, 2, 0)).abs().max().item()
                for a, b, c, d in zip(cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:]) if b > a and d > c) * 24 ** -0.5
    eps = torch.finfo(torch.float32).eps
    for name, a, r, t, m in zip(["out", "dq", "dk", "dv"], got, ref, ref64, terms):
        assert torch.isfinite(a).all()
        err, err_ref = (a.double() - t).abs().max().item(), (r.double() - t).abs().max().item()
        assert err <= 3 * err_ref + 4 * eps * t.abs().max().item() + eps * (1 + s_max) * m, (name, err, err_ref)


SHORT_PRODUCTS_SCRIPT = """
import torch, kernels
from tests.kernels.test_block_attention import LENS, _case, _check_rule, _kernel
print("products", torch.ops.jepa_cpp.block_attention_products())
for D in (24, 32, 64):
    for lens in ("odd_lengths", "few_long"):
        for causal in (False, True):
            _check_rule(*_case(LENS[lens], 3, D, torch.float32, causal, seed=D), _kernel)
print("OK")
"""


def test_short_kernel_products_on_both_paths():
    # The short kernel's products run in its own register-blocked loop on AVX-512 and through BLAS
    # elsewhere (or under JEPA_ATTN_BLAS=1): both hold the rule, whichever this CPU takes by default.
    if not ba._ops.cpp_available():
        pytest.skip("the C++ extension is not built (make build)")
    env = {k: v for k, v in os.environ.items() if k not in ("JEPA_ATTN_BLAS", "JEPA_CPU_BASELINE")}
    seen = {}
    for flag in ("", "1"):
        e = dict(env, PYTHONPATH=ROOT, **({"JEPA_ATTN_BLAS": flag} if flag else {}))
        r = subprocess.run([sys.executable, "-c", SHORT_PRODUCTS_SCRIPT], env=e, cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
        seen[flag] = r.stdout.split()[1]
    assert seen["1"] == "blas"
    assert seen[""] == ("avx512" if int(torch.ops.jepa_cpp.gelu_best_isa()) == 2 else "blas")


def test_empty_key_sequences_and_unseen_rows_give_zeros():
    # cross attention: sequence 1 has queries but no keys; frame pairs leave some queries no key
    g = torch.Generator().manual_seed(0)
    cu_q, cu_k = torch.tensor([0, 4, 7, 9]), torch.tensor([0, 3, 3, 8])
    q, k, v = torch.randn(9, 2, 16, generator=g), torch.randn(8, 2, 16, generator=g), torch.randn(8, 2, 16, generator=g)
    fq = torch.tensor([0, 1, 2, 2, 0, 0, 0, 0, 3])
    fk = torch.tensor([1, 1, 2, 1, 2, 3, 3, 3])
    for frames in (None, (fq, fk)):
        kw = dict(max_seqlen_q=4, max_seqlen_k=5, block_causal=frames)
        qq = q.clone().requires_grad_(True)
        out = kernels.block_attention(qq, k, v, cu_q, cu_k, **kw)
        torch.testing.assert_close(out, block_attention_ref(q, k, v, cu_q, cu_k, **kw))
        assert out[4:7].eq(0).all()                      # sequence 1: no keys at all
        if frames is not None:
            assert out[0].eq(0).all() and out[7].eq(0).all()   # frame 0 query, keys of frames >= 1 / 2
        out.sum().backward()
        assert torch.isfinite(qq.grad).all() and qq.grad[4:7].eq(0).all()


def test_cpu_time_ordered_frames_cross_lengths():
    # Frames that never decrease along the queries nor the keys (the world models' token order): the short
    # kernel computes, per query frame, only the keys of frames up to it. Sequence 0's first query frame
    # precedes every key (zero rows, no gradient), its last keys follow every query (no gradient to them);
    # sequence 1 has one frame; sequence 2 has one token per frame; sequence 3 is past the short limit.
    g = torch.Generator().manual_seed(3)
    lq, lk = [20, 9, 33, 260], [17, 9, 33, 300]
    cu_q, cu_k = (torch.tensor([0] + n).cumsum(0) for n in (lq, lk))
    fq = torch.cat([torch.tensor([0] * 3 + [2] * 7 + [3] * 10), torch.zeros(9, dtype=torch.long),
                    torch.arange(33), torch.arange(260) // 40])
    fk = torch.cat([torch.tensor([1] * 5 + [2] * 4 + [3] * 3 + [5] * 5), torch.zeros(9, dtype=torch.long),
                    torch.arange(33), torch.arange(300) // 40])
    q = torch.randn(sum(lq), 2, 24, generator=g)
    k, v = torch.randn(sum(lk), 2, 24, generator=g), torch.randn(sum(lk), 2, 24, generator=g)
    _check_rule(q, k, v, cu_q, (fq, fk), _kernel, cu_k=cu_k)
    qq, kk, vv = (t.clone().requires_grad_(True) for t in (q, k, v))
    out = kernels.block_attention(qq, kk, vv, cu_q, cu_k, max_seqlen_q=260, max_seqlen_k=300, block_causal=(fq, fk))
    assert out[:3].eq(0).all() and out[3:20].abs().sum() > 0
    out.sum().backward()
    assert qq.grad[:3].eq(0).all() and kk.grad[12:17].eq(0).all() and vv.grad[12:17].eq(0).all()
    assert kk.grad[:12].abs().sum() > 0 and vv.grad[:12].abs().sum() > 0


def test_t_zero_and_all_empty():
    for cu in (torch.zeros(1, dtype=torch.long), torch.zeros(4, dtype=torch.long)):
        z = torch.zeros(0, 2, 24, requires_grad=True)
        out = kernels.block_attention(z, z, z, cu, cu, max_seqlen_q=0, max_seqlen_k=0)
        assert out.shape == (0, 2, 24)
        out.sum().backward()
        assert z.grad.shape == (0, 2, 24)


def test_non_contiguous_inputs():
    lens = [6, 13, 1, 30]
    cu = torch.tensor([0] + lens).cumsum(0)
    T, H, D = int(cu[-1]), 3, 24
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(T, 3, H, D, generator=g)                        # as a fused qkv projection gives
    q, k, v = qkv.unbind(1)
    v = torch.randn(H, T, D, generator=g).transpose(0, 1)              # head-major storage
    assert not q.is_contiguous() and not v.is_contiguous()
    _check_rule(q, k, v, cu, None, _kernel)
    k_strided = torch.randn(T, H, 2 * D, generator=g)[..., ::2]       # inner stride 2
    _check_rule(q, k_strided, v, cu, None, _kernel)


def test_equal_length_batches():
    """Sequences all of one query and one key length (the predictor's packing: every token of each clip):
    in fp32 the short-sequence kernel, on the flash kernel (fp64 below) one batch of views; strided inputs,
    cross lengths, one sequence and fp64 grads as elsewhere."""
    g = torch.Generator().manual_seed(5)
    for S, L in ((4, 24), (1, 37), (6, 1)):
        cu = torch.arange(0, S * L + 1, L)
        qkv = torch.randn(S * L, 3, 3, 16, generator=g)               # a fused qkv projection's views
        q, k, v = qkv.unbind(1)
        _check_rule(q, k, v, cu, None, _kernel)
    S, Lq, Lk = 3, 5, 11
    cu_q, cu_k = torch.arange(0, S * Lq + 1, Lq), torch.arange(0, S * Lk + 1, Lk)
    q = torch.randn(S * Lq, 2, 8, dtype=torch.float64, generator=g, requires_grad=True)
    k, v = (torch.randn(S * Lk, 2, 8, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
    kw = dict(max_seqlen_q=Lq, max_seqlen_k=Lk)
    torch.testing.assert_close(kernels.block_attention(q, k, v, cu_q, cu_k, **kw),
                               block_attention_ref(q, k, v, cu_q, cu_k, **kw))
    assert torch.autograd.gradcheck(lambda q, k, v: kernels.block_attention(q, k, v, cu_q, cu_k, **kw), (q, k, v))


def test_gradcheck_fp64():
    cu = torch.tensor([0, 3, 3, 4, 9])
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(9, 2, 4, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(3))
    frames = torch.tensor([0, 1, 1, 0, 0, 0, 1, 1, 2])
    for bc in (None, frames):
        assert torch.autograd.gradcheck(
            lambda a, b, c: kernels.block_attention(a, b, c, cu, cu, max_seqlen_q=5, max_seqlen_k=5, block_causal=bc),
            (q, k, v))


def test_causality_by_perturbation():
    lens = [12, 20, 7]
    q, k, v, cu, frames = _case(lens, 2, 32, torch.float32, True, seed=5)
    late = torch.zeros(len(frames), dtype=torch.bool)   # per sequence: the tokens of its last frame
    for s in range(len(lens)):
        f = frames[cu[s]:cu[s + 1]]
        late[cu[s]:cu[s + 1]] = f == f.max()
    kw = dict(max_seqlen_q=20, max_seqlen_k=20, block_causal=frames)
    out = kernels.block_attention(q, k, v, cu, cu, **kw)
    k2, v2 = k.clone(), v.clone()
    k2[late] += 5 * torch.randn_like(k2[late])
    v2[late] += 5 * torch.randn_like(v2[late])
    out2 = kernels.block_attention(q, k2, v2, cu, cu, **kw)
    torch.testing.assert_close(out2[~late], out[~late], rtol=0, atol=1e-6)
    assert (out2[late] - out[late]).abs().max() > 1e-2   # the perturbation is seen where allowed


def test_autocast_bf16_training_call():
    lens = [50, 8, 1, 33]
    cu = torch.tensor([0] + lens).cumsum(0)
    T, H, D = int(cu[-1]), 6, 32
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, H * D, generator=g, requires_grad=True)
    w = torch.randn(H * D, 3 * H * D, generator=g) * 0.05
    outs = []
    for bk in ("auto", "torch"):
        x.grad = None
        with kernels.backend(bk), torch.autocast("cpu", dtype=torch.bfloat16):
            q, k, v = (x @ w).unflatten(1, (3, H, D)).unbind(1)
            out = kernels.block_attention(q, k.float(), v, cu, cu, max_seqlen_q=50, max_seqlen_k=50)  # mixed: cast
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
        outs.append((out.float(), x.grad.clone()))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=5e-2, atol=5e-2)


def test_dense_sdpa_bf16_training_runs_in_fp32():
    # On CPU a bf16 attention that will be differentiated runs in fp32 and returns bf16 (ATen's bf16 flash
    # backward is the slow one): under autocast and on bf16 tensors, values and gradients are the fp32
    # computation's rounded once; without a backward, bf16 stays bf16 (its forward is the faster).
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 70, 32, generator=g).requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernels.sdpa(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v).bfloat16()
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref)
    dout = torch.randn(out.shape, generator=g).bfloat16()
    got = torch.autograd.grad(out, (q, k, v), dout)
    want = torch.autograd.grad(ref, (q, k, v), dout)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    qb, kb, vb = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    out_b = kernels.sdpa(qb, kb, vb)
    assert out_b.dtype == torch.bfloat16
    assert torch.equal(out_b, F.scaled_dot_product_attention(qb.float(), kb.float(), vb.float()).bfloat16())
    grads = torch.autograd.grad(out_b, (qb, kb, vb), dout)
    assert all(t.dtype == torch.bfloat16 for t in grads)
    with torch.no_grad():
        nograd = kernels.sdpa(qb, kb, vb)
        if ba._ops.cpu_bf16_flash_ok():
            assert torch.equal(nograd, F.scaled_dot_product_attention(qb, kb, vb))
    torch.testing.assert_close(nograd.float(), out_b.float(), rtol=2e-2, atol=2e-2 * out_b.float().abs().max().item())


def test_bad_inputs():
    q = torch.randn(5, 2, 8)
    cu = torch.tensor([0, 2, 5])
    call = lambda *a, **kw: kernels.block_attention(*a, max_seqlen_q=3, max_seqlen_k=3, **kw)  # noqa: E731
    with pytest.raises(ValueError, match=r"q must be \[T, H, Dh\]"):
        call(q[0], q, q, cu, cu)
    with pytest.raises(ValueError, match="disagree"):
        call(q, q[:, :1], q[:, :1], cu, cu)
    with pytest.raises(ValueError, match="cu_seqlens_q must start at 0 and end at 5"):
        call(q, q, q, torch.tensor([0, 2, 4]), cu)
    with pytest.raises(ValueError, match="non-decreasing"):
        call(q, q, q, torch.tensor([0, 3, 2, 5]), torch.tensor([0, 1, 2, 5]))
    with pytest.raises(TypeError, match="cu_seqlens_k must be an int32/int64"):
        call(q, q, q, cu, cu.float())
    with pytest.raises(ValueError, match="different sequence counts"):
        call(q, q, q, cu, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="frame ids must have shapes"):
        call(q, q, q, cu, cu, block_causal=torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer tensor of frame ids"):
        call(q, q, q, cu, cu, block_causal=torch.zeros(5))
    with pytest.raises(TypeError, match="floating point"):
        call(q.long(), q.long(), q.long(), cu, cu)


def test_cu_values_are_checked_again_after_an_in_place_change():
    """The cu_seqlens values are read once per tensor and version: the same tensor, once edited, is read anew."""
    q = torch.randn(5, 2, 8)
    cu = torch.tensor([0, 2, 5])
    kernels.block_attention(q, q, q, cu, cu)
    cu[1] = 6
    with pytest.raises(ValueError, match="non-decreasing"):
        kernels.block_attention(q, q, q, cu, cu)


class _PassThrough(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.skipif(not kernels._ops.cpp_available(), reason="the direct path calls the built C++ extension")
@pytest.mark.parametrize("causal", [False, True])
def test_eager_fp32_calls_skip_the_custom_op_with_the_same_results(causal):
    """Eager fp32 CPU calls run the C++ ops from a plain autograd Function; under a torch function mode (as
    FlopCounterMode is) the custom op runs. Same kernels: outputs and gradients bit for bit; a second
    derivative is refused on both."""
    q, k, v, cu, frames = _case([7, 33, 1, 20], 3, 32, torch.float32, causal, seed=4)
    dout = torch.randn(q.shape, generator=torch.Generator().manual_seed(9))
    kw = dict(cu_seqlens_q=cu, cu_seqlens_k=cu, block_causal=frames)
    direct = _run(kernels.block_attention, q, k, v, dout, **kw)
    with _PassThrough():
        via_op = _run(kernels.block_attention, q, k, v, dout, **kw)
    for a, b in zip(direct, via_op):
        assert torch.equal(a, b)
    qd = q.clone().requires_grad_(True)
    out = kernels.block_attention(qd, k, v, cu, cu, block_causal=frames)
    assert type(out.grad_fn).__name__ == "_CppAttentionFnBackward"
    with torch.no_grad():
        assert torch.equal(kernels.block_attention(q, k, v, cu, cu, block_causal=frames), direct[0])
    with _PassThrough():
        assert "jepa_block_attention_fwd" in type(kernels.block_attention(qd, k, v, cu, cu).grad_fn).__name__
    g, = torch.autograd.grad(out.square().sum(), qd, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        g.sum().backward()


def test_cuda_selection_without_a_gpu(monkeypatch):
    # The pick reads only the device type and plain call properties, so it runs without a GPU.
    from kernels._registry import pick
    cuda = torch.device("cuda")

    def chosen(dtype=torch.bfloat16, D=64, causal=False):
        impl = pick("block_attention", cuda, dtype=dtype, head_dim=D, causal=causal)
        return ba._library(dtype, D, causal) if impl.backend == "cuda" else impl.backend

    monkeypatch.setattr(ba._ops, "_TRITON", True)
    monkeypatch.setattr(ba, "_torch_flash", {})
    assert not ba.torch_flash_ok()   # no GPU here: torch's own flash kernel is not offered
    for flash, torch_flash, xf in itertools.product((True, False), repeat=3):
        monkeypatch.setattr(ba, "flash_attn_varlen_func", object() if flash else None)
        monkeypatch.setattr(ba, "_torch_flash", {"ok": torch_flash})
        monkeypatch.setattr(ba, "fmha", object() if xf else None)
        first_flash = "flash_attn" if flash else ("torch_flash" if torch_flash else None)
        with kernels.backend("auto"):
            assert chosen() == (first_flash or ("xformers" if xf else "triton"))
            assert chosen(causal=True) == "triton"                                   # masks: ours only
            assert chosen(torch.float32) == ("xformers" if xf else "triton")         # flash: fp16/bf16
            assert chosen(D=20) == ("xformers" if xf else "triton")                  # flash: Dh % 8
            assert chosen(D=512) == ("xformers" if xf else "triton")                 # flash: Dh <= 256
        with kernels.backend("cuda"):
            if first_flash or xf:
                assert chosen() in ("flash_attn", "torch_flash", "xformers")
            else:
                with pytest.raises(RuntimeError, match="'cuda' is forced.*neither FlashAttention"):
                    chosen()
        with kernels.backend("triton"):
            assert chosen() == "triton"
    with kernels.backend("auto"):
        assert pick("block_attention", torch.device("cpu"), dtype=torch.float32, head_dim=8, causal=False).backend == "cpp"
    with kernels.backend("torch"):
        assert chosen() == "torch"
    with kernels.backend("cpp"), pytest.raises(RuntimeError, match="runs on cpu tensors, got cuda"):
        chosen()


def test_torch_flash_check_is_a_trace_time_constant_and_kernels_import_without_dynamo():
    # dynamo calls it once while tracing and keeps the answer (the mark assume_constant_result sets), and
    # setting that mark by hand keeps torch._dynamo (a second of import time) out of `import kernels`
    import torch._dynamo

    marked = torch._dynamo.assume_constant_result(lambda: None)
    assert all(getattr(ba.torch_flash_ok, k, None) == v for k, v in vars(marked).items()) and vars(marked)
    r = subprocess.run([sys.executable, "-c", "import sys, kernels; print('torch._dynamo' in sys.modules)"],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-2000:]


def test_compile_picks_without_flash_attn(monkeypatch):
    """The CUDA pick (flash_attn, xformers, triton) traces under torch.compile(fullgraph=True) when
    flash_attn is absent: availability is resolved at import, nothing is imported inside the graph."""
    from kernels._registry import pick
    monkeypatch.setattr(ba, "flash_attn_varlen_func", None)
    monkeypatch.setattr(ba._ops, "_TRITON", True)

    def f(q):
        impl = pick("block_attention", torch.device("cuda"), dtype=q.dtype, head_dim=q.shape[-1], causal=False)
        return q + (1.0 if impl.backend == "triton" else 2.0)

    with kernels.backend("auto"):
        out = torch.compile(f, fullgraph=True, backend="eager")(torch.zeros(4, 2, 16, dtype=torch.float16))
    assert out.eq(2.0 if ba.fmha is not None else 1.0).all()


def test_max_seqlen_smaller_than_longest_is_an_error():
    q, k, v, cu, _ = _case([3, 7, 2], 2, 8, torch.float32, False)
    for bk in ("cpp", "torch"):
        with kernels.backend(bk):
            with pytest.raises(ValueError, match="max_seqlen_q=6 but the longest sequence in cu_seqlens_q has 7"):
                kernels.block_attention(q, k, v, cu, cu, max_seqlen_q=6, max_seqlen_k=7)
            with pytest.raises(ValueError, match="max_seqlen_k=1 but the longest"):
                kernels.block_attention(q, k, v, cu, cu, max_seqlen_q=7, max_seqlen_k=1)
            kernels.block_attention(q, k, v, cu, cu, max_seqlen_q=9, max_seqlen_k=7)   # an upper bound is fine
    cu2 = cu.clone()
    kernels.block_attention(q, k, v, cu2, cu2, max_seqlen_q=7, max_seqlen_k=7)   # cached: the longest is 7
    cu2[1:] = torch.tensor([1, 11, 12])   # changed in place (lengths 1, 10, 1): read again, not served stale
    with pytest.raises(ValueError, match="longest sequence in cu_seqlens_q has 10"):
        kernels.block_attention(q, k, v, cu2, cu2, max_seqlen_q=7, max_seqlen_k=7)


def test_head_dim_tiles_pad_less_than_one_power_of_two():
    from kernels.triton_attention import head_blocks
    assert head_blocks(80) == (64, 16) and head_blocks(96) == (64, 32) and head_blocks(40) == (32, 16)
    assert head_blocks(64) == (64, 0) and head_blocks(24) == (32, 0) and head_blocks(8) == (16, 0)
    for D in range(1, 257):
        a, b = head_blocks(D)
        assert a + b >= D and a >= 16 and (b == 0 or b >= 16) and a + b <= max(16, 1 << (D - 1).bit_length())
    # on a GPU no tile is narrower than 32 (a 16-wide fp16 one faulted on an H200)
    assert head_blocks(40, 32) == (64, 0) and head_blocks(80, 32) == (64, 32) and head_blocks(16, 32) == (32, 0)
    for D in range(1, 257):
        a, b = head_blocks(D, 32)
        assert a + b >= D and a >= 32 and (b == 0 or b >= 32) and a + b <= max(32, 1 << (D - 1).bit_length())


def test_narrowest_head_tile_is_32_on_a_gpu_16_under_the_interpreter():
    from kernels.triton_attention import min_head_tile
    assert min_head_tile(torch.device("cpu")) == 16 and min_head_tile(torch.device("cuda")) == 32


def test_grid_has_no_sequence_cap():
    from kernels.triton_attention import grid
    g = grid(S=200_000, max_len=600, H=16, block=64)
    assert g == (200_000 * 10, 16) and g[1] <= 65_535 and g[0] < 2**31


TRITON_SCRIPT = r"""
import torch, kernels
from kernels.triton_attention import block_attention_triton_fwd, block_attention_triton_bwd
from kernels.block_attention import block_attention_ref
from tests.kernels.test_block_attention import _case, _check_rule

def triton_fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_causal):
    with kernels.backend("triton"):
        return kernels.block_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                                       max_seqlen_k=max_seqlen_k, block_causal=block_causal)

# block sizes 16 (the smallest tl.dot) so that these tiny shapes still span several blocks
import kernels.triton_attention as ta
_blocks = ta._blocks
ta._blocks = lambda D, bm, bn, min_part=16: _blocks(D, 16, 16, min_part)
for dtype in (torch.float32, torch.float16):
    for lens, D, causal in (([1, 1, 1], 32, False), ([5, 0, 17, 33], 24, True), ([20, 3], 80, False),
                            ([0, 0], 16, True), ([9, 40], 64, True), ([18], 128, False), ([12, 7], 40, True)):
        q, k, v, cu, frames = _case(lens, 2, D, dtype, causal, seed=D)
        _check_rule(q, k, v, cu.int(), frames, triton_fn)
# causality by perturbation, straight on the kernel
q, k, v, cu, frames = _case([12, 20], 2, 16, torch.float32, True, seed=5)
late = torch.cat([frames[:12] == frames[:12].max(), frames[12:] == frames[12:].max()])
o1, _ = block_attention_triton_fwd(q, k, v, cu, cu, 20, 20, 0.25, frames, frames)
k[late] += 3.0; v[late] -= 3.0
o2, _ = block_attention_triton_fwd(q, k, v, cu, cu, 20, 20, 0.25, frames, frames)
assert torch.allclose(o1[~late], o2[~late], atol=1e-6) and not torch.allclose(o1[late], o2[late])
print("OK")
"""


def test_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


LOWER_ISA_SCRIPT = """
import torch, kernels
from tests.kernels.test_block_attention import LENS, _case, _check_rule, _kernel
print("capability", torch.backends.cpu.get_cpu_capability())
for lens in ("odd_lengths", "few_long"):
    for causal in (False, True):
        _check_rule(*_case(LENS[lens], 2, 32, torch.bfloat16, causal), _kernel)
q = torch.randn(2, 4, 100, 32, requires_grad=True)
ref = torch.nn.functional.scaled_dot_product_attention(q, q, q)
with torch.autocast("cpu", dtype=torch.bfloat16):
    o = kernels.sdpa(q, q, q)
o.float().sum().backward()
assert o.dtype == torch.bfloat16 and torch.allclose(o.float(), ref, atol=0.05 * ref.abs().max().item())
print("OK")
"""


def test_bf16_attention_under_a_forced_lower_isa():
    # ATEN_CPU_CAPABILITY=avx2 on an AVX512-BF16/AMX CPU: ATen's bf16 flash kernel raises there, so bf16
    # attention (packed and dense, under autocast) must take another path with the same answers.
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", LOWER_ISA_SCRIPT], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
    assert "capability AVX2" in r.stdout or "capability DEFAULT" in r.stdout, r.stdout


def test_torch_compile_smoke():
    lens = [5, 9, 1]
    cu = torch.tensor([0] + lens).cumsum(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(15, 16, generator=g, requires_grad=True)
    w = (0.25 * torch.randn(16, 48, generator=g)).requires_grad_(True)   # moderate logits: fp32-stable grads

    def step(x_TD, w):
        q, k, v = (x_TD @ w).unflatten(1, (3, 2, 8)).unbind(1)
        return kernels.block_attention(q, k, v, cu, cu, max_seqlen_q=9, max_seqlen_k=9).square().sum()

    loss = torch.compile(step, fullgraph=True, backend="inductor")(x, w)
    loss.backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    with kernels.backend("torch"):
        ref = step(x, w)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, w.grad)
