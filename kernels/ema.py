"""EMA update of a target network: target = m * target + (1 - m) * source, in place.

    kernels.ema_(target_params, source_params, momentum)   # lists of tensors (or flat buffers)
    flat = kernels.FlatEMA(target_module, source_module)   # target params become views of one buffer
    flat(momentum)                                         # one kernel pass over one flat buffer

Targets stay fp32 (a bf16 EMA stops moving at m = 0.99925); sources may be fp32 or bf16 (or fp16).
`momentum` may be a float or a 0-D tensor (so a compiled step does not recompile as it changes).
Backends: cpp (one parallel pass over all tensors, chunked), triton (one launch per tensor: use
FlatEMA for one launch), cuda (multi-tensor-apply: one launch for the whole list), torch (the loop).
"""
from __future__ import annotations

import torch
from torch import nn

from kernels import _ops


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


_CPP_PAIRS = {(torch.float32, torch.float32), (torch.float32, torch.bfloat16), (torch.float32, torch.float16),
              (torch.float64, torch.float64)}


@torch.library.custom_op("jepa::ema_", mutates_args=("targets",))
def _ema_op(targets: list[torch.Tensor], sources: list[torch.Tensor], momentum: torch.Tensor) -> None:
    if not targets:
        return
    b = _ops.pick(targets[0].device, "ema_")
    if b == "cpp":
        _ops.require_cpp("ema_")
        torch.ops.jepa_cpp.ema_(targets, [s.contiguous() for s in sources], momentum.cpu())
    elif b == "triton":
        from kernels.triton_ema import ema_triton_
        ema_triton_(targets, sources, momentum)
    elif b == "cuda":
        _ops.require_cuda("ema_")
        torch.ops.jepa_cuda.ema_(targets, [s.contiguous() for s in sources], momentum)
    else:
        ema_ref(targets, sources, momentum)


@_ema_op.register_fake
def _(targets, sources, momentum):
    return None


def ema_(targets, sources, momentum) -> None:
    """In place: t = m * t + (1 - m) * s for each (t, s); lists or single (flat) tensors.

    Lists must match in length, shapes and device; the cpp/cuda kernels need contiguous targets
    (parameters are) and fp32 targets with fp32/bf16/fp16 sources (or fp64 with fp64)."""
    if isinstance(targets, torch.Tensor):
        targets, sources = [targets], [sources]
    targets, sources = list(targets), list(sources)
    _check_lists(targets, sources)
    if not isinstance(momentum, torch.Tensor):
        momentum = torch.tensor(float(momentum), dtype=torch.float64)
    if momentum.numel() != 1:
        raise ValueError(f"ema_: momentum must be a scalar, got shape {tuple(momentum.shape)}")
    for i, (t, s) in enumerate(zip(targets, sources)):
        if (t.dtype, s.dtype) not in _CPP_PAIRS:
            raise TypeError(f"ema_: tensor {i}: target {t.dtype} with source {s.dtype} is not supported "
                            f"(fp32 targets with fp32/bf16/fp16 sources, or fp64 with fp64)")
        if not t.is_contiguous():
            raise ValueError(f"ema_: target {i} is not contiguous")
    with torch.no_grad():
        _ema_op(targets, sources, momentum)


class FlatEMA:
    """Packs a target module's parameters into ONE flat fp32 buffer (params become views of it), so
    the EMA is a single pass over one buffer when the source is flat too (`flatten_source=True`,
    call before building the optimizer), or one multi-tensor pass otherwise.

        ema = FlatEMA(target_encoder, encoder, flatten_source=True)
        ema(0.996)
    """

    def __init__(self, target: nn.Module, source: nn.Module, flatten_source: bool = False):
        tp, sp = list(target.parameters()), list(source.parameters())
        _check_lists([p.data for p in tp], [p.data for p in sp])
        self.flat_target = self._flatten(tp, torch.float32)
        self.flat_source = self._flatten(sp, sp[0].dtype if sp else torch.float32) if flatten_source else None
        self.sources = [p.data for p in sp] if not flatten_source else None
        self.target_views = [p.data for p in tp]

    @staticmethod
    def _flatten(params, dtype):
        n = sum(p.numel() for p in params)
        dev = params[0].device if params else "cpu"
        flat = torch.empty(n, dtype=dtype, device=dev)
        off = 0
        for p in params:
            k = p.numel()
            flat[off:off + k].copy_(p.data.reshape(-1))
            p.data = flat[off:off + k].view_as(p.data)   # the parameter now lives in the buffer
            off += k
        return flat

    @torch.no_grad()
    def __call__(self, momentum) -> None:
        if self.flat_source is not None:
            ema_(self.flat_target, self.flat_source, momentum)
        else:
            ema_(self.target_views, self.sources, momentum)
