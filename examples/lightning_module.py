"""A LightningModule around the public engine API: the JEPA step, the AdamW groups, the schedules and the EMA.

    python examples/lightning_module.py --config configs/tiny_cpu.yaml --steps 20
    # many GPUs, ZeRO-3 (the EMA then runs on each rank's shards, with no communication):
    #   from lightning.pytorch.strategies import DeepSpeedStrategy
    #   module = JEPAModule(cfg, ipe, model=engine.prepare_for_zero3(engine.build_model(cfg)))
    #   L.Trainer(accelerator="gpu", devices=8, strategy=DeepSpeedStrategy(stage=3), precision="bf16-mixed")

lr/wd are set and the EMA is applied in `optimizer_step`, which Lightning calls once per optimizer step
(after accumulation), so both follow the optimizer step index, as in the engine's own trainers.
(Lightning's DeepSpeed strategy needs CUDA; on CPU this runs with the default strategy.)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import engine  # noqa: E402


class JEPAModule(L.LightningModule):
    def __init__(self, cfg, ipe: int, model=None):
        super().__init__()
        self.cfg = cfg
        self.model = model if model is not None else engine.build_model(cfg)
        self.sched = engine.schedules(cfg, ipe)
        self.ema = None
        self.losses: list[float] = []

    def configure_optimizers(self):
        o = self.cfg.optimization
        return torch.optim.AdamW(engine.param_groups(self.model), lr=0.0, betas=tuple(o.betas), eps=o.eps)

    def training_step(self, batch, batch_idx):
        loss, info = engine.jepa_loss(self.model, batch, dtype=self.cfg.dtype)
        self.log("loss", loss, prog_bar=True)
        self.losses.append(loss.item())
        return loss

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        i = self.global_step                       # optimizer steps done so far
        engine.set_lr_wd(optimizer, self.sched, i)
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.ema is None:                       # after any strategy has partitioned the model
            self.ema = engine.TargetEMA(self.model)
        self.ema(self.sched.momentum(i))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/tiny_cpu.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from plain_loop import default_loader
    cfg = engine.load_config(a.config, a.overrides)
    loader = default_loader(cfg)
    module = JEPAModule(cfg, cfg.optimization.ipe or len(loader))
    L.Trainer(accelerator="cpu", devices=1, max_steps=a.steps, logger=False, enable_checkpointing=False).fit(
        module, train_dataloaders=loader)
    print(f"{len(module.losses)} steps: loss {module.losses[0]:.4f} -> {module.losses[-1]:.4f}")


if __name__ == "__main__":
    main()
