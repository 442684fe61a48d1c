"""Train a JEPA from a plain PyTorch loop with the public engine API: no Trainer, no framework.

    python examples/plain_loop.py --config configs/tiny_cpu.yaml --steps 20

The whole recipe is five calls: engine.build_model, engine.param_groups, engine.set_lr_wd,
engine.jepa_loss and the engine.TargetEMA callable (after each optimizer step). Under DDP wrap `model`
(the loss call goes through the wrapper) and build the EMA on engine.unwrap(model). Only names of
`engine.__all__` are used (the public API).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import engine  # noqa: E402


def default_loader(cfg):
    return engine.make_loader(engine.build_dataset(cfg), batch_size=cfg.data.batch_size, seed=cfg.meta.seed,
                              mask_sampler=engine.build_mask_sampler(cfg), num_workers=cfg.data.num_workers)


def train(cfg, steps: int, model=None, loader=None, progress: bool = False) -> list[float]:
    """`steps` optimizer steps; returns the losses. model/loader default to the config's; progress: a tqdm bar."""
    torch.manual_seed(cfg.meta.seed)
    model = model if model is not None else engine.build_model(cfg)
    loader = loader if loader is not None else default_loader(cfg)
    o = cfg.optimization
    opt = torch.optim.AdamW(engine.param_groups(model), lr=0.0, betas=tuple(o.betas), eps=o.eps)
    ema = engine.TargetEMA(model)
    sched = engine.schedules(cfg, o.ipe or len(loader))
    losses = []
    bar = tqdm(total=steps, desc="train", unit="step", disable=not progress)
    for i, batch in zip(range(steps), loader):
        engine.set_lr_wd(opt, sched, i)
        loss, _info = engine.jepa_loss(model, batch, dtype=cfg.dtype)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema(sched.momentum(i))          # after the step, once per optimizer step
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    return losses


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/tiny_cpu.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args(argv)
    losses = train(engine.load_config(a.config, a.overrides), a.steps, progress=True)
    print(f"{len(losses)} steps: loss {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    main()
