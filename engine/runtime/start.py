"""Starting a new run from a checkpoint, with the reference train loops' keys and meanings.

    state = start_state(cfg, trainer.param_names(), ipe)   # None: start from random weights
    trainer.load_start(state)

- `meta.load_checkpoint: true` + `meta.read_checkpoint: PATH`: start from PATH: encoder, predictor,
  target encoder and AdamW state, strictly; the schedules and the data stream continue from the
  checkpoint's epoch (the reference advances its schedulers by epoch * ipe). `load_checkpoint`
  without `read_checkpoint` means the run's own latest checkpoint: that is `--resume`.
- `optimization.is_anneal: true` (V-JEPA 2 cool-down): start from `anneal_ckpt` the same way, but at
  step 0, with the linear-decay schedule (engine.core.schedules). `resume_anneal: true` continues an
  interrupted cool-down from the run's own checkpoint when it has one (as `--resume` does).
- `meta.skip_batches: N > 0`: skip the next N batches of the data stream at start (each launch, as
  the reference does), without decoding them.
PATH is one of our checkpoints (checkpoints/step_*.pt) or a reference-layout file (the reference's
`latest.pt` / `e{epoch}.pt`, keys prefixed as engine.reference_ckpt describes).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from engine.runtime.errors import RunError
from engine.runtime.resume import renumber_adam

log = logging.getLogger("engine.train")

# The reference init_opt's AdamW groups: [encoder decayed, predictor decayed, encoder 1-D/bias,
# predictor 1-D/bias], over every parameter, frozen ones (sin-cos tables) included; ours
# (trainer.param_groups): [encoder decayed, encoder 1-D/bias, predictor decayed, predictor 1-D/bias],
# trainable ones only.
REF_GROUPS = (("encoder", True), ("predictor", True), ("encoder", False), ("predictor", False))


def start_path(cfg) -> tuple[Path, bool] | None:
    """(checkpoint to start from, whether the schedules restart at step 0), or None."""
    m, o = cfg.meta, cfg.optimization
    if o.is_anneal:
        return Path(o.anneal_ckpt), True
    if m.read_checkpoint and not m.load_checkpoint:
        raise RunError(f"meta.read_checkpoint ({m.read_checkpoint}) is set but meta.load_checkpoint is false, so "
                       "the reference would not read it; set meta.load_checkpoint: true, or remove read_checkpoint")
    if m.load_checkpoint and m.read_checkpoint:
        return Path(m.read_checkpoint), False
    return None


def start_state(cfg, model, param_order: list[list[str]], ipe: int) -> dict | None:
    """The state a new run starts from (weights, optimizer, step, loader position), or None."""
    got = start_path(cfg)
    if got is None:
        return None
    path, restart = got
    key = "optimization.anneal_ckpt" if restart else "meta.read_checkpoint"
    if not path.is_file():
        raise RunError(f"{path}: not found ({key}); point it at a checkpoint file (checkpoints/step_*.pt of a run, "
                       "or a reference latest.pt / e<epoch>.pt)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 -- a torn or foreign file
        raise RunError(f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e}) ({key})") from None
    if isinstance(raw, dict) and "loader" in raw and "step" in raw:        # ours
        state = {k: raw[k] for k in ("encoder", "predictor", "target_encoder", "opt")}
        step, epoch = int(raw["step"]), int(raw.get("epoch", int(raw["step"]) // ipe))
        loader = raw["loader"]
    else:
        state, epoch = _from_reference(raw, path, cfg, model, param_order)
        step, loader = epoch * ipe, {"epoch": epoch, "batch_in_epoch": 0}
    if restart:
        step, loader = 0, None
    log.info("starting from %s (%s) at step %d%s", path, key, step, ", schedules from the start" if restart else "")
    return {**state, "step": step, "loader": loader, "started_from": str(path)}


def _from_reference(raw, path, cfg, model, param_order):
    from engine.core.state import ReferenceCheckpointError
    from engine.reference_ckpt import load_reference_checkpoint, reference_kind
    kind = reference_kind(cfg)
    try:
        ck = load_reference_checkpoint(raw, kind, cfg, missing_target="copy")
    except ReferenceCheckpointError as e:
        raise RunError(f"{path}: does not fit this config as a {kind} checkpoint: {e}") from None
    state = {"encoder": ck.encoder.state_dict(), "predictor": ck.predictor.state_dict(),
             "target_encoder": ck.target_encoder.state_dict()}
    opt = raw.get("opt")
    if opt and len(opt.get("param_groups", ())) == 4:
        state["opt"] = _reorder_reference_opt(opt, model, param_order)
    else:
        log.warning("%s holds no optimizer state in the reference layout; AdamW starts fresh", path)
    return state, int(ck.epoch or 0)


def _reorder_reference_opt(opt: dict, model, param_order: list[list[str]]) -> dict:
    """The reference's AdamW state dict mapped onto our groups by parameter name (ids renumbered)."""
    ref_ids = {}
    for g, (part, decayed) in zip(opt["param_groups"], REF_GROUPS):
        names = [f"{part}.{n}" for n, p in getattr(model, part).named_parameters()
                 if ("bias" not in n and len(getattr(p, "ds_shape", p.shape)) != 1) == decayed]  # ZeRO-3: ds_shape
        if len(names) != len(g["params"]):
            raise RunError(f"the checkpoint's optimizer group of {part} has {len(g['params'])} parameters, this "
                           f"model {len(names)}: it was written for another model")
        ref_ids.update(zip(names, g["params"]))
    return renumber_adam(param_order, lambda n: opt["state"].get(ref_ids[n]))


def skip_batches(loader, n: int) -> None:
    """Move the loader's position n batches on (meta.skip_batches), wrapping into later epochs."""
    if n <= 0:
        return
    st = loader.state_dict()
    per_epoch, start = loader.batches_per_epoch, st.get("start_sample", 0)
    # an epoch begun on another number of ranks (engine.data.loader.state_for_world) is shorter
    left = (loader.sampler.batches_from(start) if start else per_epoch) - st["batch_in_epoch"]
    if n < left:
        epoch, batch = st["epoch"], st["batch_in_epoch"] + n
    else:   # on into later epochs, each from its first sample
        (epoch, batch), start = divmod((st["epoch"] + 1) * per_epoch + n - left, per_epoch), 0
    new = {**st, "epoch": epoch, "batch_in_epoch": batch}
    if "start_sample" in st:
        new["start_sample"] = start
    loader.load_state_dict(new)
    log.info("meta.skip_batches: skipped %d batches; the data stream continues at epoch %d batch %d", n, epoch, batch)
