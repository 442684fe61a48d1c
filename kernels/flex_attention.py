"""Block-causal packed attention on torch's FlexAttention: the world models' frame-causal attention on a
GPU, which the FlashAttention kernels cannot take (they know no frame mask).

    o_THD = flex_block_attention(q_THD, k_THD, v_THD, cu_q, cu_k, scale, frame_q_T, frame_k_T)

The packed rows are one batch-1 sequence for FlexAttention; a BlockMask says which 128 x 128 tiles hold a
pair that may attend (same packed sequence, key frame <= query frame) and which hold only such pairs, so
the kernel skips every tile across sequences or wholly in a later frame and evaluates the mask only on the
tiles that mix. The tiles are classified from the sequences' row ranges and frame ids alone: only tile
pairs whose sequence ranges overlap are looked at (the work grows with the tokens, not their square).
A query that sees no key gets a zero output and no gradient, as the other backends.

Called from kernels/block_attention.py (its "cuda" backend, for block-causal fp16/bf16 calls); eager
callers go through one torch.compile'd flex_attention (uncompiled FlexAttention is a dense reference).
"""
from __future__ import annotations

import importlib.util

import torch

from kernels import _ops

TILE = 128                       # FlexAttention's default sparse block size
HEAD_DIMS = (16, 32, 64, 128)    # powers of two its Triton templates take; other head dims stay on our kernel
_PAD_Q, _PAD_K = -1, -2          # sequence ids of the rows that round T up to whole tiles: never equal


def seq_ids(cu: torch.Tensor, T: int, pad: int) -> torch.Tensor:
    """[ceil(T / TILE) * TILE] int32: each packed row's sequence, then `pad` up to whole tiles."""
    n = -(-T // TILE) * TILE
    ids = torch.full((n,), pad, dtype=torch.int32, device=cu.device)
    counts = (cu[1:] - cu[:-1]).long()
    ids[:T] = torch.repeat_interleave(torch.arange(counts.numel(), device=cu.device, dtype=torch.int32), counts,
                                      output_size=T)
    return ids


def _padded(f: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.int32, device=f.device)
    out[:f.numel()] = f
    return out


def tile_classes(sq: torch.Tensor, sk: torch.Tensor, fq: torch.Tensor, fk: torch.Tensor):
    """(partial_QK, full_QK) bool [nq, nk]: tiles with some / only pairs that may attend. sq, sk, fq, fk
    are the padded per-row sequence and frame ids. Only tile pairs whose sequence ranges overlap are
    evaluated (packed rows are sorted by sequence)."""
    nq, nk = sq.numel() // TILE, sk.numel() // TILE
    sq_t, sk_t = sq.view(nq, TILE), sk.view(nk, TILE)
    big = torch.iinfo(torch.int32).max

    def span(s_t, pad):   # each tile's lowest and highest real sequence id (empty tiles: an empty span)
        real = s_t != pad
        lo = torch.where(real, s_t, big).amin(1)
        hi = torch.where(real, s_t, -big).amax(1)
        return lo, hi

    (lq, hq), (lk, hk) = span(sq_t, _PAD_Q), span(sk_t, _PAD_K)
    near = (lq[:, None] <= hk[None, :]) & (lk[None, :] <= hq[:, None])
    i, j = near.nonzero(as_tuple=True)
    ok = ((sq_t[i][:, :, None] == sk_t[j][:, None, :])
          & (fq.view(nq, TILE)[i][:, :, None] >= fk.view(nk, TILE)[j][:, None, :]))
    partial = torch.zeros(nq, nk, dtype=torch.bool, device=sq.device)
    full = torch.zeros_like(partial)
    partial[i, j] = ok.flatten(1).any(1)
    full[i, j] = ok.flatten(1).all(1)
    return partial, full


def _ordered(sel_QK: torch.Tensor):
    """(counts [1, 1, nq], indices [1, 1, nq, nk]) int32: each row's selected tile columns first."""
    nk = sel_QK.shape[1]
    cols = torch.arange(nk, device=sel_QK.device)
    order = torch.where(sel_QK, cols, cols + nk).argsort(dim=1)
    return sel_QK.sum(1, dtype=torch.int32)[None, None], order.to(torch.int32)[None, None]


_lib: dict = {}   # FlexAttention's functions, imported on first use: that import loads torch._dynamo (a second)


def available() -> bool:
    """Whether this torch has FlexAttention (2.5+); imports it the first time."""
    if "ok" not in _lib:
        _lib["ok"] = importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
        if _lib["ok"]:
            from torch.nn.attention.flex_attention import BlockMask, flex_attention
            _lib.update(BlockMask=BlockMask, flex_attention=flex_attention,
                        compiled=torch.compile(flex_attention),   # compiles at its first call
                        mask=torch.compiler.disable(cached_block_mask))
    return _lib["ok"]


def block_mask(cu_q, cu_k, fq, fk, T_q: int, T_k: int):
    """The BlockMask of packed block-causal attention (see the module docstring)."""
    available()
    sq, sk = seq_ids(cu_q, T_q, _PAD_Q), seq_ids(cu_k, T_k, _PAD_K)
    fq_p, fk_p = _padded(fq, sq.numel()), _padded(fk, sk.numel())
    partial, full = tile_classes(sq, sk, fq_p, fk_p)

    def mask_mod(b, h, qi, ki):
        return (sq[qi] == sk[ki]) & (fq_p[qi] >= fk_p[ki])

    kv_num, kv_idx = _ordered(partial & ~full)
    full_num, full_idx = _ordered(full)
    return _lib["BlockMask"].from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=TILE, mask_mod=mask_mod,
                                    seq_lengths=(T_q, T_k))


_masks: dict = {}   # the layers of a step share one packing (_ops.memo)


def cached_block_mask(cu_q, cu_k, fq, fk, T_q: int, T_k: int):
    """block_mask, built once per packing (one set of cu_seqlens and frame tensors), not once per layer.
    Compiled callers run it outside the graph (_lib["mask"]: a graph break)."""
    return _ops.memo(_masks, (cu_q, cu_k, fq, fk), (T_q, T_k), lambda: block_mask(cu_q, cu_k, fq, fk, T_q, T_k),
                     limit=16)


def flex_block_attention(q, k, v, cu_q, cu_k, scale: float, fq, fk):
    """[Tq, H, Dh] out of packed q [Tq, H, Dh], k/v [Tk, H, Dh], frame ids fq [Tq], fk [Tk]. Eager calls
    run one torch.compile'd flex_attention (dynamic shapes after a second length); compiled callers trace
    flex_attention itself."""
    if not available():
        raise RuntimeError("flex_block_attention: this torch has no FlexAttention (torch >= 2.5)")
    mask = _lib["mask"](cu_q, cu_k, fq, fk, q.shape[0], k.shape[0])
    fn = _lib["flex_attention"] if torch.compiler.is_compiling() else _lib["compiled"]
    o = fn(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], block_mask=mask, scale=scale)
    return o[0].transpose(0, 1)
