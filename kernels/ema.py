"""EMA update of a target network: target = m * target + (1 - m) * source, in place.

    kernels.ema_(target_params, source_params, momentum)   # lists of tensors (or flat buffers)

Targets stay fp32 (a bf16 EMA stops moving at m = 0.99925); sources may be fp32 or bf16.
`momentum` may be a float or a 0-D tensor (so a compiled step does not recompile as it changes).
"""
from __future__ import annotations

import torch


def _check_lists(targets, sources):
    if len(targets) != len(sources):
        raise ValueError(f"ema_: {len(targets)} targets but {len(sources)} sources")
    for i, (t, s) in enumerate(zip(targets, sources)):
        if t.shape != s.shape:
            raise ValueError(f"ema_: target {i} has shape {tuple(t.shape)}, source {tuple(s.shape)}")
        if not t.is_floating_point() or not s.is_floating_point():
            raise TypeError(f"ema_: tensor {i} is not floating point ({t.dtype}, {s.dtype})")


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


def ema_(targets, sources, momentum) -> None:
    ema_ref(targets, sources, momentum)
