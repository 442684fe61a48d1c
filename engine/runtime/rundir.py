"""The run folder: what a run may write into, and what it must never lose.

    check_output(out)                         # RunError unless `out` is (or can be made) a writable folder
    claim(out, resume=False, overwrite=False) # RunError when `out` holds a run and neither flag says what to do
    describe_run(out)                         # "metrics.csv with 40 rows, checkpoint step_0000040.pt" or None

A folder holds a run when it has any of RUN_FILES. Writing a new run over it would cut its metrics,
re-point `latest` and delete its checkpoints as the new run passes them, so that needs `--resume`
(continue it) or `--overwrite` (replace it: its run files are deleted, nothing else in the folder).
"""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

from engine.runtime.errors import RunError
from engine.core.io import remove_stale_tmp

RUN_FILES = ("metrics.csv", "config.yaml", "config_history.yaml", "checkpoints", "ds_checkpoints", "tb",
             "loss.png", "losses.jsonl", "metrics.replaced.csv")


def check_output(out) -> Path:
    """Make `out` and prove it writable, or say in one line why it cannot be the output folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: the output path is a file, not a folder; pass --output with a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe.{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunError(f"{out}: the output folder cannot be written ({e.strerror or e}); "
                       "pass --output with a folder you can write to") from None
    return out


def _metric_rows(path: Path) -> int:
    try:
        with open(path, newline="") as f:
            return sum(1 for _ in csv.DictReader(f))
    except (OSError, csv.Error):
        return 0


def describe_run(out) -> str | None:
    """A short description of the run `out` holds, or None when it holds none."""
    out = Path(out)
    if not out.is_dir():
        return None
    present = [n for n in RUN_FILES if (out / n).exists()]
    if not present:
        return None
    parts = []
    if (out / "metrics.csv").exists():
        parts.append(f"metrics.csv with {_metric_rows(out / 'metrics.csv')} rows")
    for sub in ("checkpoints", "ds_checkpoints"):
        latest = out / sub / "latest"
        if latest.exists():
            parts.append(f"{sub}/latest -> {latest.read_text().strip()}")
    return ", ".join(parts) or ", ".join(present)


def claim(out, resume: bool = False, overwrite: bool = False) -> Path:
    """Check and prepare the output folder before anything is written into it (rank 0 only).

    A folder holding a run is refused unless `resume` or `overwrite`; `overwrite` deletes its run files.
    Temporaries a killed writer left behind are removed either way.
    """
    if resume and overwrite:
        raise RunError("--resume and --overwrite contradict each other; pass one of them")
    out = check_output(out)
    held = describe_run(out)
    if held and not resume:
        if not overwrite:
            raise RunError(f"{out} already holds a run ({held}); pass --resume to continue it, --overwrite to "
                           "replace it, or another --output")
        for name in RUN_FILES:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    remove_stale_tmp(out)
    return out
