"""kernels/flex_attention.py: the block mask of packed block-causal attention (tile classes against the dense
mask, FlexAttention's output against block_attention_ref), and the "cuda" backend's pick of it. Its GPU
runs (fp16/bf16, gradients) are bench/gpu_check.py's `[flex]` cases; FlexAttention has no CPU backward."""
import sys

import pytest
import torch

import kernels
from kernels import flex_attention as fx

ba = sys.modules["kernels.block_attention"]   # the module; `kernels.block_attention` is the function

pytestmark = [pytest.mark.skipif(not fx.available(), reason="this torch has no FlexAttention (torch >= 2.5)"),
              pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")]


def _packing(lens_q, lens_k=None, frames_per=3, shuffle=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens_k = lens_q if lens_k is None else lens_k

    def frames(lens):
        parts = [torch.arange(n) // frames_per for n in lens]
        if shuffle:   # frame ids need not be sorted within a sequence
            parts = [p[torch.randperm(p.numel(), generator=g)] for p in parts]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    cu_q = torch.tensor([0] + lens_q).cumsum(0).int()
    cu_k = torch.tensor([0] + lens_k).cumsum(0).int()
    return cu_q, cu_k, frames(lens_q), frames(lens_k)


def _dense(cu_q, cu_k, fq, fk):
    """[Tq, Tk] bool: the pairs that may attend, by definition."""
    sq = torch.repeat_interleave(torch.arange(cu_q.numel() - 1), (cu_q[1:] - cu_q[:-1]).long())
    sk = torch.repeat_interleave(torch.arange(cu_k.numel() - 1), (cu_k[1:] - cu_k[:-1]).long())
    return (sq[:, None] == sk[None, :]) & (fq[:, None] >= fk[None, :])


CASES = {
    "odd": ([7, 33, 65, 100, 17], None, False),
    "long": ([300, 257], None, False),
    "empty seqs": ([0, 5, 0, 9, 0], None, False),
    "tile edges": ([128, 1, 127, 256], None, False),
    "cross lengths": ([9, 0, 1, 30, 200], [20, 5, 1, 30, 257], False),
    "unsorted frames": ([40, 200, 3], None, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_tile_classes_match_the_dense_mask(name):
    lens_q, lens_k, shuffle = CASES[name]
    cu_q, cu_k, fq, fk = _packing(lens_q, lens_k, shuffle=shuffle)
    Tq, Tk = int(cu_q[-1]), int(cu_k[-1])
    sq, sk = fx.seq_ids(cu_q, Tq, fx._PAD_Q), fx.seq_ids(cu_k, Tk, fx._PAD_K)
    partial, full = fx.tile_classes(sq, sk, fx._padded(fq, sq.numel()), fx._padded(fk, sk.numel()))
    dense = torch.zeros(sq.numel(), sk.numel(), dtype=torch.bool)
    dense[:Tq, :Tk] = _dense(cu_q, cu_k, fq, fk)
    tiles = dense.view(sq.numel() // fx.TILE, fx.TILE, sk.numel() // fx.TILE, fx.TILE).transpose(1, 2).flatten(2)
    assert torch.equal(partial, tiles.any(-1)) and torch.equal(full, tiles.all(-1))
    assert dense.any()   # every case has pairs that attend


@pytest.mark.parametrize("name", list(CASES))
def test_flex_with_the_block_mask_matches_the_reference(name):
    lens_q, lens_k, shuffle = CASES[name]
    cu_q, cu_k, fq, fk = _packing(lens_q, lens_k, shuffle=shuffle)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(int(cu_q[-1]), 2, 16, generator=g)
    k, v = (torch.randn(int(cu_k[-1]), 2, 16, generator=g) for _ in range(2))
    mask = fx.block_mask(cu_q, cu_k, fq, fk, q.shape[0], k.shape[0])
    out = fx._lib["flex_attention"](q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                    block_mask=mask)[0].transpose(0, 1)
    ref = kernels.block_attention_ref(q, k, v, cu_q, cu_k, block_causal=(fq, fk))
    # |out| <= max |v|: the tolerance scales with the values averaged
    torch.testing.assert_close(out, ref, atol=1e-5 * v.abs().max().item(), rtol=1e-5)
    seen = _dense(cu_q, cu_k, fq, fk).any(1)
    assert (out[~seen] == 0).all()   # a query that sees no key: zero output


def test_compiled_flex_skips_by_the_tiles():
    """The compiled kernel reads only the tiles the mask lists (full tiles without evaluating the mask):
    its output equals the reference only if the classes are right."""
    cu_q, cu_k, fq, fk = _packing([128, 1, 127, 256, 40], frames_per=64)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(int(cu_q[-1]), 2, 16, generator=g) for _ in range(3))
    mask = fx.block_mask(cu_q, cu_k, fq, fk, q.shape[0], k.shape[0])
    assert int(mask.full_kv_num_blocks.sum()) > 0 and int(mask.kv_num_blocks.sum()) > 0
    with torch.no_grad():   # FlexAttention has no CPU backward
        out = torch.compile(fx._lib["flex_attention"], dynamic=False)(
            q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=mask)[0]
    ref = kernels.block_attention_ref(q, k, v, cu_q, cu_k, block_causal=fq)
    torch.testing.assert_close(out.transpose(0, 1), ref, atol=1e-5 * v.abs().max().item(), rtol=1e-5)


def test_block_mask_is_built_once_per_packing():
    cu, _, f, _ = _packing([40, 70])
    a = fx.cached_block_mask(cu, cu, f, f, 110, 110)
    assert fx.cached_block_mask(cu, cu, f, f, 110, 110) is a
    f[:5] = 0   # an in-place change of the frames is a new packing
    assert fx.cached_block_mask(cu, cu, f, f, 110, 110) is not a


def test_cuda_backend_takes_block_causal_calls_through_flex(monkeypatch):
    monkeypatch.setitem(ba._flex, "ok", True)
    assert ba._library(torch.bfloat16, 64, True) == "flex"
    assert ba._library(torch.float16, 128, True) == "flex"
    for dtype, dh in ((torch.float32, 64), (torch.bfloat16, 80), (torch.float16, 8)):
        assert ba._library(dtype, dh, True) is None   # our Triton kernel then
        assert "FlexAttention" in ba._library_fits(dtype, dh, True)
    monkeypatch.setitem(ba._flex, "ok", False)
    assert ba._library(torch.bfloat16, 64, True) is None


def test_flex_is_opt_in_until_run_on_a_gpu(monkeypatch):
    monkeypatch.setattr(ba, "flex_runs", lambda: True)
    for env, want in ((None, False), ("0", False), ("1", True)):
        if env is None:
            monkeypatch.delenv("JEPA_FLEX_ATTENTION", raising=False)
        else:
            monkeypatch.setenv("JEPA_FLEX_ATTENTION", env)
        monkeypatch.setattr(ba, "_flex", {})
        assert ba.flex_ok() is want


def test_a_new_packing_of_the_same_length_does_not_recompile():
    """Every step brings a new block mask (new sequence and frame tensors, a new mask function): the compiled
    kernel must take it as input, not trace again."""
    from torch._dynamo.testing import CompileCounter
    counter = CompileCounter()
    fn = torch.compile(fx._lib["flex_attention"], backend=counter, dynamic=False)
    g = torch.Generator().manual_seed(3)
    for lens, per in (([100, 156], 10), ([120, 136], 7), ([50, 206], 3)):
        cu, _, f, _ = _packing(lens, frames_per=per)
        q, k, v = (torch.randn(1, 2, 256, 16, generator=g) for _ in range(3))
        with torch.no_grad():
            fn(q, k, v, block_mask=fx.block_mask(cu, cu, f, f, 256, 256))
    assert counter.frame_count == 1
