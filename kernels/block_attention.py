"""Block-diagonal attention over packed variable-length sequences.

    o_THD = kernels.block_attention(q_THD, k_THD, v_THD, cu_seqlens_q, cu_seqlens_k,
                                    max_seqlen_q=Lq, max_seqlen_k=Lk)

`q/k/v` hold S sequences packed along T (sequence s is rows cu_seqlens[s]:cu_seqlens[s+1]); each
sequence attends only within itself, so no FLOP is spent on padding and no dense T x T mask exists.
`block_causal` (optional) gives a frame id per token (int tensors [Tq] and [Tk], or one tensor when
q and k share cu_seqlens): a query attends to keys whose frame id is <= its own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._backend import current_backend


def _frame_ids(block_causal, T_q: int, T_k: int):
    if block_causal is None:
        return None, None
    if isinstance(block_causal, (tuple, list)):
        fq, fk = block_causal
    else:
        fq = fk = block_causal
    if fq.shape != (T_q,) or fk.shape != (T_k,):
        raise ValueError(
            f"block_causal frame ids must have shapes ({T_q},) and ({T_k},), got {tuple(fq.shape)} and {tuple(fk.shape)}")
    return fq, fk


def check_packed(q, k, v, cu_seqlens_q, cu_seqlens_k):
    """Shape/dtype checks shared by every backend: errors name the argument."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3:
            raise ValueError(f"block_attention: {name} must be [T, H, Dh], got shape {tuple(t.shape)}")
    if k.shape != v.shape or q.shape[1:] != k.shape[1:]:
        raise ValueError(f"block_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} disagree")
    for name, cu, T in (("cu_seqlens_q", cu_seqlens_q, q.shape[0]), ("cu_seqlens_k", cu_seqlens_k, k.shape[0])):
        if cu.dim() != 1 or cu.numel() < 1:
            raise ValueError(f"block_attention: {name} must be 1-D [S+1], got shape {tuple(cu.shape)}")
        if int(cu[0]) != 0 or int(cu[-1]) != T:
            raise ValueError(f"block_attention: {name} must start at 0 and end at {T}, got {cu[0]}..{cu[-1]}")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError("block_attention: cu_seqlens_q and cu_seqlens_k hold different sequence counts")


def block_attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, *, max_seqlen_q=None, max_seqlen_k=None,
                        scale=None, block_causal=None):
    """Plain-torch definition of correct: one SDPA per sequence.

    Equivalent pytorch code::

        out = torch.empty_like(q)
        for s in range(len(cu_seqlens_q) - 1):
            qs, ks, vs = (t[cu[s]:cu[s+1]].transpose(0, 1) for t, cu in ((q, cu_q), (k, cu_k), (v, cu_k)))
            mask = frame_q[:, None] >= frame_k[None, :] if block_causal is not None else None
            out[cu_q[s]:cu_q[s+1]] = F.scaled_dot_product_attention(qs, ks, vs, mask, scale=scale).transpose(0, 1)
    """
    check_packed(q, k, v, cu_seqlens_q, cu_seqlens_k)
    fq, fk = _frame_ids(block_causal, q.shape[0], k.shape[0])
    out = torch.empty_like(q)
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    for s in range(len(cq) - 1):
        q0, q1, k0, k1 = cq[s], cq[s + 1], ck[s], ck[s + 1]
        if q1 == q0:
            continue
        if k1 == k0:  # nothing to attend to: define the output as zeros
            out[q0:q1] = 0
            continue
        mask = None
        if fq is not None:
            mask = fq[q0:q1, None] >= fk[None, k0:k1]
        o = F.scaled_dot_product_attention(q[q0:q1].transpose(0, 1), k[k0:k1].transpose(0, 1),
                                           v[k0:k1].transpose(0, 1), attn_mask=mask, scale=scale)
        out[q0:q1] = o.transpose(0, 1)
    return out


def block_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, *, max_seqlen_q=None, max_seqlen_k=None,
                    scale=None, block_causal=None):
    """Dispatching entry point (see module docstring). Backends other than "torch" are added by
    the fused-kernel implementations; until one is available for the device, the reference runs."""
    backend = current_backend()
    if backend not in ("auto", "torch"):
        raise NotImplementedError(f"block_attention has no {backend!r} backend yet")
    return block_attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                               max_seqlen_k=max_seqlen_k, scale=scale, block_causal=block_causal)
