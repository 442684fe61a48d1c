"""The EMA target encoder: target = m * target + (1 - m) * encoder, after each applied optimizer step.

    ema = TargetEMA(model)    # model: a JEPA (.encoder, .target_encoder), or a wrapper holding it in .module
    ema(momentum)             # one fused pass (kernels.ema_) over what this rank holds

One class for every backend, on the tensors this rank holds, with no communication:
- one process, DDP, ZeRO 0-2: whole tensors. Those stages replicate the encoder on every rank, so a
  full fp32 target replica costs 4 B/param and every rank applies the same update to the same values
  (the replicas stay bitwise identical). Sharding the target instead would save 4(1 - 1/W) B/param
  but all-gather it before every target forward: that trade is what ZeRO-3 is for.
- ZeRO-3: both encoders are partitioned by the same engine with the same per-parameter split, so
  rank r's `p.ds_tensor` of the target and of the encoder cover the same elements: the update is
  elementwise on the local shards. (A ds_persist parameter, kept whole on every rank, is updated in
  full too.) The shards are looked up on every call, so the EMA may be built before partitioning.
When each side's tensors are adjacent pieces of one buffer, the update is one call on two flat
tensors; otherwise one multi-tensor call over the lists.

The target is kept in fp32 whatever the training precision: with bf16 (8 bits of mantissa) an
update of (1 - 0.99925) * delta is below half an ulp for most weights and the target stops moving.
"""
from __future__ import annotations

import torch
from torch import nn

import kernels


def _as_flat(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """One 1-D view over `tensors` when they are contiguous, of one dtype, and lie end to end in one
    storage in this order (a flat buffer cut into parameters); else None."""
    if not tensors or not all(t.is_contiguous() and t.dtype == tensors[0].dtype for t in tensors):
        return None
    first = tensors[0]
    start = first.storage_offset()
    offset = start
    for t in tensors:
        if t.untyped_storage().data_ptr() != first.untyped_storage().data_ptr() or t.storage_offset() != offset:
            return None
        offset += t.numel()
    return first.new_empty(0).set_(first.untyped_storage(), start, (offset - start,))


def unwrap(model: nn.Module) -> nn.Module:
    """The JEPA inside DDP / DeepSpeedEngine / Accelerate / Lightning wrappers (they all use `.module`)."""
    while not hasattr(model, "target_encoder") and hasattr(model, "module"):
        model = model.module
    return model


class TargetEMA:
    def __init__(self, model: nn.Module):
        model = unwrap(model)
        src = dict(model.encoder.named_parameters())
        tgt = dict(model.target_encoder.named_parameters())
        if src.keys() != tgt.keys():
            raise ValueError(f"TargetEMA: encoder and target differ in parameters: {sorted(src.keys() ^ tgt.keys())[:8]}")
        for name, p in tgt.items():
            if p.dtype != torch.float32:
                raise TypeError(f"TargetEMA: target parameter {name} is {p.dtype}; the EMA target must be fp32")
            if getattr(p, "ds_numel", p.numel()) != getattr(src[name], "ds_numel", src[name].numel()):
                raise ValueError(f"TargetEMA: {name} differs in size between the target and the encoder")
        self.pairs = [(tgt[n], src[n]) for n in tgt]

    def local_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(targets, sources): what this rank holds of each pair (ZeRO-3: its shards)."""
        targets, sources = [], []
        for t, s in self.pairs:
            if hasattr(t, "ds_tensor") != hasattr(s, "ds_tensor"):
                raise RuntimeError("TargetEMA: target and encoder are not partitioned alike")
            if hasattr(t, "ds_tensor"):
                if t.ds_tensor.shape != s.ds_tensor.shape:
                    raise RuntimeError("TargetEMA: target and encoder shards differ in size")
                targets.append(t.ds_tensor.data)
                sources.append(s.ds_tensor.data)
                if not getattr(t, "ds_persist", False):
                    continue
            targets.append(t.data)
            sources.append(s.data)
        return targets, sources

    @torch.no_grad()
    def __call__(self, momentum) -> None:
        targets, sources = self.local_tensors()
        flat_t, flat_s = _as_flat(targets), _as_flat(sources)
        if flat_t is not None and flat_s is not None:
            kernels.ema_(flat_t, flat_s, momentum)
        else:
            kernels.ema_(targets, sources, momentum)
