"""Triton EMA kernel (GPU fast path): t = m*t + (1-m)*s, fp32 math, any float source dtype.

    ema_triton_(targets, sources, momentum)   # one launch per tensor; FlatEMA makes it one launch
Momentum is read from a 0-D tensor inside the kernel, so changing it never recompiles.
Runs on CPU under TRITON_INTERPRET=1 (tests).
These kernels have no tl.dot, and bf16 runs correctly in the interpreter here (tests cover fp32, fp16
and bf16); only tl.dot is broken for bf16 there.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _ema_kernel(t_ptr, s_ptr, m_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    m = tl.load(m_ptr).to(tl.float32)
    t = tl.load(t_ptr + offs, mask=mask)
    s = tl.load(s_ptr + offs, mask=mask).to(tl.float32)
    out = m * t.to(tl.float32) + (1.0 - m) * s
    tl.store(t_ptr + offs, out.to(t.dtype), mask=mask)


def ema_triton_(targets, sources, momentum, BLOCK: int = 4096) -> None:
    m = momentum.to(device=targets[0].device, dtype=torch.float32).reshape(1)
    for t, s in zip(targets, sources):
        n = t.numel()
        if n:
            _ema_kernel[(triton.cdiv(n, BLOCK),)](t, s.contiguous(), m, n, BLOCK=BLOCK)
