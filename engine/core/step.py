"""What both step backends share: the AdamW groups, gradient norms with clipping, autocast.

    groups = param_groups([model.encoder, model.predictor])   # no weight decay on biases and 1-D params
    optimizer = adamw(groups, betas=(0.9, 0.999), eps=1e-8)   # one fused kernel where the device has it
    norm = grad_norm(module.parameters(), clip)               # one module's norm; clipped to `clip` when given
    with autocast(cfg.dtype, device): loss, info = model(clips, masks)
"""
from __future__ import annotations

import contextlib
import functools
import time
import warnings

import torch


def param_groups(named_modules, zero_init_bias_wd: bool = True) -> list[dict]:
    """AdamW groups as the reference: no weight decay on biases and 1-D parameters."""
    groups = []
    for module in named_modules:
        decay = [p for n, p in module.named_parameters() if p.requires_grad and "bias" not in n and p.ndim != 1]
        no_decay = [p for n, p in module.named_parameters() if p.requires_grad and ("bias" in n or p.ndim == 1)]
        groups.append({"params": decay})
        groups.append({"params": no_decay, "WD_exclude": zero_init_bias_wd, "weight_decay": 0.0})
    return groups


def adamw(groups, **kwargs) -> torch.optim.AdamW:
    """torch's AdamW, fused (one kernel over all parameters) when every parameter sits on a CPU or CUDA
    device: the same update as the per-parameter loop up to float rounding, without its handful of
    elementwise passes and dispatches per parameter, which dominate for the many small tensors of a ViT."""
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, fused=fused or None, **kwargs)


def grad_norm(parameters, clip: float | None = None) -> float:
    """The global L2 norm of the parameters' gradients; with `clip`, they are then scaled to at most it
    (what clip_grad_norm_ does, with the norm computed whether or not it clips)."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if clip is not None:   # scales each p.grad (it takes the parameters, not the grads)
        torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
    return float(norm)


def autocast(dtype: torch.dtype, device: torch.device):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype == torch.bfloat16 and device.type == "cpu":
        warn_if_slow_cpu_bf16()
    return torch.autocast(device_type=device.type, dtype=dtype)


@functools.lru_cache(maxsize=None)
def cpu_gemm_ms() -> tuple[float, float]:
    """Best-of-5 ms of one 2048x192x768 GEMM (a ViT-tiny MLP's) in float32 and in bfloat16 on this CPU, on
    one thread and timed in that thread's CPU time: at the first training step a loader worker shares
    the cores, and a multi-threaded GEMM then waits for its preempted threads (both dtypes measured
    ~8 ms that way, against 3.0 and 0.37 ms on idle cores)."""
    a, b = torch.randn(2048, 192), torch.randn(192, 768)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = []
        for x, y in ((a, b), (a.bfloat16(), b.bfloat16())):
            x @ y
            times = []
            for _ in range(5):
                t0 = time.thread_time()
                x @ y
                times.append(time.thread_time() - t0)
            out.append(min(times) * 1e3)
    finally:
        torch.set_num_threads(threads)
    return out[0], out[1]


@functools.lru_cache(maxsize=None)
def warn_if_slow_cpu_bf16() -> None:
    """bf16 on CPU is only as fast as oneDNN's bf16 GEMM on the CPU at hand: on some CPUs and builds it
    is several times faster than fp32, on others several times slower (same torch wheel). Measured
    once per process, warned once."""
    fp32, bf16 = cpu_gemm_ms()
    if bf16 > fp32:
        warnings.warn(f"meta.dtype: bfloat16 on this CPU runs torch's GEMMs {bf16 / fp32:.1f}x slower than "
                      f"float32 ({bf16:.1f} vs {fp32:.1f} ms for 2048x192x768): this CPU/build has no fast bf16 "
                      f"path in oneDNN, so a bf16 step is slower here; use meta.dtype: float32 on this machine",
                      stacklevel=2)
