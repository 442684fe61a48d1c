"""What other trainers import: the JEPA module, the loss of one step, the EMA, schedules, optimizer groups.

Public as `engine.<name>` (engine.__all__ lists every public name); the sketches below spell them
`api.<name>`: the same objects.

Plain PyTorch (examples/plain_loop.py):
    from engine import api
    model = api.build_model(cfg)                         # nn.Module: .encoder .predictor .target_encoder (fp32, frozen)
    opt = torch.optim.AdamW(api.param_groups(model), lr=0.0)
    ema, sched = api.TargetEMA(model), api.schedules(cfg, ipe)
    for i, batch in enumerate(loader):                   # batch: (clips, labels, masks) from engine.data.loader
        api.set_lr_wd(opt, sched, i)
        loss, info = api.jepa_loss(model, batch, dtype=torch.bfloat16)
        loss.backward(); opt.step(); opt.zero_grad(); ema(sched.momentum(i))

Lightning (examples/lightning_module.py): the same three calls inside a LightningModule; the EMA goes
in `optimizer_step` (after the real step, so it runs once per optimizer step under accumulation).
With `DeepSpeedStrategy(stage=3)` call `api.prepare_for_zero3(model)` before the strategy wraps it
(Lightning's DeepSpeed strategy accepts only CUDA accelerators; on CPU use engine.train's DeepSpeed backend or the default strategy).

HF Accelerate (examples/accelerate_loop.py):
    model, opt, loader = accelerator.prepare(api.prepare_for_zero3(model), opt, loader)  # prepare_for_zero3: only for ZeRO-3
    ema = api.TargetEMA(accelerator.unwrap_model(model))
    loss, _ = api.jepa_loss(model, batch); accelerator.backward(loss); opt.step(); opt.zero_grad()
    if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped: ema(m)

The EMA works on whatever each rank holds: whole tensors (one process, DDP, ZeRO 0-2) or, under
ZeRO-3, each rank's local shards (`p.ds_tensor`) of target and encoder, with no communication.
Call it only after an optimizer step that was applied (never after a skipped or accumulating one).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from engine.jepa import JEPA
from engine.runtime.deepspeed_engine import register_container_params
from engine.core.ema import TargetEMA, unwrap  # noqa: F401  (public as engine.TargetEMA, engine.unwrap)
from engine.core.schedules import Schedules, apply_to_optimizer
from engine.core.step import param_groups as _param_groups

# No __all__ here: the public names are engine.__all__ (engine/__init__.py re-exports these).


def build_model(cfg) -> JEPA:
    """The JEPA module of a config (encoder, predictor and an fp32 target copy of the encoder)."""
    from engine.builders import build_jepa
    return build_jepa(cfg)


def jepa_loss(model: nn.Module, batch, dtype: torch.dtype | None = None, device=None):
    """(loss, info) of one JEPA step on `batch` = (clips, labels, masks) or (clips, masks).

    `model` may be wrapped (DDP, a DeepSpeed engine): calling the wrapper keeps its hooks (gradient
    sync, ZeRO-3 parameter fetching). dtype: autocast dtype (bf16) or None for fp32. info: token counts
    (ints) and the logged terms loss_reg / loss_std / loss_cov as detached 0-d tensors (float() them when
    logging: converting inside the step would wait for the device).
    """
    clips, masks = (batch[0], batch[2]) if len(batch) == 3 else batch
    if device is not None:
        clips = clips.to(device, non_blocking=True) if torch.is_tensor(clips) else [c.to(device) for c in clips]
    dev = clips.device if torch.is_tensor(clips) else clips[0].device
    ctx = (torch.autocast(device_type=dev.type, dtype=dtype) if dtype not in (None, torch.float32)
           else contextlib.nullcontext())
    with ctx:
        return model(clips, masks)


def param_groups(model: nn.Module) -> list[dict]:
    """AdamW groups as the reference: encoder and predictor, no weight decay on biases and 1-D params."""
    m = unwrap(model)
    return [g for g in _param_groups([m.encoder, m.predictor]) if g["params"]]


def schedules(cfg, ipe: int) -> Schedules:
    """lr(i), wd(i), momentum(i) of optimizer step i (pure functions: nothing to checkpoint)."""
    return Schedules.from_config(cfg.optimization, ipe)


def set_lr_wd(optimizer, sched: Schedules, step: int) -> tuple[float, float]:
    lr, wd = sched.lr(step), sched.wd(step)
    apply_to_optimizer(optimizer, lr, wd)
    return lr, wd


def prepare_for_zero3(model: nn.Module) -> nn.Module:
    """Make a JEPA safe for ZeRO-3 partitioning (DeepSpeed, Lightning's or Accelerate's DeepSpeed):
    parameters used outside their module's forward (pos_embed, mask tokens) are fetched for the step."""
    register_container_params(unwrap(model))
    return model
