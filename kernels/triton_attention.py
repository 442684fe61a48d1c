"""Triton block attention over packed sequences (FlashAttention-2 over cu_seqlens): the GPU fast path.

    out_THD, lse_TH = block_attention_triton_fwd(q_THD, k_THD, v_THD, cu_q, cu_k, max_q, max_k, scale, fq, fk)
    dq, dk, dv = block_attention_triton_bwd(dout_THD, q_THD, k_THD, v_THD, out_THD, lse_TH, cu_q, cu_k,
                                            max_q, max_k, scale, fq, fk)

Forward: one program per (query block, sequence, head); it streams the key blocks of its own sequence
only, with an online softmax in fp32 (exp2 domain) and saves the log-sum-exp (natural log, [Tq, H],
+inf for rows that see no key, whose output is 0). `fq`/`fk` (frame ids) mask keys of a later frame.
Backward: delta = rowsum(dO * O) in torch, then one kernel per key block for dK/dV and one per query
block for dQ (two passes, so no atomics). Programs past the end of a short sequence exit at once.
Head dims are padded to a power of two (>= 16) with masked loads, so 24 and 80 work.

On CPU this runs under TRITON_INTERPRET=1 (tests use fp32/fp16: bf16 tl.dot is broken in the
interpreter); on a GPU it is the fallback when flash_attn / xformers do not fit (kernels/block_attention.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, CU_Q, CU_K, FQ, FK, H, D, scale_log2,
                HAS_FRAMES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m, s, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q0, q1 = tl.load(CU_Q + s).to(tl.int64), tl.load(CU_Q + s + 1).to(tl.int64)
    k0, k1 = tl.load(CU_K + s).to(tl.int64), tl.load(CU_K + s + 1).to(tl.int64)
    Lq, Lk = q1 - q0, k1 - k0
    if pid_m * BLOCK_M >= Lq:   # this sequence is shorter than the grid: nothing to do
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Lq
    d_ok = offs_d < D
    row_q = (q0 + offs_m) * H + h
    q = tl.load(Q + row_q[:, None] * D + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    if HAS_FRAMES:
        fq = tl.load(FQ + q0 + offs_m, mask=m_ok, other=0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        n_idx = start_n + offs_n
        n_ok = n_idx < Lk
        row_k = (k0 + n_idx) * H + h
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(K + row_k[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k)) * scale_log2
        valid = m_ok[:, None] & n_ok[None, :]
        if HAS_FRAMES:
            fk = tl.load(FK + k0 + n_idx, mask=n_ok, other=0)
            valid = valid & (fq[:, None] >= fk[None, :])
        qk = tl.where(valid, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)   # a row with no key yet: avoid inf - inf
        p = tl.exp2(qk - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + row_k[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    seen = l_i > 0.0
    o = acc / tl.where(seen, l_i, 1.0)[:, None]
    tl.store(O + row_q[:, None] * D + offs_d[None, :], o.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) / 1.4426950408889634, float("inf"))
    tl.store(LSE + row_q, lse, mask=m_ok)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, CU_Q, CU_K, FQ, FK, H, D, scale, scale_log2,
                     HAS_FRAMES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    pid_n, s, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q0, q1 = tl.load(CU_Q + s).to(tl.int64), tl.load(CU_Q + s + 1).to(tl.int64)
    k0, k1 = tl.load(CU_K + s).to(tl.int64), tl.load(CU_K + s + 1).to(tl.int64)
    Lq, Lk = q1 - q0, k1 - k0
    if pid_n * BLOCK_N >= Lk:
        return
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < Lk
    d_ok = offs_d < D
    row_k = (k0 + offs_n) * H + h
    kv_mask = n_ok[:, None] & d_ok[None, :]
    k = tl.load(K + row_k[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + row_k[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
    if HAS_FRAMES:
        fk = tl.load(FK + k0 + offs_n, mask=n_ok, other=0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(0, Lq, BLOCK_M):
        m_idx = start_m + offs_m
        m_ok = m_idx < Lq
        row_q = (q0 + m_idx) * H + h
        q_mask = m_ok[:, None] & d_ok[None, :]
        q = tl.load(Q + row_q[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(DO + row_q[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
        lse2 = tl.load(LSE + row_q, mask=m_ok, other=float("inf")) * 1.4426950408889634
        delta = tl.load(DELTA + row_q, mask=m_ok, other=0.0)
        qk = tl.dot(q, tl.trans(k)) * scale_log2
        valid = m_ok[:, None] & n_ok[None, :]
        if HAS_FRAMES:
            fq = tl.load(FQ + q0 + m_idx, mask=m_ok, other=0)
            valid = valid & (fq[:, None] >= fk[None, :])
        p = tl.where(valid, tl.exp2(qk - lse2[:, None]), 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
    tl.store(DK + row_k[:, None] * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + row_k[:, None] * D + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, CU_Q, CU_K, FQ, FK, H, D, scale, scale_log2,
                   HAS_FRAMES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_D: tl.constexpr):
    pid_m, s, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q0, q1 = tl.load(CU_Q + s).to(tl.int64), tl.load(CU_Q + s + 1).to(tl.int64)
    k0, k1 = tl.load(CU_K + s).to(tl.int64), tl.load(CU_K + s + 1).to(tl.int64)
    Lq, Lk = q1 - q0, k1 - k0
    if pid_m * BLOCK_M >= Lq:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Lq
    d_ok = offs_d < D
    row_q = (q0 + offs_m) * H + h
    q_mask = m_ok[:, None] & d_ok[None, :]
    q = tl.load(Q + row_q[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DO + row_q[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
    lse2 = tl.load(LSE + row_q, mask=m_ok, other=float("inf")) * 1.4426950408889634
    delta = tl.load(DELTA + row_q, mask=m_ok, other=0.0)
    if HAS_FRAMES:
        fq = tl.load(FQ + q0 + offs_m, mask=m_ok, other=0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        n_idx = start_n + offs_n
        n_ok = n_idx < Lk
        row_k = (k0 + n_idx) * H + h
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(K + row_k[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + row_k[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k)) * scale_log2
        valid = m_ok[:, None] & n_ok[None, :]
        if HAS_FRAMES:
            fk = tl.load(FK + k0 + n_idx, mask=n_ok, other=0)
            valid = valid & (fq[:, None] >= fk[None, :])
        p = tl.where(valid, tl.exp2(qk - lse2[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    tl.store(DQ + row_q[:, None] * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)


def _blocks(D: int, block_m, block_n):
    BLOCK_D = max(16, triton.next_power_of_2(D))   # tl.dot needs >= 16
    big = BLOCK_D <= 64
    return block_m or (64 if big else 32), block_n or (64 if big else 32), BLOCK_D


def _frames(fq, fk, q):
    if fq is None:
        dummy = torch.zeros(1, dtype=torch.int32, device=q.device)
        return dummy, dummy, False
    return fq.contiguous(), fk.contiguous(), True


def block_attention_triton_fwd(q, k, v, cu_q, cu_k, max_q: int, max_k: int, scale: float, fq=None, fk=None,
                               block_m=None, block_n=None):
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    Tq, H, D = q.shape
    out = torch.empty_like(q)
    lse = torch.empty(Tq, H, dtype=torch.float32, device=q.device)
    S = cu_q.numel() - 1
    if Tq == 0 or S == 0 or max_q == 0:
        return out, lse
    BM, BN, BD = _blocks(D, block_m, block_n)
    fq, fk, has = _frames(fq, fk, q)
    grid = (triton.cdiv(max_q, BM), S, H)
    _fwd_kernel[grid](q, k, v, out, lse, cu_q.contiguous(), cu_k.contiguous(), fq, fk, H, D, scale * LOG2E,
                      HAS_FRAMES=has, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD)
    return out, lse


def block_attention_triton_bwd(dout, q, k, v, out, lse, cu_q, cu_k, max_q: int, max_k: int, scale: float,
                               fq=None, fk=None, block_m=None, block_n=None):
    q, k, v, dout = q.contiguous(), k.contiguous(), v.contiguous(), dout.contiguous()
    Tq, H, D = q.shape
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)   # rows of empty sequences stay 0
    S = cu_q.numel() - 1
    if Tq == 0 or k.shape[0] == 0 or S == 0:
        return dq, dk, dv
    delta = (dout.float() * out.float()).sum(-1).contiguous()   # [Tq, H]: rowsum(dO * O)
    BM, BN, BD = _blocks(D, block_m, block_n)
    fq, fk, has = _frames(fq, fk, q)
    cu_q, cu_k, lse = cu_q.contiguous(), cu_k.contiguous(), lse.contiguous()
    args = dict(HAS_FRAMES=has, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD)
    _bwd_dkdv_kernel[(triton.cdiv(max_k, BN), S, H)](q, k, v, dout, lse, delta, dk, dv, cu_q, cu_k, fq, fk, H, D,
                                                     scale, scale * LOG2E, **args)
    _bwd_dq_kernel[(triton.cdiv(max_q, BM), S, H)](q, k, v, dout, lse, delta, dq, cu_q, cu_k, fq, fk, H, D,
                                                   scale, scale * LOG2E, **args)
    return dq, dk, dv
