"""Triton EMA kernel (GPU fast path): t = m*t + (1-m)*s in fp32 math (fp64 for fp64), ONE launch for a whole list.

    ema_triton_(targets, sources, momentum)   # a list of tensors, or one flat buffer each

Multi-tensor apply, as csrc/cuda/ema.cu: the list is cut into CHUNK-element chunks; program c reads
its tensor and offset from a small device table (tensor pointers, chunk -> tensor, chunk -> offset),
built once per distinct list (parameters do not move between steps) and cached. A ViT-L is ~290
tensors: one launch instead of ~290. Momentum is read from a device scalar, so changing it never
recompiles. Runs on CPU under TRITON_INTERPRET=1 (tests); these kernels have no tl.dot, so bf16 is
correct in the interpreter too.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 1 << 16   # elements per program: big enough to amortise the table lookups
BLOCK = 2048      # elements per inner step

_TL = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float64: tl.float64}


@triton.jit
def _ema_kernel(T_PTRS, S_PTRS, NUMEL, CHUNK_TENSOR, CHUNK_START, m_ptr,
                T_DTYPE: tl.constexpr, S_DTYPE: tl.constexpr, ACC: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    i = tl.load(CHUNK_TENSOR + c)
    start = tl.load(CHUNK_START + c)
    n = tl.load(NUMEL + i)
    t_ptr = tl.load(T_PTRS + i).to(tl.pointer_type(T_DTYPE))
    s_ptr = tl.load(S_PTRS + i).to(tl.pointer_type(S_DTYPE))
    m = tl.load(m_ptr).to(ACC)
    for off in range(0, CHUNK, BLOCK):
        offs = start + off + tl.arange(0, BLOCK)
        ok = offs < n
        t = tl.load(t_ptr + offs, mask=ok).to(ACC)
        s = tl.load(s_ptr + offs, mask=ok).to(ACC)
        tl.store(t_ptr + offs, (m * t + (1.0 - m) * s).to(T_DTYPE), mask=ok)


_tables: dict = {}   # (device, pointers, sizes) -> device tables; bounded below


def _table(targets, sources):
    key = (targets[0].device, tuple(t.data_ptr() for t in targets), tuple(s.data_ptr() for s in sources),
           tuple(t.numel() for t in targets))
    tab = _tables.get(key)
    if tab is None:
        if len(_tables) >= 16:   # lists that come and go (tests, benchmarks): keep only recent ones
            _tables.pop(next(iter(_tables)))
        numel = [t.numel() for t in targets]
        chunk_tensor, chunk_start = [], []
        for i, n in enumerate(numel):
            for start in range(0, n, CHUNK):
                chunk_tensor.append(i)
                chunk_start.append(start)
        dev = targets[0].device
        as_dev = lambda xs: torch.tensor(xs, dtype=torch.int64).to(dev)   # noqa: E731
        tab = _tables[key] = (as_dev(key[1]), as_dev(key[2]), as_dev(numel), as_dev(chunk_tensor),
                              as_dev(chunk_start))
    return tab


def ema_triton_(targets, sources, momentum) -> None:
    """One launch per (target dtype, source dtype) group, usually one. Contiguous tensors only."""
    groups: dict = {}
    for t, s in zip(targets, sources):
        if t.numel():
            groups.setdefault((t.dtype, s.dtype), ([], []))
            groups[(t.dtype, s.dtype)][0].append(t)
            groups[(t.dtype, s.dtype)][1].append(s.contiguous())
    if not groups:
        return
    m = momentum.to(device=targets[0].device, dtype=torch.float64).reshape(1)
    for (tdt, sdt), (ts, ss) in groups.items():
        t_ptrs, s_ptrs, numel, chunk_tensor, chunk_start = _table(ts, ss)
        _ema_kernel[(chunk_tensor.numel(),)](t_ptrs, s_ptrs, numel, chunk_tensor, chunk_start, m,
                                             T_DTYPE=_TL[tdt], S_DTYPE=_TL[sdt],
                                             ACC=tl.float64 if tdt == torch.float64 else tl.float32, CHUNK=CHUNK, BLOCK=BLOCK)
