"""Per-iteration schedules, as pure functions of the optimizer step (so a resumed run needs no state).

The reference schedulers are stateful objects whose `.step()` is called before each training
iteration; iteration i (0-based) therefore uses their value at `_step = i + 1`. These functions
take the 0-based iteration and return exactly that value:

    sched = Schedules.from_config(cfg.optimization, ipe)
    lr, wd, m = sched.lr(i), sched.wd(i), sched.momentum(i)
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Schedules:
    start_lr: float
    lr_ref: float
    final_lr: float
    warmup_steps: int
    total_steps: int          # int(ipe_scale * epochs * ipe): the schedules' length
    wd_ref: float
    final_wd: float
    ema_start: float
    ema_end: float
    linear_decay: bool = False   # V-JEPA 2 cool-down (is_anneal): LinearDecaySchedule
    anneal_steps: int | None = None   # V-JEPA 2-AC (optimization.anneal epochs): WSDSchedule, else cosine

    @classmethod
    def from_config(cls, opt, ipe: int) -> "Schedules":
        total = int(opt.ipe_scale * opt.epochs * ipe)
        return cls(start_lr=opt.start_lr, lr_ref=opt.lr, final_lr=opt.final_lr,
                   warmup_steps=int(opt.warmup * ipe), total_steps=max(total, 1),
                   wd_ref=opt.weight_decay, final_wd=opt.final_weight_decay,
                   ema_start=opt.ema[0], ema_end=opt.ema[1], linear_decay=opt.is_anneal,
                   anneal_steps=None if opt.anneal is None else int(opt.anneal * ipe))

    def lr(self, i: int) -> float:
        """WarmupCosineSchedule (LinearDecaySchedule when annealing, WSDSchedule with anneal_steps) at i."""
        step = i + 1
        if self.linear_decay:
            progress = step / max(1, self.total_steps)
            return self.lr_ref + progress * (self.final_lr - self.lr_ref)
        if step < self.warmup_steps:
            progress = step / max(1, self.warmup_steps)
            return self.start_lr + progress * (self.lr_ref - self.start_lr)
        if self.anneal_steps is not None:   # warm-up, stable, then a linear decay over the last anneal_steps
            decay_from = self.total_steps - self.anneal_steps
            if step < decay_from:
                return self.lr_ref
            return self.lr_ref + (step - decay_from) / max(1, self.anneal_steps) * (self.final_lr - self.lr_ref)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return max(self.final_lr,
                   self.final_lr + (self.lr_ref - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    def wd(self, i: int) -> float:
        """CosineWDSchedule at iteration i (clamped at the final value, either direction)."""
        progress = (i + 1) / self.total_steps
        wd = self.final_wd + (self.wd_ref - self.final_wd) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(self.final_wd, wd) if self.final_wd <= self.wd_ref else min(self.final_wd, wd)

    def momentum(self, i: int) -> float:
        """The reference's linear EMA ramp: ema0 + i * (ema1 - ema0) / total (constant when equal)."""
        i = min(i, self.total_steps)
        return self.ema_start + i * (self.ema_end - self.ema_start) / self.total_steps


def apply_to_optimizer(optimizer, lr: float, wd: float) -> None:
    """Set lr on every group and wd on groups not excluded from weight decay (biases, 1-D params)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if not group.get("WD_exclude", False):
            group["weight_decay"] = wd
