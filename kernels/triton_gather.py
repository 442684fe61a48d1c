"""Triton kernels for the token gather / scatter / gather+layer_norm (the GPU fast path).

    y_TD = gather_rows_triton(x_MD, rows_T)
On CPU they run under TRITON_INTERPRET=1 (tests); one program per (row, D-block).
Rows outside [0, M) are masked (never read or written), so a bad index cannot corrupt memory.
These kernels have no tl.dot, and bf16 runs correctly in the interpreter here (tests cover fp32, fp16
and bf16); only tl.dot is broken for bf16 there.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gather_kernel(x_ptr, rows_ptr, y_ptr, M, D, BLOCK_D: tl.constexpr):
    t = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    r = tl.load(rows_ptr + t).to(tl.int64)
    r_v = r + tl.zeros([BLOCK_D], dtype=tl.int64)   # a vector, so the mask is a plain vector of bools
    ok = (offs < D) & (r_v >= 0) & (r_v < M)
    v = tl.load(x_ptr + r * D + offs, mask=ok, other=0.0)
    tl.store(y_ptr + t.to(tl.int64) * D + offs, v, mask=offs < D)


@triton.jit
def _scatter_kernel(y_ptr, rows_ptr, out_ptr, M, D, BLOCK_D: tl.constexpr):
    t = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    r = tl.load(rows_ptr + t).to(tl.int64)
    r_v = r + tl.zeros([BLOCK_D], dtype=tl.int64)   # a vector, so the mask is a plain vector of bools
    ok = (offs < D) & (r_v >= 0) & (r_v < M)
    v = tl.load(y_ptr + t.to(tl.int64) * D + offs, mask=offs < D, other=0.0)
    tl.store(out_ptr + r * D + offs, v, mask=ok)


@triton.jit
def _gather_ln_kernel(x_ptr, rows_ptr, y_ptr, M, D, eps, BLOCK_D: tl.constexpr):
    t = tl.program_id(0)
    offs = tl.arange(0, BLOCK_D)
    r = tl.load(rows_ptr + t).to(tl.int64)
    r_v = r + tl.zeros([BLOCK_D], dtype=tl.int64)   # a vector, so the mask is a plain vector of bools
    ok = (offs < D) & (r_v >= 0) & (r_v < M)
    v = tl.load(x_ptr + r * D + offs, mask=ok, other=0.0).to(tl.float32)
    mean = tl.sum(v, axis=0) / D
    c = tl.where(offs < D, v - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(c * c, axis=0) / D + eps)
    tl.store(y_ptr + t.to(tl.int64) * D + offs, (c * rstd).to(y_ptr.dtype.element_ty), mask=offs < D)


def _block(D: int) -> int:
    return min(1024, triton.next_power_of_2(max(D, 1)))


def gather_rows_triton(x_MD: torch.Tensor, rows_T: torch.Tensor) -> torch.Tensor:
    x_MD = x_MD.contiguous()
    M, D = x_MD.shape
    T = rows_T.shape[0]
    y_TD = x_MD.new_empty(T, D)
    if T and D:
        BLOCK_D = _block(D)
        _gather_kernel[(T, triton.cdiv(D, BLOCK_D))](x_MD, rows_T.contiguous(), y_TD, M, D, BLOCK_D=BLOCK_D)
    return y_TD


def scatter_rows_triton(y_TD: torch.Tensor, rows_T: torch.Tensor, M: int) -> torch.Tensor:
    y_TD = y_TD.contiguous()
    T, D = y_TD.shape
    out_MD = y_TD.new_zeros(M, D)
    if T and D:
        BLOCK_D = _block(D)
        _scatter_kernel[(T, triton.cdiv(D, BLOCK_D))](y_TD, rows_T.contiguous(), out_MD, M, D, BLOCK_D=BLOCK_D)
    return out_MD


def gather_layer_norm_triton(x_MD: torch.Tensor, rows_T: torch.Tensor, eps: float) -> torch.Tensor:
    x_MD = x_MD.contiguous()
    M, D = x_MD.shape
    T = rows_T.shape[0]
    y_TD = x_MD.new_empty(T, D)
    if T and D:
        # one program holds a whole row (D <= 16K covers every ViT width)
        _gather_ln_kernel[(T,)](x_MD, rows_T.contiguous(), y_TD, M, D, float(eps),
                                BLOCK_D=triton.next_power_of_2(D))
    return y_TD
