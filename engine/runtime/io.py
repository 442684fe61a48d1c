"""Atomic file writes: a reader never sees a half-written file, a crash never destroys the old one.

    atomic_write_text(path, text); atomic_torch_save(obj, path)
"""
from __future__ import annotations

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


def atomic_torch_save(obj, path) -> None:
    _atomic(path, lambda f: torch.save(obj, f))
