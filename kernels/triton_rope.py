"""Triton kernel for kernels.rope_qk (the GPU fast path): one program per token row turns every head of
q and of k; on CPU it runs under TRITON_INTERPRET=1 (tests).

    qo, ko = rope_qk_triton(q_MHD, k_MHD, cos_McR, sin_McR, transpose)

Each element reads its pair partner (index ^ 1) beside itself, so a row is two loads of q, two of k, one
of each table row, and one store each; fp32 math, rounded once to the input dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _turn_row(x_ptr, o_ptr, row, head, m, H, Dh, h, d, partner, inside, turned, c, s, sign):
    base = x_ptr + m * row + h * head
    x = tl.load(base + d, mask=inside, other=0.0).to(tl.float32)
    xp = tl.load(base + partner, mask=inside & turned, other=0.0).to(tl.float32)
    y = tl.where(turned, x * c + (sign * xp) * s, x)
    tl.store(o_ptr + (m * H + h) * Dh + d, y.to(o_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, qo_ptr, ko_ptr, cos_ptr, sin_ptr, H, Dh, R, Mc,
                 q_row, q_head, k_row, k_head, TRANSPOSE: tl.constexpr, BLOCK_H: tl.constexpr,
                 BLOCK_D: tl.constexpr):
    m = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    partner = d ^ 1
    inside = (h < H) & (d < Dh)
    turned = d < R
    t = (m % Mc) * R
    c = tl.load(cos_ptr + t + d, mask=turned, other=1.0)
    if TRANSPOSE:   # y_e = x_e c_e + x_o s_o, y_o = x_o c_o - x_e s_e: the partner's sine, signs swapped
        s = tl.load(sin_ptr + t + partner, mask=turned, other=0.0)
        sign = tl.where((d & 1) == 0, 1.0, -1.0)
    else:           # y_e = x_e c_e - x_o s_e, y_o = x_o c_o + x_e s_o
        s = tl.load(sin_ptr + t + d, mask=turned, other=0.0)
        sign = tl.where((d & 1) == 0, -1.0, 1.0)
    _turn_row(q_ptr, qo_ptr, q_row, q_head, m, H, Dh, h, d, partner, inside, turned, c, s, sign)
    _turn_row(k_ptr, ko_ptr, k_row, k_head, m, H, Dh, h, d, partner, inside, turned, c, s, sign)


def rope_qk_triton(q, k, cos, sin, transpose: bool):
    M, H, Dh = q.shape
    qo, ko = q.new_empty(M, H, Dh), k.new_empty(M, H, Dh)
    if M and H and Dh:
        _rope_kernel[(M,)](q, k, qo, ko, cos, sin, H, Dh, cos.shape[1], cos.shape[0],
                           q.stride(0), q.stride(1), k.stride(0), k.stride(1), TRANSPOSE=bool(transpose),
                           BLOCK_H=triton.next_power_of_2(H), BLOCK_D=triton.next_power_of_2(Dh))
    return qo, ko
