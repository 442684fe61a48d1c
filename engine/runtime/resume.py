"""Resume a run whatever wrote its checkpoint, with the config it was trained with.

    found = find_checkpoint(out)                 # newest of checkpoints/ (one process) and ds_checkpoints/ (DeepSpeed)
    changes = check_config(found.config, cfg.to_dict(), found.describe())   # RunError on a change that cannot continue
    record_changes(out, found.step, changes)     # config_history.yaml + a log line; then config.yaml is rewritten
    state = found.load_local(param_names)        # a single-process Trainer state, converted from DeepSpeed if need be

A one-process checkpoint is one file (engine.core.checkpoint); a DeepSpeed one is a tag folder of
per-rank files whose rank-0 model-states file carries our client state (step, world_size, zero_stage,
config), read here before DeepSpeed is asked to load anything, so a wrong world size is refused by name.
A corrupt or truncated newest checkpoint falls back to the previous good one with a warning naming both.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from engine.runtime.errors import RunError
from engine.core.io import atomic_write_text

log = logging.getLogger("engine.train")

# Changing these changes a tensor's shape or what a step means for the saved data stream: a resumed run
# cannot continue with them. Everything else (lr, schedules, epochs, logging, ...) is accepted and recorded.
FIXED_SECTIONS = ("model.",)
FIXED_KEYS = ("app", "data.crop_size", "data.patch_size", "data.num_frames", "data.tubelet_size",
              "data.dataset_fpcs", "data.num_clips", "data.batch_size", "mask.patch_size")

DS_MODEL_FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
PARTS = ("encoder", "predictor", "target_encoder")   # the model's parts a checkpoint holds, each a state dict


def _flatten(d, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_config(saved: dict | None, now: dict, where: str) -> dict:
    """{key: (saved, now)} of the accepted changes; RunError naming every change that cannot continue."""
    if not saved:
        return {}
    from engine.config import Config
    a, b = _flatten(saved), _flatten(now)
    # A key the engine gained after the run was saved reads as its default: what that run did.
    defaults = _flatten(Config().to_dict())
    a.update({k: defaults[k] for k in b.keys() - a.keys() if k in defaults})
    changes = {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}
    fixed = [k for k in changes if k in FIXED_KEYS or k.startswith(FIXED_SECTIONS)]
    if fixed:
        what = "; ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in fixed)
        raise RunError(f"{where}: cannot resume with a changed {what}; set them back (the run's config.yaml "
                       "holds the saved values) or start a new run in another --output")
    return changes


def record_changes(out, step: int, changes: dict, note: dict | None = None) -> None:
    """Append the accepted changes to <out>/config_history.yaml and log them (rank 0)."""
    if not changes and not note:
        return
    path = Path(out) / "config_history.yaml"
    history = (yaml.safe_load(path.read_text()) if path.exists() else None) or []
    entry = {"resumed_at_step": int(step), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "changes": {k: {"saved": _plain(o), "now": _plain(n)} for k, (o, n) in changes.items()}}
    if note:
        entry.update(note)
    history.append(entry)
    atomic_write_text(path, yaml.safe_dump(history, sort_keys=False))
    if changes:
        log.warning("resumed with changed settings (recorded in %s): %s", path,
                    "; ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in changes.items()))


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


# -- finding a checkpoint ---------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    kind: str                       # "local" (one file) | "deepspeed" (a tag folder)
    step: int
    path: Path                      # the file, or the tag folder
    world_size: int = 1
    zero_stage: int | None = None
    config: dict | None = None
    state: dict | None = field(default=None, repr=False)   # the loaded state of a local checkpoint

    def describe(self) -> str:
        if self.kind == "local":
            return f"{self.path} (one process, step {self.step})"
        return f"{self.path} (DeepSpeed ZeRO-{self.zero_stage}, {self.world_size} ranks, step {self.step})"


def _read_local(path: Path) -> Checkpoint:
    state = torch.load(path, map_location="cpu", weights_only=False)
    return Checkpoint("local", int(state["step"]), path, config=state.get("config"), state=state)


def ds_meta(tag_dir: Path) -> dict | None:
    for name in DS_MODEL_FILES:
        f = tag_dir / name
        if f.exists():
            return torch.load(f, map_location="cpu", weights_only=False, mmap=True)
    return None


def _read_deepspeed(tag_dir: Path) -> Checkpoint:
    meta = ds_meta(tag_dir)
    if meta is None:
        raise FileNotFoundError(f"no {' or '.join(DS_MODEL_FILES)}")
    world = int(meta.get("world_size", meta.get("dp_world_size", 1)))
    missing = [f"client_rank{r:03d}.pt" for r in range(world) if not (tag_dir / f"client_rank{r:03d}.pt").exists()]
    if missing:
        raise FileNotFoundError(f"missing {missing}")
    return Checkpoint("deepspeed", int(meta["step"]), tag_dir, world_size=world,
                      zero_stage=int(meta.get("zero_stage", 0)), config=meta.get("config"))


def _newest_usable(d: Path, pattern: str, read, what: str) -> Checkpoint | None:
    """The first checkpoint of `d` that read(path) opens, best first: the one `latest` names, then the
    others (`pattern`), newest first. Each one that fails is a warning naming it, and the one used
    instead; RunError when none opens; None when `d` holds none."""
    pointer = d / "latest"
    tried = sorted(d.glob(pattern), reverse=True)
    if pointer.exists():
        named = d / pointer.read_text().strip()
        tried = [named] + [p for p in tried if p != named]
    first = None
    for path in tried:
        try:
            found = read(path)
        except Exception as e:  # noqa: BLE001 -- missing, torn, incomplete or corrupt: try the previous one
            log.warning("%s %s is unusable (%s: %s); trying the previous one", what, path, type(e).__name__, e)
            first = first or path
            continue
        if first is not None:
            log.warning("resuming from %s instead of the unusable %s", path, first)
        return found
    if first is not None:
        named_by = f", which {pointer} names," if pointer.exists() else ""
        raise RunError(f"{d}: no usable {what} ({first}{named_by} is missing, incomplete or corrupt); restore it, "
                       "or start again with --overwrite")
    return None


def find_checkpoint(out) -> Checkpoint | None:
    """The newest checkpoint of the run in `out`, one-process or DeepSpeed; None when it has none."""
    out = Path(out)
    found = [c for c in (_newest_usable(out / "checkpoints", "step_*.pt", _read_local, "checkpoint"),
                         _newest_usable(out / "ds_checkpoints", "step_*", _read_deepspeed, "DeepSpeed checkpoint"))
             if c is not None]
    return max(found, key=lambda c: c.step) if found else None


# -- DeepSpeed -> one process ---------------------------------------------------------------------------
def split_parts(flat: dict) -> dict:
    """{"encoder": {...}, "predictor": {...}, "target_encoder": {...}} of a whole model's state dict
    ("encoder.x" goes to ["encoder"]["x"]); keys of no part are left out."""
    parts = {p: {} for p in PARTS}
    for k, v in flat.items():
        head, _, rest = k.partition(".")
        if head in parts:
            parts[head][rest] = v
    return parts


def renumber_adam(param_order: list[list[str]], state_of) -> dict:
    """A torch AdamW state dict over param_order (each group's parameter names, in order): ids 0, 1, ... in
    that order, param_groups bare id lists, state[id] = state_of(name) (None: that parameter has none)."""
    flat = [n for names in param_order for n in names]
    state = {i: st for i, n in enumerate(flat) if (st := state_of(n)) is not None}
    starts = [sum(map(len, param_order[:g])) for g in range(len(param_order))]
    return {"state": state, "param_groups": [list(range(s, s + len(names))) for s, names in zip(starts, param_order)]}


def deepspeed_to_local(ckpt: Checkpoint, param_order: list[list[str]]) -> dict:
    """A single-process Trainer state from a DeepSpeed checkpoint of any ZeRO stage and world size.

    param_order: the names (encoder.* / predictor.*) of each AdamW group's parameters, in order.
    The model state as deepspeed_model_state; the loader resumes at the same global sample position;
    RNG states are rank 0's.
    """
    rank0 = torch.load(ckpt.path / "client_rank000.pt", map_location="cpu", weights_only=False)
    from engine.data.loader import state_for_world
    try:
        loader = state_for_world(rank0["loader"], 1, 0)
    except ValueError as e:
        raise RunError(f"{ckpt.describe()}: {e}; resume it under DeepSpeed with {ckpt.world_size} ranks") from None
    return {**deepspeed_model_state(ckpt, param_order), "loader": loader, "rng": rank0["rng"],
            "config": ckpt.config, "converted_from": ckpt.describe()}


def deepspeed_model_state(ckpt: Checkpoint, param_order: list[list[str]]) -> dict:
    """{"encoder", "predictor", "target_encoder" (whole fp32 state dicts), "opt" (a torch AdamW state dict
    over param_order, its param_groups bare id lists), "step"} of a DeepSpeed checkpoint of any ZeRO
    stage and world size. Adam's moments are re-assembled per parameter (ZeRO 1-3 through DeepSpeed's
    universal-checkpoint conversion)."""
    meta = ds_meta(ckpt.path)
    if (ckpt.zero_stage or 0) == 0:
        weights = {k: v.float() for k, v in meta["module"].items()}
        opt = meta["optimizer"]
        flat_names = [n for g in param_order for n in g]
        moments = {flat_names[int(idx)]: st for idx, st in opt["state"].items()}
        step_count = next(iter(opt["state"].values()))["step"] if opt["state"] else torch.tensor(0.0)
    else:
        weights, moments, step_count = _from_universal(ckpt)
    parts = split_parts(weights)

    def adam_state(n: str) -> dict:
        if n not in moments:
            raise RunError(f"{ckpt.describe()}: no optimizer state for {n}; it cannot be converted to one process")
        m, shape = moments[n], parts[n.partition(".")[0]][n.partition(".")[2]].shape
        return {"step": torch.as_tensor(m.get("step", step_count), dtype=torch.float32).clone(),
                "exp_avg": m["exp_avg"].float().reshape(shape).clone(),
                "exp_avg_sq": m["exp_avg_sq"].float().reshape(shape).clone()}

    return {**parts, "opt": renumber_adam(param_order, adam_state), "step": ckpt.step}


def _from_universal(ckpt: Checkpoint):
    """(weights, {name: {exp_avg, exp_avg_sq}}, step) through DeepSpeed's ds_to_universal (ZeRO 1-3)."""
    from deepspeed.checkpoint import ds_to_universal
    with tempfile.TemporaryDirectory(prefix="ds_universal_") as tmp:
        import argparse
        ns = argparse.Namespace(input_folder=str(ckpt.path), output_folder=tmp, num_extract_workers=1,
                                num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
        try:
            ds_to_universal.main(ns)
        except Exception as e:  # noqa: BLE001 -- DeepSpeed's converter refuses with assertions and KeyErrors
            raise RunError(f"{ckpt.describe()}: DeepSpeed could not convert it to a universal checkpoint "
                           f"({type(e).__name__}: {e}); resume it under DeepSpeed with {ckpt.world_size} ranks "
                           f"and ZeRO-{ckpt.zero_stage}") from None
        zero = Path(tmp) / "zero"
        moments = {d.name: {"exp_avg": _tensor(d / "exp_avg.pt"), "exp_avg_sq": _tensor(d / "exp_avg_sq.pt")}
                   for d in zero.iterdir() if (d / "exp_avg.pt").exists()}   # frozen parameters have none
        common = torch.load(zero / "optimizer_state.pt", map_location="cpu", weights_only=False)
    inner = common.get("optimizer_state_dict") or common.get("base_optimizer_state") or {}
    steps = [st.get("step") for st in inner.get("state", {}).values() if isinstance(st, dict) and "step" in st]
    step_count = steps[0] if steps else torch.tensor(float(ckpt.step))
    # The weights, trained and frozen (the EMA target, in no optimizer group) alike, consolidated in their shapes.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    full = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.path.parent), tag=ckpt.path.name)
    return {k: v.float() for k, v in full.items()}, moments, step_count


def _tensor(path: Path) -> torch.Tensor:
    x = torch.load(path, map_location="cpu", weights_only=False)
    return x["param"] if isinstance(x, dict) else x
