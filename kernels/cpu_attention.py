"""CPU block attention without the C++ extension: length buckets over ATen's fused CPU flash kernels.

    out_THD, lse_HT = block_attention_cpu_fwd(q_THD, k_THD, v_THD, cu_q, cu_k, scale, fq, fk)
    dq, dk, dv = block_attention_cpu_bwd(dout_THD, q_THD, k_THD, v_THD, out_THD, lse_HT, cu_q, cu_k, scale, fq, fk)

How it works: sequences are sorted by length and cut into buckets (an exact dynamic program over the
sorted lengths with a measured cost model: a fixed cost per kernel call, a fixed cost per sequence,
and the padded query x key pairs at the measured throughput). Each bucket is gathered into a padded
[n, L, H, Dh] batch (a zero-copy view when its sequences are contiguous and of equal length, e.g. a
whole batch of equal-length samples), run through `aten._scaled_dot_product_flash_attention_for_cpu`
(online softmax, fp32 accumulation, returns the log-sum-exp) with an additive key-padding /
frame mask, and the real rows are copied back. The backward re-gathers and calls the fused
`..._for_cpu_backward` with the saved log-sum-exp, so no attention matrix is ever kept.
Padded query rows get a zero output-gradient and an infinite log-sum-exp, so they add nothing.

Which CPU path runs (measured on this shared 2-core CPU, torch 2.13, fp32, fwd+bwd):
- ATen's fused CPU flash kernel (`_scaled_dot_product_flash_attention_for_cpu` + backward) is the
  building block of every candidate: ~30 us per call + ~25 us per sequence in it, then ~13 query-key
  pairs x head-dims per ns. A dense block-diagonal mask does T^2 work; padding to the longest wastes
  S*Lmax^2 / sum L^2 (2.4-2.5x for the V-JEPA-like mixes in the bench); FlexAttention needs a ~30 s
  compile per shape and was 2.5x slower than a loop here (FACTS.md).
- This module (buckets from Python): 10x faster than block_attention_ref's autograd loop on 64
  sequences of 20-100 tokens on an idle machine, but each kernel call opens its own 2-thread parallel
  region, and on these shared cores every region can stall for a scheduler slice: under load it took
  340-1840 ms where the C++ op took 68-72 ms (64 x 20-100) and 1110 ms vs 170 ms (16 x 75-600).
- csrc/cpu/block_attention.cpp (the default when built): per sequence (per (sequence, head) when there
  are few) inside one OpenMP region, longest first, the same kernel or, for fp32 sequences of at most
  256 tokens without a frame mask, its own short-sequence kernel. It is what "cpp" runs; this module is
  the fallback for a clone without the built extension.
bench/bench_attention.py has the final table against dense / padded / per-sequence-loop SDPA.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

_FWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_BWD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

# Cost model of one fused fwd+bwd call (microseconds), measured here; only the ratios matter.
CALL_US = 80.0        # kernel call + gathers/scatters in Python
SEQ_US = 25.0         # per sequence in a call
PAIRS_PER_US = 13000  # (query, key) pairs x H x Dh per microsecond


class _Bucket:
    """n sequences padded to [Lq, Lk]; `view` buckets are contiguous, equal-length: no gather."""

    __slots__ = ("n", "Lq", "Lk", "q0", "q1", "k0", "k1", "view", "rows_q", "rows_k", "pos_q", "pos_k",
                 "valid_q", "valid_k", "kpad")

    def __init__(self, n, Lq, Lk):
        self.n, self.Lq, self.Lk = n, Lq, Lk
        self.view = False


def _partition(lq, lk, hd):
    """Optimal cut of sequences (already sorted by padded cost) into contiguous groups: O(S^2) numpy DP."""
    S = len(lq)
    best = np.zeros(S + 1)
    cut = np.zeros(S + 1, dtype=np.int64)
    for j in range(1, S + 1):
        # group i..j-1 padded to the max lengths of that group (suffix maxima, vectorised over i)
        mq = np.maximum.accumulate(lq[:j][::-1])[::-1]
        mk = np.maximum.accumulate(lk[:j][::-1])[::-1]
        n = j - np.arange(j)
        c = best[:j] + CALL_US + n * (SEQ_US + mq * mk * hd / PAIRS_PER_US)
        i = int(np.argmin(c))
        best[j], cut[j] = c[i], i
    groups, j = [], S
    while j > 0:
        groups.append((int(cut[j]), j))
        j = int(cut[j])
    return groups[::-1]


@functools.lru_cache(maxsize=32)
def _plan(cq: tuple, ck: tuple, hd: int):
    """Buckets for one packing (cached: every layer of a step sees the same cu_seqlens)."""
    cq_a, ck_a = np.asarray(cq, dtype=np.int64), np.asarray(ck, dtype=np.int64)
    lq, lk = np.diff(cq_a), np.diff(ck_a)
    live = np.nonzero((lq > 0) & (lk > 0))[0]
    buckets = []
    if len(live) == 0:
        return buckets
    # whole runs of contiguous equal-length sequences are one zero-copy view each when long enough
    order = live[np.lexsort((live, -(lq[live] * lk[live])))]   # longest first, stable in position
    for i0, i1 in _partition(lq[order].astype(np.float64), lk[order].astype(np.float64), hd):
        seqs = order[i0:i1]
        Lq, Lk = int(lq[seqs].max()), int(lk[seqs].max())
        b = _Bucket(len(seqs), Lq, Lk)
        s_sorted = np.sort(seqs)
        if (np.all(lq[seqs] == Lq) and np.all(lk[seqs] == Lk) and np.all(np.diff(s_sorted) == 1)):
            b.view = True
            b.q0, b.q1 = int(cq_a[s_sorted[0]]), int(cq_a[s_sorted[-1] + 1])
            b.k0, b.k1 = int(ck_a[s_sorted[0]]), int(ck_a[s_sorted[-1] + 1])
        else:
            ar_q, ar_k = np.arange(Lq), np.arange(Lk)
            vq = ar_q[None, :] < lq[seqs][:, None]                     # [n, Lq]
            vk = ar_k[None, :] < lk[seqs][:, None]
            rq = np.where(vq, cq_a[seqs][:, None] + ar_q[None, :], -1)  # -1: padding
            rk = np.where(vk, ck_a[seqs][:, None] + ar_k[None, :], -1)
            b.valid_q = torch.from_numpy(vq.reshape(-1))
            b.valid_k = torch.from_numpy(vk)
            b.rows_q = torch.from_numpy(rq.reshape(-1))               # pads resolved per tensor below
            b.rows_k = torch.from_numpy(rk.reshape(-1))
            b.pos_q = torch.from_numpy(np.nonzero(vq.reshape(-1))[0])  # padded row -> real row
            b.pos_k = torch.from_numpy(np.nonzero(vk.reshape(-1))[0])
        buckets.append(b)
    return buckets




def _rows(rows, pad_to: int):
    """Row ids with padding (-1) sent to `pad_to` (row 0, or the appended zero / +inf row)."""
    return torch.where(rows < 0, pad_to, rows)


def _get_plan(cu_q, cu_k, hd):
    return _plan(tuple(cu_q.tolist()), tuple(cu_k.tolist()), hd)


def _mask(b, dtype, fq, fk):
    """Additive mask [n, 1, 1|Lq, Lk] for a gathered bucket (None when nothing is masked)."""
    if b.view:
        if fq is None:
            return None
        fq_nL = fq[b.q0:b.q1].unflatten(0, (b.n, b.Lq))
        fk_nL = fk[b.k0:b.k1].unflatten(0, (b.n, b.Lk))
        keep = fq_nL[:, :, None] >= fk_nL[:, None, :]
    else:
        keep = b.valid_k[:, None, :]                                  # [n, 1, Lk]
        if fq is not None:
            fq_nL = fq.index_select(0, _rows(b.rows_q, 0)).view(b.n, b.Lq)
            fk_nL = fk.index_select(0, _rows(b.rows_k, 0)).view(b.n, b.Lk)
            keep = keep & (fq_nL[:, :, None] >= fk_nL[:, None, :])
        elif bool(keep.all()):
            return None
    m = torch.zeros(keep.shape, dtype=dtype)
    return m.masked_fill_(~keep, float("-inf")).unsqueeze(1)


def _bhld(x_TD, n, L):
    """[n*L, H, Dh] rows -> the [n, H, L, Dh] view the flash kernel takes (no copy)."""
    return x_TD.unflatten(0, (n, L)).transpose(1, 2)


def _lse_dtype(dtype):
    return dtype if dtype == torch.float64 else torch.float32


def block_attention_cpu_fwd(q, k, v, cu_q, cu_k, scale, fq=None, fk=None):
    """Packed forward: (out [Tq, H, Dh], lse [Tq, H] in fp32 / fp64)."""
    Tq, H, D = q.shape
    buckets = _get_plan(cu_q, cu_k, H * D)
    lse = torch.zeros(Tq, H, dtype=_lse_dtype(q.dtype))
    if len(buckets) == 1 and buckets[0].view and buckets[0].q1 - buckets[0].q0 == Tq:
        b = buckets[0]   # one batch of equal-length sequences: everything is a view
        o, l = _FWD(_bhld(q, b.n, b.Lq), _bhld(k, b.n, b.Lk), _bhld(v, b.n, b.Lk),
                    attn_mask=_mask(b, q.dtype, fq, fk), scale=scale)
        return o.transpose(1, 2).reshape(Tq, H, D), l.transpose(1, 2).reshape(Tq, H).to(lse.dtype)
    covered = sum(b.n * b.Lq if b.view else len(b.pos_q) for b in buckets)
    out = q.new_empty(Tq, H, D) if covered == Tq else q.new_zeros(Tq, H, D)
    for b in buckets:
        if b.view:
            o, l = _FWD(_bhld(q[b.q0:b.q1], b.n, b.Lq), _bhld(k[b.k0:b.k1], b.n, b.Lk),
                        _bhld(v[b.k0:b.k1], b.n, b.Lk), attn_mask=_mask(b, q.dtype, fq, fk), scale=scale)
            out[b.q0:b.q1] = o.transpose(1, 2).reshape(-1, H, D)
            lse[b.q0:b.q1] = l.transpose(1, 2).reshape(-1, H)
            continue
        rq, rk = _rows(b.rows_q, 0), _rows(b.rows_k, 0)
        o, l = _FWD(_bhld(q.index_select(0, rq), b.n, b.Lq), _bhld(k.index_select(0, rk), b.n, b.Lk),
                    _bhld(v.index_select(0, rk), b.n, b.Lk), attn_mask=_mask(b, q.dtype, fq, fk), scale=scale)
        dst = b.rows_q.index_select(0, b.pos_q)
        out.index_copy_(0, dst, o.transpose(1, 2).reshape(-1, H, D).index_select(0, b.pos_q))
        lse.index_copy_(0, dst, l.transpose(1, 2).reshape(-1, H).index_select(0, b.pos_q).to(lse.dtype))
    return out, lse


def block_attention_cpu_bwd(dout, q, k, v, out, lse, cu_q, cu_k, scale, fq=None, fk=None):
    """Packed backward with the saved log-sum-exp: (dq, dk, dv)."""
    Tq, H, D = q.shape
    Tk = k.shape[0]
    buckets = _get_plan(cu_q, cu_k, H * D)
    dout = dout.contiguous()
    if len(buckets) == 1 and buckets[0].view and buckets[0].q1 - buckets[0].q0 == Tq \
            and buckets[0].k1 - buckets[0].k0 == Tk:
        b = buckets[0]
        dq, dk, dv = _BWD(_bhld(dout, b.n, b.Lq), _bhld(q, b.n, b.Lq), _bhld(k, b.n, b.Lk), _bhld(v, b.n, b.Lk),
                          _bhld(out, b.n, b.Lq), lse.unflatten(0, (b.n, b.Lq)).transpose(1, 2), 0.0, False,
                          attn_mask=_mask(b, q.dtype, fq, fk), scale=scale)
        return (dq.transpose(1, 2).reshape(Tq, H, D), dk.transpose(1, 2).reshape(Tk, H, D),
                dv.transpose(1, 2).reshape(Tk, H, D))
    dq, dk, dv = q.new_zeros(Tq, H, D), k.new_zeros(Tk, H, D), v.new_zeros(Tk, H, D)
    gathered = [b for b in buckets if not b.view]
    if gathered:   # padded query rows read a zero gradient and an infinite lse: they add nothing
        dout_x = torch.cat([dout, dout.new_zeros(1, H, D)])
        lse_x = torch.cat([lse, lse.new_full((1, H), float("inf"))])
    for b in buckets:
        if b.view:
            sq, sk = slice(b.q0, b.q1), slice(b.k0, b.k1)
            g = _BWD(_bhld(dout[sq], b.n, b.Lq), _bhld(q[sq], b.n, b.Lq), _bhld(k[sk], b.n, b.Lk),
                     _bhld(v[sk], b.n, b.Lk), _bhld(out[sq], b.n, b.Lq),
                     lse[sq].unflatten(0, (b.n, b.Lq)).transpose(1, 2), 0.0, False,
                     attn_mask=_mask(b, q.dtype, fq, fk), scale=scale)
            dq[sq] = g[0].transpose(1, 2).reshape(-1, H, D)
            dk[sk] = g[1].transpose(1, 2).reshape(-1, H, D)
            dv[sk] = g[2].transpose(1, 2).reshape(-1, H, D)
            continue
        rq, rk, rq_x = _rows(b.rows_q, 0), _rows(b.rows_k, 0), _rows(b.rows_q, Tq)
        lse_b = lse_x.index_select(0, rq_x).view(b.n, b.Lq, H).transpose(1, 2)
        g = _BWD(_bhld(dout_x.index_select(0, rq_x), b.n, b.Lq), _bhld(q.index_select(0, rq), b.n, b.Lq),
                 _bhld(k.index_select(0, rk), b.n, b.Lk), _bhld(v.index_select(0, rk), b.n, b.Lk),
                 _bhld(out.index_select(0, rq), b.n, b.Lq), lse_b, 0.0, False,
                 attn_mask=_mask(b, q.dtype, fq, fk), scale=scale)
        dst_q, dst_k = b.rows_q.index_select(0, b.pos_q), b.rows_k.index_select(0, b.pos_k)
        dq.index_copy_(0, dst_q, g[0].transpose(1, 2).reshape(-1, H, D).index_select(0, b.pos_q))
        dk.index_copy_(0, dst_k, g[1].transpose(1, 2).reshape(-1, H, D).index_select(0, b.pos_k))
        dv.index_copy_(0, dst_k, g[2].transpose(1, 2).reshape(-1, H, D).index_select(0, b.pos_k))
    return dq, dk, dv
