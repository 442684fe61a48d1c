"""The EMA target encoder: target = m * target + (1 - m) * encoder, after each applied optimizer step.

    ema = TargetEMA(encoder, target_encoder)
    ema(momentum)             # one fused pass (kernels.ema_) over all parameters

The target is kept in fp32 whatever the training precision: with bf16 (8 bits of mantissa) an
update of (1 - 0.99925) * delta is below half an ulp for most weights and the target stops moving.
"""
from __future__ import annotations

import torch
from torch import nn

import kernels


class TargetEMA:
    def __init__(self, encoder: nn.Module, target_encoder: nn.Module):
        src = dict(encoder.named_parameters())
        tgt = dict(target_encoder.named_parameters())
        if src.keys() != tgt.keys():
            missing = sorted(src.keys() ^ tgt.keys())
            raise ValueError(f"TargetEMA: encoder and target differ in parameters: {missing[:8]}")
        for name, p in tgt.items():
            if p.dtype != torch.float32:
                raise TypeError(f"TargetEMA: target parameter {name} is {p.dtype}; the EMA target must be fp32")
            if src[name].shape != p.shape:
                raise ValueError(f"TargetEMA: {name} has shape {tuple(p.shape)} in the target, "
                                 f"{tuple(src[name].shape)} in the encoder")
        self.names = list(tgt)
        self.targets = [tgt[n] for n in self.names]
        self.sources = [src[n] for n in self.names]

    @torch.no_grad()
    def __call__(self, momentum) -> None:
        kernels.ema_([t.data for t in self.targets], [s.data for s in self.sources], momentum)
