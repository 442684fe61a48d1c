"""DeepSpeed checkpoints of a run: save / load with an atomic `latest`, and export to the reference layout.

    save(engine, out / "ds_checkpoints", step, client_state, rank_state)   # DeepSpeed format + atomic `latest`
    client_state, rank_state = load(engine, out / "ds_checkpoints", tag)   # tag: resume.find_checkpoint's
    export_fp32(out / "ds_checkpoints", "model.pth.tar")                # consolidated fp32, the reference layout

Checkpoints of a many-machine run must go to a filesystem every host sees (DeepSpeed writes per rank).
"""
from __future__ import annotations

from pathlib import Path

import torch

from engine.core.io import atomic_torch_save, atomic_write_text
from engine.runtime.resume import DS_MODEL_FILES, ds_meta, split_parts


def read_latest(ckpt_dir) -> str | None:
    p = Path(ckpt_dir) / "latest"
    return p.read_text().strip() if p.exists() else None


def save(engine, ckpt_dir, step: int, client_state: dict, rank_state: dict, keep_last: int = 2,
         copy_tag: str | None = None) -> str:
    """DeepSpeed's checkpoint of step `step` + this rank's own state, then `latest` (atomically).

    client_state (model-independent resume state: step, config) goes into DeepSpeed's files;
    rank_state (RNG states, this rank's loader position) into <tag>/client_rank{r}.pt. `latest` is
    written in DeepSpeed's format (the tag) only after every rank has finished writing, so a crash
    mid-save leaves it on the previous complete checkpoint; older tags are removed only after.
    copy_tag: a copy kept for good under that tag (meta.save_every_freq); `latest` does not move.
    """
    import torch.distributed as dist
    ckpt_dir = Path(ckpt_dir)
    tag = copy_tag or f"step_{step:07d}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    atomic_torch_save(rank_state, ckpt_dir / tag / f"client_rank{dist.get_rank():03d}.pt")
    dist.barrier()
    if dist.get_rank() == 0 and copy_tag is None:
        atomic_write_text(ckpt_dir / "latest", tag)
        tags = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())
        for old in tags[:-keep_last] if keep_last > 0 else []:
            if old.name != tag:
                import shutil
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return tag


def load(engine, ckpt_dir, tag: str):
    """(client_state, rank_state) of checkpoint `tag` in ckpt_dir."""
    import torch.distributed as dist
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=False)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed could not load checkpoint {tag} from {ckpt_dir}")
    rank_file = Path(ckpt_dir) / tag / f"client_rank{dist.get_rank():03d}.pt"
    if not rank_file.exists():
        raise FileNotFoundError(f"{rank_file} is missing: the checkpoint is incomplete (this load needs the world size "
                                "it was saved with; engine.runtime.reshard loads it on another)")
    return client_state, torch.load(rank_file, map_location="cpu", weights_only=False)


def export_fp32(ckpt_dir, out_path, tag: str | None = None, kind: str | None = None) -> dict:
    """Consolidate a DeepSpeed checkpoint into one fp32 file in the reference layout.

    Offline (no process group, any number of ranks wrote it). Stages 0-2 keep fp32 parameters whole
    in the model-states file; ZeRO-3 keeps the trainable ones as fp32 optimizer partitions and the
    frozen ones (the target, the sin-cos tables) as per-rank fragments, which deepspeed's zero_to_fp32
    stitches together. The file is written by engine.save_reference_checkpoint: {"encoder",
    "predictor", "target_encoder"} state dicts with the `kind`'s key prefix ("module.backbone." for
    vjepa/vjepa2, "module." for ijepa; by default the kind the run's config describes, see
    reference_kind), epoch, world_size, a fresh optimizer state in the reference's
    group layout and GradScaler's initial state, so that
    `engine.load_reference_checkpoint(out_path, kind, cfg)` and the reference train scripts read it.
    Returns {"encoder", "predictor", "target_encoder"} (unprefixed fp32 state dicts), step, epoch, tag.
    """
    from engine.config import load_config
    from engine.reference_ckpt import reference_kind, save_reference_checkpoint
    ckpt_dir = Path(ckpt_dir)
    tag = tag or read_latest(ckpt_dir)
    if tag is None:
        raise FileNotFoundError(f"no `latest` in {ckpt_dir}: not a DeepSpeed checkpoint folder of engine.train")
    d = ckpt_dir / tag
    meta = ds_meta(d)
    if meta is None:
        raise FileNotFoundError(f"{d}: no {' nor '.join(DS_MODEL_FILES)}")
    stage = int(meta.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0))
    if stage == 3:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        flat = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    else:
        flat = dict(meta["module"])
    parts = {part: {k: v.detach().float().clone() if v.is_floating_point() else v.clone() for k, v in sd.items()}
             for part, sd in split_parts(flat).items()}
    empty = [p for p, sd in parts.items() if not sd]
    if empty:
        raise ValueError(f"{d}: the checkpoint holds no {empty} weights (keys: {sorted(flat)[:6]} ...)")
    cfg = load_config(raw=meta["config"]) if meta.get("config") else None
    if kind is None:
        if cfg is None:
            raise ValueError(f"{d}: no run config in the checkpoint; pass kind='vjepa'|'vjepa2'|'ijepa'")
        kind = reference_kind(cfg)
    epoch = meta.get("epoch", 0)
    save_reference_checkpoint(out_path, parts, kind, config=cfg, epoch=int(epoch or 0),
                              world_size=meta.get("world_size"))
    return {**parts, "step": meta.get("step"), "epoch": epoch, "tag": tag}

