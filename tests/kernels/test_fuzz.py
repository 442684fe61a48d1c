"""Property tests: every CPU backend of every op against its reference on random inputs (hypothesis).

Shapes include empty and 1; inputs are often non-contiguous views; every dtype the CPU backends take.
The Triton kernels are covered under the interpreter in their own test files (it is too slow to fuzz).
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels
from tests.kernels.test_block_attention import _check_rule

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BACKENDS = ["cpp", "torch"]
FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _tensor(shape, dtype, seed, strided):
    """randn of `shape`; when `strided`, a non-contiguous view with the same values layout semantics."""
    g = torch.Generator().manual_seed(seed)
    if not strided:
        return torch.randn(shape, generator=g).to(dtype)
    big = torch.randn(*shape[:-1], 2 * shape[-1] + 1, generator=g).to(dtype)
    return big[..., 1::2]   # every other column: stride 2 in the last dim


@st.composite
def gathers(draw):
    B, N, D = draw(st.integers(1, 4)), draw(st.integers(1, 40)), draw(st.integers(1, 70))
    K = draw(st.integers(0, N))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    idx_BK = torch.stack([torch.randperm(N, generator=g)[:K] for _ in range(B)])
    return (B, N, D, idx_BK, seed, draw(st.sampled_from(FLOATS)), draw(st.booleans()),
            draw(st.booleans()), draw(st.sampled_from([torch.int64, torch.int32])))


@pytest.mark.parametrize("bk", BACKENDS)
@SETTINGS
@given(case=gathers())
def test_gather_scatter_layer_norm(bk, case):
    B, N, D, idx_BK, seed, dtype, strided, packed, idt = case
    x = _tensor((B, N, D), dtype, seed, strided)
    idx = (idx_BK + torch.arange(B)[:, None] * N).reshape(-1) if packed else idx_BK
    idx = idx.to(idt)
    with kernels.backend(bk):
        x_req = x.detach().clone().requires_grad_(True)
        y = kernels.gather_tokens(x_req, idx)
        assert torch.equal(y, kernels.gather_tokens_ref(x, idx.long()))
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
        y.backward(gy)
        want = torch.zeros(B * N, D, dtype=dtype)
        rows = (idx_BK + torch.arange(B)[:, None] * N).reshape(-1)
        want[rows] = gy.reshape(-1, D)
        assert torch.equal(x_req.grad.reshape(B * N, D), want)
        if packed:
            assert torch.equal(kernels.scatter_tokens(y.detach(), idx, B, N), kernels.scatter_tokens_ref(y.detach(), idx.long(), B, N))
        ln = kernels.gather_layer_norm(x, idx)
        ref64 = kernels.gather_layer_norm_ref(x.double(), idx.long())
        ref = kernels.gather_layer_norm_ref(x, idx.long())   # same-dtype torch, for the tolerance
        if ref64.numel():
            err, err_ref = (ln.double() - ref64).abs().max().item(), (ref.double() - ref64).abs().max().item()
            # |y| <= sqrt(D) after normalisation: rounding of the output itself is eps * that
            assert err <= 2 * err_ref + 4 * torch.finfo(dtype).eps * D ** 0.5, (err, err_ref)


@st.composite
def emas(draw):
    sizes = draw(st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=3), min_size=0, max_size=5))
    pair = draw(st.sampled_from([(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                 (torch.float32, torch.float16), (torch.float64, torch.float64)]))
    m = draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0)))
    return sizes, pair, m, draw(st.integers(0, 2**16)), draw(st.booleans()), draw(st.booleans())


@pytest.mark.parametrize("bk", BACKENDS)
@SETTINGS
@given(case=emas())
def test_ema(bk, case):
    sizes, (tdt, sdt), m, seed, strided_src, tensor_m = case
    targets = [_tensor(s, tdt, seed + i, False) for i, s in enumerate(sizes)]
    sources = [_tensor(s, sdt, seed + 100 + i, strided_src) for i, s in enumerate(sizes)]
    want = [t.clone() for t in targets]
    kernels.ema_ref(want, sources, m)
    with kernels.backend(bk):
        kernels.ema_(targets, sources, torch.tensor(m, dtype=torch.float64) if tensor_m else m)
    eps = torch.finfo(tdt).eps
    for t, w, s in zip(targets, want, sources):
        # both compute m*t + (1-m)*s with one or two roundings of terms <= max(|t|, |s|)
        scale = max(w.abs().max().item() if w.numel() else 0.0, s.double().abs().max().item() if s.numel() else 0.0)
        torch.testing.assert_close(t, w, rtol=0, atol=4 * eps * max(scale, 1.0))


@st.composite
def attentions(draw):
    lens = draw(st.lists(st.integers(0, 40), min_size=1, max_size=6))
    return (lens, draw(st.integers(1, 3)), draw(st.sampled_from([1, 8, 16, 24, 40, 64, 80])),
            draw(st.sampled_from([torch.float32, torch.float64])), draw(st.booleans()), draw(st.integers(0, 2**16)),
            draw(st.booleans()))


@settings(SETTINGS, max_examples=25)
@given(case=attentions())
def test_block_attention_cpu(case):
    lens, H, D, dtype, causal, seed, strided = case
    g = torch.Generator().manual_seed(seed)
    cu = torch.tensor([0] + lens).cumsum(0)
    T = int(cu[-1])
    q, k, v = (_tensor((T, H, D), dtype, seed + i, strided) for i in range(3))
    frames = torch.cat([torch.randint(0, 3, (n,), generator=g).sort().values for n in lens]).long() if causal else None

    def cpp_fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_causal):
        with kernels.backend("cpp"):
            return kernels.block_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                                           max_seqlen_k=max_seqlen_k, block_causal=block_causal)

    _check_rule(q, k, v, cu, frames, cpp_fn, seed=seed)
