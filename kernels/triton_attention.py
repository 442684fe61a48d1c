"""Triton block attention over packed sequences (FlashAttention-2 over cu_seqlens): the GPU fast path.

    out_THD, lse_TH = block_attention_triton_fwd(q_THD, k_THD, v_THD, cu_q, cu_k, max_q, max_k, scale, fq, fk)
    dq, dk, dv = block_attention_triton_bwd(dout_THD, q_THD, k_THD, v_THD, out_THD, lse_TH, cu_q, cu_k,
                                            max_q, max_k, scale, fq, fk)

Forward: one program per (query block of a sequence, head); it streams the key blocks of its own
sequence only, with an online softmax in fp32 (exp2 domain), and saves the log-sum-exp (natural log,
[Tq, H], +inf for rows that see no key, whose output is 0). `fq`/`fk` (frame ids) mask keys of a later
frame, and a key block whose earliest frame is later than the query block's latest is skipped whole
(with frames in time order, about half the blocks of a block-causal sequence).
Backward, as FlashAttention-2: delta = rowsum(dO * O) in torch, then ONE kernel per key block that
recomputes P and does 5 matmuls per tile (S = QK^T, dV += P^T dO, dP = dO V^T, dK += dS^T Q, dQ += dS K);
dQ is summed over key blocks with fp32 atomic adds (so its low bits depend on the order of the adds).

Grid: axis 0 = (sequence, block) pairs, axis 1 = heads, so any number of sequences fits (CUDA caps
axes 1 and 2 at 65,535). Programs past the end of a short sequence exit at once.
Precision: fp16/bf16 inputs go through tensor cores with fp32 accumulation. fp32 inputs use exact fp32
products ("ieee") unless torch.backends.cuda.matmul.allow_tf32 is set, when they use TF32 (~1e-3
relative error: outside the FlashAttention tolerance rule our tests use, so not the default).
Head dims: tl.arange and tl.dot need powers of two (>= 16), so a head dim is one power-of-two tile or
two (head_blocks: 80 = 64 + 16, ViT-H's; 96 = 64 + 32; 40 = 32 + 16), each product done per part. What
is left is padded with masked loads: no extra bytes move, but the products do (tiles / Dh) times the
work (24 -> 32: 25%; 40 -> 48: 17%; 88 -> 96: 8%; 64, 80, 128: none). On a GPU no part is narrower than 32
(min_head_tile: 80 = 64 + 32, 40 -> 64), as 16-wide fp16 tiles faulted there.
Tiles: autotuned per (head dim, frames on/off) on a GPU; fixed under the interpreter and when
JEPA_TRITON_AUTOTUNE=0 (tests, reproducible timings).

On CPU this runs under TRITON_INTERPRET=1 (tests use fp32/fp16: bf16 tl.dot is broken in the
interpreter); on a GPU it runs whatever FlashAttention / xformers do not take (kernels/block_attention.py).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
FAR = tl.constexpr(1 << 30)   # a frame id later than any real one (masked key rows), or earlier (masked query rows)


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, CU_Q, CU_K, FQ, FK, H, D, MAX_Q, scale_log2,
                HAS_FRAMES: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr):
    n_blocks = tl.cdiv(MAX_Q, BLOCK_M)
    s, pid_m, h = tl.program_id(0) // n_blocks, tl.program_id(0) % n_blocks, tl.program_id(1)
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
    if BLOCK_D2 > 0:   # the head dim's second part (head_blocks)
        offs_e = BLOCK_D + tl.arange(0, BLOCK_D2)
        e_ok = offs_e < D
        q2 = tl.load(Q + row_q[:, None] * D + offs_e[None, :], mask=m_ok[:, None] & e_ok[None, :], other=0.0)
        acc2 = tl.zeros([BLOCK_M, BLOCK_D2], tl.float32)
    fq_last = FAR
    if HAS_FRAMES:
        fq = tl.load(FQ + q0 + offs_m, mask=m_ok, other=-FAR)
        fq_last = tl.max(fq, 0)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, Lk, BLOCK_N):
        n_idx = start_n + offs_n
        n_ok = n_idx < Lk
        fk_first = -FAR
        if HAS_FRAMES:
            fk = tl.load(FK + k0 + n_idx, mask=n_ok, other=FAR)
            fk_first = tl.min(fk, 0)
        if fk_first <= fq_last:   # else every key of this block is of a later frame than every query
            row_k = (k0 + n_idx) * H + h
            kv_mask = n_ok[:, None] & d_ok[None, :]
            k = tl.load(K + row_k[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
            qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
            if BLOCK_D2 > 0:
                k2 = tl.load(K + row_k[:, None] * D + offs_e[None, :], mask=n_ok[:, None] & e_ok[None, :], other=0.0)
                qk += tl.dot(q2, tl.trans(k2), input_precision=PRECISION)
            qk = qk * scale_log2
            valid = m_ok[:, None] & n_ok[None, :]
            if HAS_FRAMES:
                valid = valid & (fq[:, None] >= fk[None, :])
            qk = tl.where(valid, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)   # a row with no key yet: avoid inf - inf
            p = tl.exp2(qk - m_safe[:, None])
            alpha = tl.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + row_k[:, None] * D + offs_d[None, :], mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            if BLOCK_D2 > 0:
                v2 = tl.load(V + row_k[:, None] * D + offs_e[None, :], mask=n_ok[:, None] & e_ok[None, :], other=0.0)
                acc2 = acc2 * alpha[:, None] + tl.dot(p.to(v2.dtype), v2, input_precision=PRECISION)
            m_i = m_new
    seen = l_i > 0.0
    inv_l = 1.0 / tl.where(seen, l_i, 1.0)
    tl.store(O + row_q[:, None] * D + offs_d[None, :], (acc * inv_l[:, None]).to(O.dtype.element_ty),
             mask=m_ok[:, None] & d_ok[None, :])
    if BLOCK_D2 > 0:
        tl.store(O + row_q[:, None] * D + offs_e[None, :], (acc2 * inv_l[:, None]).to(O.dtype.element_ty),
                 mask=m_ok[:, None] & e_ok[None, :])
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) / 1.4426950408889634, float("inf"))
    tl.store(LSE + row_q, lse, mask=m_ok)


@triton.jit
def _bwd_kernel(Q, K, V, DO, LSE, DELTA, DQ, DK, DV, CU_Q, CU_K, FQ, FK, H, D, MAX_K, scale, scale_log2,
                HAS_FRAMES: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_D2: tl.constexpr):
    n_blocks = tl.cdiv(MAX_K, BLOCK_N)
    s, pid_n, h = tl.program_id(0) // n_blocks, tl.program_id(0) % n_blocks, tl.program_id(1)
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
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if BLOCK_D2 > 0:   # the head dim's second part (head_blocks)
        offs_e = BLOCK_D + tl.arange(0, BLOCK_D2)
        e_ok = offs_e < D
        kv_mask2 = n_ok[:, None] & e_ok[None, :]
        k2 = tl.load(K + row_k[:, None] * D + offs_e[None, :], mask=kv_mask2, other=0.0)
        v2 = tl.load(V + row_k[:, None] * D + offs_e[None, :], mask=kv_mask2, other=0.0)
        dk2 = tl.zeros([BLOCK_N, BLOCK_D2], tl.float32)
        dv2 = tl.zeros([BLOCK_N, BLOCK_D2], tl.float32)
    fk_first = -FAR
    if HAS_FRAMES:
        fk = tl.load(FK + k0 + offs_n, mask=n_ok, other=FAR)
        fk_first = tl.min(fk, 0)
    for start_m in range(0, Lq, BLOCK_M):
        m_idx = start_m + offs_m
        m_ok = m_idx < Lq
        fq_last = FAR
        if HAS_FRAMES:
            fq = tl.load(FQ + q0 + m_idx, mask=m_ok, other=-FAR)
            fq_last = tl.max(fq, 0)
        if fk_first <= fq_last:   # else no query of this block sees a key of this block
            row_q = (q0 + m_idx) * H + h
            q_mask = m_ok[:, None] & d_ok[None, :]
            q = tl.load(Q + row_q[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
            do = tl.load(DO + row_q[:, None] * D + offs_d[None, :], mask=q_mask, other=0.0)
            lse2 = tl.load(LSE + row_q, mask=m_ok, other=float("inf")) * 1.4426950408889634
            delta = tl.load(DELTA + row_q, mask=m_ok, other=0.0)
            qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)                                # 1
            if BLOCK_D2 > 0:
                q_mask2 = m_ok[:, None] & e_ok[None, :]
                q2 = tl.load(Q + row_q[:, None] * D + offs_e[None, :], mask=q_mask2, other=0.0)
                do2 = tl.load(DO + row_q[:, None] * D + offs_e[None, :], mask=q_mask2, other=0.0)
                qk += tl.dot(q2, tl.trans(k2), input_precision=PRECISION)
            qk = qk * scale_log2
            valid = m_ok[:, None] & n_ok[None, :]
            if HAS_FRAMES:
                valid = valid & (fq[:, None] >= fk[None, :])
            p = tl.where(valid, tl.exp2(qk - lse2[:, None]), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)              # 2
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)                            # 3
            if BLOCK_D2 > 0:
                dv2 += tl.dot(tl.trans(p.to(do2.dtype)), do2, input_precision=PRECISION)
                dp += tl.dot(do2, tl.trans(v2), input_precision=PRECISION)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)               # 4
            dq = tl.dot(ds.to(k.dtype), k, input_precision=PRECISION) * scale                  # 5
            tl.atomic_add(DQ + row_q[:, None] * D + offs_d[None, :], dq, mask=q_mask)
            if BLOCK_D2 > 0:
                dk2 += tl.dot(tl.trans(ds.to(q2.dtype)), q2, input_precision=PRECISION)
                dq2 = tl.dot(ds.to(k2.dtype), k2, input_precision=PRECISION) * scale
                tl.atomic_add(DQ + row_q[:, None] * D + offs_e[None, :], dq2, mask=q_mask2)
    tl.store(DK + row_k[:, None] * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + row_k[:, None] * D + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kv_mask)
    if BLOCK_D2 > 0:
        tl.store(DK + row_k[:, None] * D + offs_e[None, :], (dk2 * scale).to(DK.dtype.element_ty), mask=kv_mask2)
        tl.store(DV + row_k[:, None] * D + offs_e[None, :], dv2.to(DV.dtype.element_ty), mask=kv_mask2)


def _configs(stages):
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
            for bm, bn, w in ((128, 64, 8), (128, 32, 4), (64, 64, 4), (64, 32, 4), (32, 32, 4)) for st in stages]


_fwd_tuned = triton.autotune(_configs((2, 3)), key=["D", "HAS_FRAMES", "PRECISION"])(_fwd_kernel)
_bwd_tuned = triton.autotune(_configs((1, 2)), key=["D", "HAS_FRAMES", "PRECISION"], reset_to_zero=["DQ"])(_bwd_kernel)


def autotune_on() -> bool:
    return (os.environ.get("TRITON_INTERPRET", "0") != "1"
            and os.environ.get("JEPA_TRITON_AUTOTUNE", "1") not in ("", "0"))


def grid(S: int, max_len: int, H: int, block: int) -> tuple[int, int]:
    """(sequences x blocks of the longest, heads): axis 0 may hold 2^31 - 1 programs, so no sequence cap."""
    return S * triton.cdiv(max_len, block), H


def head_blocks(D: int, min_part: int = 16) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_D2): the head dim as one power-of-two tile, or two when that pads less.
    tl.arange and tl.dot need powers of two >= 16: Dh 80 = 64 + 16 (no padding, where one tile would
    be 128), 40 = 32 + 16 (48 for 64), 96 = 64 + 32; 24 stays 32 (16 + 16 would be the same).
    `min_part` is the narrowest tile allowed (see min_head_tile)."""
    one = max(min_part, triton.next_power_of_2(D))
    first = max(min_part, triton.next_power_of_2(D) // 2)
    if first >= D:
        return one, 0
    second = max(min_part, triton.next_power_of_2(D - first))
    return (first, second) if first + second < one else (one, 0)


def min_head_tile(device) -> int:
    """32 on a GPU, 16 under the interpreter. On an H200 with Triton 3.6, fp16 products with a 16-wide
    head tile in 64x64 blocks (Dh 40 = 32 + 16) ran into an illegal memory access (faults of this kind are
    reported for Triton's Hopper matrix code with narrow tiles); with 32-wide tiles every case ran clean.
    Dh 40 then takes one 64 tile, Dh 80 64 + 32, Dh 16 one 32 tile: extra products, no extra bytes."""
    return 16 if device.type == "cpu" else 32


def _blocks(D: int, block_m, block_n, min_part: int = 16):
    BLOCK_D, BLOCK_D2 = head_blocks(D, min_part)
    big = BLOCK_D + BLOCK_D2 <= 64
    return block_m or (64 if big else 32), block_n or (64 if big else 32), BLOCK_D, BLOCK_D2


def _precision(dtype) -> str:
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


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
    BM, BN, BD, BD2 = _blocks(D, block_m, block_n, min_head_tile(q.device))
    fq, fk, has = _frames(fq, fk, q)
    args = (q, k, v, out, lse, cu_q.contiguous(), cu_k.contiguous(), fq, fk, H, D, max_q, scale * LOG2E)
    if autotune_on() and block_m is None and block_n is None:
        _fwd_tuned[lambda META: grid(S, max_q, H, META["BLOCK_M"])](*args, HAS_FRAMES=has,
                                                                   PRECISION=_precision(q.dtype), BLOCK_D=BD,
                                                                   BLOCK_D2=BD2)
    else:
        _fwd_kernel[grid(S, max_q, H, BM)](*args, HAS_FRAMES=has, PRECISION=_precision(q.dtype), BLOCK_M=BM,
                                           BLOCK_N=BN, BLOCK_D=BD, BLOCK_D2=BD2)
    return out, lse


def block_attention_triton_bwd(dout, q, k, v, out, lse, cu_q, cu_k, max_q: int, max_k: int, scale: float,
                               fq=None, fk=None, block_m=None, block_n=None):
    q, k, v, dout = q.contiguous(), k.contiguous(), v.contiguous(), dout.contiguous()
    Tq, H, D = q.shape
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    dq32 = torch.zeros(q.shape, dtype=acc, device=q.device)   # atomic sums over key blocks
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)   # rows of empty sequences stay 0
    S = cu_q.numel() - 1
    if Tq == 0 or k.shape[0] == 0 or S == 0 or max_k == 0:
        return dq32.to(q.dtype), dk, dv
    delta = (dout.float() * out.float()).sum(-1).contiguous()   # [Tq, H]: rowsum(dO * O)
    BM, BN, BD, BD2 = _blocks(D, block_m, block_n, min_head_tile(q.device))
    fq, fk, has = _frames(fq, fk, q)
    args = (q, k, v, dout, lse.contiguous(), delta, dq32, dk, dv, cu_q.contiguous(), cu_k.contiguous(), fq, fk,
            H, D, max_k, scale, scale * LOG2E)
    if autotune_on() and block_m is None and block_n is None:
        _bwd_tuned[lambda META: grid(S, max_k, H, META["BLOCK_N"])](*args, HAS_FRAMES=has,
                                                                   PRECISION=_precision(q.dtype), BLOCK_D=BD,
                                                                   BLOCK_D2=BD2)
    else:
        _bwd_kernel[grid(S, max_k, H, BN)](*args, HAS_FRAMES=has, PRECISION=_precision(q.dtype), BLOCK_M=BM,
                                           BLOCK_N=BN, BLOCK_D=BD, BLOCK_D2=BD2)
    return dq32.to(q.dtype), dk, dv
