"""Train a JEPA with HF Accelerate around the public engine API: prepare, accelerator.backward, the EMA on the unwrapped model.

    python examples/accelerate_loop.py --config configs/tiny_cpu.yaml --steps 20
    accelerate launch --num_processes 2 examples/accelerate_loop.py --config ...     # DDP
    # ZeRO-3 (GPUs): accelerate launch --use_deepspeed --zero_stage 3 examples/accelerate_loop.py ...
    #   the model goes through engine.prepare_for_zero3 before prepare(); the EMA then updates each
    #   rank's shards of the target from its shards of the encoder, with no communication.

The EMA runs only after an optimizer step that was applied (`sync_gradients` and not skipped), so
under gradient accumulation it follows the optimizer step index, as in the engine's own trainers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import engine  # noqa: E402


def train(cfg, steps: int, model=None, loader=None, accelerator=None, progress: bool = False) -> list[float]:
    """`steps` optimizer steps; returns the losses. model/loader default to the config's; progress: a
    tqdm bar on the main process."""
    from accelerate import Accelerator
    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(cfg.meta.seed)
    model = model if model is not None else engine.build_model(cfg)
    if loader is None:   # this rank's share of every global batch
        loader = engine.make_loader(engine.build_dataset(cfg), batch_size=cfg.data.batch_size, seed=cfg.meta.seed,
                                    mask_sampler=engine.build_mask_sampler(cfg), num_workers=cfg.data.num_workers,
                                    rank=acc.process_index, world_size=acc.num_processes)
    o = cfg.optimization
    opt = torch.optim.AdamW(engine.param_groups(model), lr=0.0, betas=tuple(o.betas), eps=o.eps)
    if acc.state.deepspeed_plugin is not None and acc.state.deepspeed_plugin.zero_stage == 3:
        engine.prepare_for_zero3(model)
    # The engine's loader already shards by rank and yields (clips, labels, masks): not prepared.
    model, opt = acc.prepare(model, opt)
    ema, sched = engine.TargetEMA(acc.unwrap_model(model)), engine.schedules(cfg, o.ipe or len(loader))
    losses = []
    bar = tqdm(total=steps, desc="train", unit="step", disable=not (progress and acc.is_main_process))
    for i, batch in zip(range(steps), loader):
        engine.set_lr_wd(opt, sched, i)
        loss, _info = engine.jepa_loss(model, batch, dtype=cfg.dtype, device=acc.device)
        acc.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if acc.sync_gradients and not acc.optimizer_step_was_skipped:
            ema(sched.momentum(i))
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
