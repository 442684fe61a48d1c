"""Schedules equal the reference's stateful schedulers, step for step."""
import dataclasses
import math

import pytest
import torch

from engine.config import load_config
from engine.core.schedules import Schedules, apply_to_optimizer


class _RefWarmupCosine:
    """The reference WarmupCosineSchedule's arithmetic, stepped as the reference steps it."""

    def __init__(self, warmup_steps, start_lr, ref_lr, T_max, final_lr):
        self.w, self.s, self.r, self.T, self.f, self._step = warmup_steps, start_lr, ref_lr, T_max - warmup_steps, final_lr, 0

    def step(self):
        self._step += 1
        if self._step < self.w:
            return self.s + (self._step / max(1, self.w)) * (self.r - self.s)
        p = (self._step - self.w) / max(1, self.T)
        return max(self.f, self.f + (self.r - self.f) * 0.5 * (1 + math.cos(math.pi * p)))


def test_lr_wd_momentum_match_reference_rules():
    cfg = load_config("configs/vjepa_vitl16.yaml")
    o = cfg.optimization
    s = Schedules.from_config(o, ipe=o.ipe)
    total = int(o.ipe_scale * o.epochs * o.ipe)
    assert s.total_steps == total == 112500 and s.warmup_steps == 40 * 300
    ref = _RefWarmupCosine(12000, o.start_lr, o.lr, total, o.final_lr)
    values = [ref.step() for _ in range(total)]
    for i in (0, 1, 5999, 11998, 11999, 12000, 50000, total - 1):
        assert s.lr(i) == pytest.approx(values[i], rel=1e-12)
    assert s.lr(0) == pytest.approx(o.start_lr + (o.lr - o.start_lr) / 12000)
    assert s.lr(11999) == pytest.approx(o.lr)        # end of warm-up: the peak
    # cosine WD from 0.04 up to 0.4 (the V-JEPA direction), clamped at the end
    assert s.wd(total - 1) == pytest.approx(0.4) and s.wd(0) == pytest.approx(0.04, abs=1e-6)
    assert s.wd(total // 2 - 1) == pytest.approx(0.22, abs=1e-6)
    # EMA ramp: ema0 + i * (ema1 - ema0) / total
    assert s.momentum(0) == 0.998 and s.momentum(total) == pytest.approx(1.0)
    assert s.momentum(1000) == pytest.approx(0.998 + 1000 * 0.002 / total)


def test_constant_ema_vjepa2_and_anneal_linear():
    cfg = load_config("configs/vjepa2_vitl16.yaml")
    s = Schedules.from_config(cfg.optimization, ipe=300)
    assert s.momentum(0) == s.momentum(5000) == 0.99925
    # the cool-down's schedule (the config refuses is_anneal until a cooldown can start from anneal_ckpt)
    opt = dataclasses.replace(cfg.optimization, is_anneal=True, anneal_ckpt="x.pt", final_lr=0.0)
    s = Schedules.from_config(opt, ipe=8)  # 1.25 * 10 * 8 = 100 steps
    assert s.lr(s.total_steps - 1) == pytest.approx(0.0, abs=1e-12)
    assert s.lr(s.total_steps // 2 - 1) == pytest.approx(opt.lr / 2)


def test_apply_to_optimizer_skips_excluded_groups():
    a, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b], "WD_exclude": True, "weight_decay": 0.0}])
    apply_to_optimizer(opt, lr=0.1, wd=0.3)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.0]


def test_wsd_schedule_with_anneal_epochs():
    """optimization.anneal (V-JEPA 2-AC): the reference's WSDSchedule, stepped as the reference steps it:
    linear warm-up, the peak lr, then a linear decay to final_lr over the last anneal epochs."""
    cfg = load_config("configs/tiny_cpu.yaml", ["optimization.epochs=10", "optimization.warmup=2",
                                                "optimization.anneal=3", "optimization.start_lr=0.1",
                                                "optimization.lr=1.0", "optimization.final_lr=0.0"])
    s = Schedules.from_config(cfg.optimization, ipe=10)   # 100 steps: 20 warm-up, 50 stable, 30 decay
    warmup, anneal, total = 20, 30, 100
    for i in range(total):
        step = i + 1
        if step < warmup:
            want = 0.1 + step / warmup * 0.9
        elif step < total - anneal:
            want = 1.0
        else:
            want = 1.0 - (step - (total - anneal)) / anneal
        assert s.lr(i) == pytest.approx(want, abs=1e-12), i
