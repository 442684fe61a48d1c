"""Atomic file writes: a reader never sees a half-written file, a crash never destroys the old one.

    atomic_write_text(path, text); atomic_torch_save(obj, path)
    atomic_write_csv(path, rows)          # a list of dicts: header = every key, in first-seen order
"""
from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

import torch


def _atomic(path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def atomic_write_csv(path, rows) -> None:
    """Rows (dicts) as CSV; a key missing from a row is an empty cell. Used for bench results."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def atomic_torch_save(obj, path) -> None:
    _atomic(path, lambda f: torch.save(obj, f))
