"""Training checkpoints: atomic files plus an atomically written `latest` pointer.

    save_checkpoint(folder, step, state)      # folder/checkpoints/step_0000123.pt, then folder/checkpoints/latest
    state = load_latest(folder)               # None when the run has no checkpoint yet

A crash at any point leaves either the previous checkpoint or the new one, never a torn file:
each file is written to a temporary name, fsynced and renamed; `latest` moves only after.
"""
from __future__ import annotations

from pathlib import Path

import torch

from engine.core.io import atomic_torch_save, atomic_write_text

KEEP_LAST = 2


def checkpoint_dir(folder) -> Path:
    return Path(folder) / "checkpoints"


def save_checkpoint(folder, step: int, state: dict, keep_last: int = KEEP_LAST) -> Path:
    d = checkpoint_dir(folder)
    path = d / f"step_{step:07d}.pt"
    atomic_torch_save(state, path)
    atomic_write_text(d / "latest", path.name + "\n")
    # Older checkpoints go only after `latest` points at the new one.
    old = sorted(d.glob("step_*.pt"))[:-keep_last] if keep_last > 0 else []
    for p in old:
        if p != path:
            p.unlink(missing_ok=True)
    return path


def latest_path(folder) -> Path | None:
    d = checkpoint_dir(folder)
    pointer = d / "latest"
    if not pointer.exists():
        return None
    path = d / pointer.read_text().strip()
    if not path.exists():
        raise FileNotFoundError(f"{pointer} names {path.name}, which does not exist")
    return path


def load_latest(folder, map_location="cpu") -> dict | None:
    path = latest_path(folder)
    if path is None:
        return None
    return torch.load(path, map_location=map_location, weights_only=False)


def checkpoint_file(checkpoint, option: str, train_hint: str) -> Path:
    """`checkpoint` itself, or the file a run folder's checkpoints/latest names. FileNotFoundError naming
    `option` (the flag or key that pointed here) and saying what to run (`train_hint`) when there is none."""
    path = Path(checkpoint)
    if path.is_dir():
        found = latest_path(path)
        if found is None:
            raise FileNotFoundError(f"{option} {path}: no checkpoints/latest in this folder; train first ({train_hint})")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"{option} {path}: no such checkpoint file; train first ({train_hint}) or point "
                                "it at a checkpoint file")
    return path


def read_run_checkpoint(checkpoint, app: str | tuple, option: str, train_hint: str) -> tuple[dict, Path]:
    """(the state an engine.train run of `app` (or of one of several apps) wrote, its file) from a run
    folder (its latest) or a file; ValueError naming `option` when the file is not such a run's checkpoint."""
    path = checkpoint_file(checkpoint, option, train_hint)
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or not isinstance(state.get("config"), dict) or "predictor" not in state:
        raise ValueError(f"{option} {path}: not a checkpoint written by engine.train (no 'config'/'predictor' "
                         "entries); a reference checkpoint loads with engine.load_reference_checkpoint")
    apps = (app,) if isinstance(app, str) else tuple(app)
    if state["config"].get("app") not in apps:
        raise ValueError(f"{option} {path}: written by an `app: {state['config'].get('app')}` run, not a checkpoint "
                         f"of an `app: {' or '.join(apps)}` run ({train_hint})")
    return state, path
