"""Train a JEPA from a plain PyTorch loop with engine.api: no engine Trainer, no framework.

    python examples/plain_loop.py --config configs/tiny_cpu.yaml --steps 20

The whole recipe is five calls: api.build_model, api.param_groups, api.set_lr_wd, api.jepa_loss and
the api.TargetEMA callable (after each optimizer step). Under DDP wrap `model` (the loss call goes
through the wrapper) and build the EMA on api.unwrap(model).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine import api  # noqa: E402


def default_loader(cfg):
    from engine.builders import build_dataset, build_mask_sampler
    from engine.data.loader import make_loader
    return make_loader(build_dataset(cfg), batch_size=cfg.data.batch_size, seed=cfg.meta.seed,
                       mask_sampler=build_mask_sampler(cfg), num_workers=cfg.data.num_workers)


def train(cfg, steps: int, model=None, loader=None) -> list[float]:
    """`steps` optimizer steps; returns the losses. model/loader default to the config's."""
    torch.manual_seed(cfg.meta.seed)
    model = model if model is not None else api.build_model(cfg)
    loader = loader if loader is not None else default_loader(cfg)
    o = cfg.optimization
    opt = torch.optim.AdamW(api.param_groups(model), lr=0.0, betas=tuple(o.betas), eps=o.eps)
    ema = api.TargetEMA(model)
    sched = api.schedules(cfg, o.ipe or len(loader))
    losses = []
    for i, batch in zip(range(steps), loader):
        api.set_lr_wd(opt, sched, i)
        loss, _info = api.jepa_loss(model, batch, dtype=cfg.dtype)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema(sched.momentum(i))          # after the step, once per optimizer step
        losses.append(loss.item())
    return losses


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/tiny_cpu.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args(argv)
    from engine.config import load_config
    losses = train(load_config(a.config, a.overrides), a.steps)
    print(f"{len(losses)} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
