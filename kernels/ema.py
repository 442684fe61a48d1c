"""EMA update of a target network: target = m * target + (1 - m) * source, in place.

    kernels.ema_(target_params, source_params, momentum)   # lists of tensors
    kernels.ema_(flat_target, flat_source, momentum)       # or one flat buffer each: one pass

Targets stay fp32 (a bf16 EMA stops moving at m = 0.99925); sources may be fp32 or bf16 (or fp16).
`momentum` may be a float or a 0-D tensor (so a compiled step does not recompile as it changes).
momentum must be in [0, 1] (checked when it is a number or a CPU tensor; a device tensor is not read,
as that would sync). Backends (kernels/_registry.py): cpp (one parallel pass over all tensors, chunked),
cuda (multi-tensor apply, preferred on CUDA: each launch takes 320 chunks of 64K elements from any
number of tensors, so a ViT-L is ~15 bandwidth-bound launches, never one per tensor), triton
(multi-tensor apply with the chunk table on the device: one launch), torch (the reference loop).
Each is one pass over the data.
"""
from __future__ import annotations

import torch

from kernels import _ops, _registry


def _check_lists(targets, sources):
    if len(targets) != len(sources):
        raise ValueError(f"ema_: {len(targets)} targets but {len(sources)} sources")
    for i, (t, s) in enumerate(zip(targets, sources)):
        if t.shape != s.shape:
            raise ValueError(f"ema_: target {i} has shape {tuple(t.shape)}, source {tuple(s.shape)}")
        if not t.is_floating_point() or not s.is_floating_point():
            raise TypeError(f"ema_: tensor {i} is not floating point ({t.dtype}, {s.dtype})")
        if t.device != s.device:
            raise ValueError(f"ema_: tensor {i}: target on {t.device}, source on {s.device}")


@torch.no_grad()
def ema_ref(targets, sources, momentum) -> None:
    """Plain-torch definition (the V-JEPA reference's per-parameter loop).

    Equivalent pytorch code::

        for t, s in zip(targets, sources):
            t.mul_(m).add_((1 - m) * s)
    """
    if isinstance(targets, torch.Tensor):
        targets, sources = [targets], [sources]
    _check_lists(targets, sources)
    m = float(momentum)
    for t, s in zip(targets, sources):
        t.mul_(m).add_(s.to(t.dtype), alpha=1.0 - m)


_PAIRS = {(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.float32, torch.float16),
          (torch.float64, torch.float64)}


def _ema_cpp(targets, sources, momentum):
    torch.ops.jepa_cpp.ema_(targets, [s.contiguous() for s in sources], momentum.cpu())


def _ema_cuda(targets, sources, momentum):
    torch.ops.jepa_cuda.ema_(targets, [s.contiguous() for s in sources], momentum)


def _ema_triton(targets, sources, momentum):
    from kernels.triton_ema import ema_triton_
    ema_triton_(targets, sources, momentum)


def _no_fp64(fp64: bool):
    return "the CUDA kernel takes fp32 targets only" if fp64 else None


_registry.register("ema_", "torch", ema_ref)
_registry.register("ema_", "cpp", _ema_cpp, **_registry.CPP)
_registry.register("ema_", "cuda", _ema_cuda, **_registry.CUDA, fits=_no_fp64)
_registry.register("ema_", "triton", _ema_triton, **_registry.TRITON)


@torch.library.custom_op("jepa::ema_", mutates_args=("targets",))
def _ema_op(targets: list[torch.Tensor], sources: list[torch.Tensor], momentum: torch.Tensor) -> None:
    if targets:
        impl = _registry.pick("ema_", targets[0].device, fp64=targets[0].dtype == torch.float64)
        impl.fn(targets, sources, momentum)


@_ema_op.register_fake
def _(targets, sources, momentum):
    return None


def _check_momentum(momentum) -> torch.Tensor:
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, torch.Tensor)):
        raise TypeError(f"ema_: momentum must be a float or a 0-D tensor, got {type(momentum).__name__}")
    if not isinstance(momentum, torch.Tensor):
        momentum = torch.tensor(float(momentum), dtype=torch.float64)
    if momentum.numel() != 1:
        raise ValueError(f"ema_: momentum must be a scalar, got shape {tuple(momentum.shape)}")
    if momentum.device.type == "cpu" and not torch.compiler.is_compiling():
        m = float(momentum)
        if not 0.0 <= m <= 1.0:   # also catches NaN
            raise ValueError(f"ema_: momentum must be in [0, 1], got {m}")
    return momentum


def ema_(targets, sources, momentum) -> None:
    """In place: t = m * t + (1 - m) * s for each (t, s); two lists, or two single (flat) tensors.

    Lists must match in length, shapes and device; targets must be contiguous (parameters and flat
    buffers are), fp32 with fp32/bf16/fp16 sources (or fp64 with fp64); 0 <= momentum <= 1."""
    if isinstance(targets, torch.Tensor) != isinstance(sources, torch.Tensor):
        raise TypeError(f"ema_: targets and sources must both be tensors or both be lists of tensors, got "
                        f"{type(targets).__name__} and {type(sources).__name__}")
    if isinstance(targets, torch.Tensor):
        targets, sources = [targets], [sources]
    targets, sources = list(targets), list(sources)
    for i, x in enumerate(targets + sources):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"ema_: every target and source must be a tensor, got {type(x).__name__} "
                            f"at position {i % max(len(targets), 1)}")
    _check_lists(targets, sources)
    momentum = _check_momentum(momentum)
    for i, (t, s) in enumerate(zip(targets, sources)):
        if (t.dtype, s.dtype) not in _PAIRS:
            raise TypeError(f"ema_: tensor {i}: target {t.dtype} with source {s.dtype} is not supported "
                            f"(fp32 targets with fp32/bf16/fp16 sources, or fp64 with fp64)")
        if not t.is_contiguous():
            raise ValueError(f"ema_: target {i} is not contiguous")
    with torch.no_grad():
        _ema_op(targets, sources, momentum)
