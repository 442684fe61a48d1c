"""Atomic file writes: a reader never sees a half-written file, a crash never destroys the old one.

    atomic_write_text(path, text); atomic_write_bytes(path, data); atomic_torch_save(obj, path)
    atomic_write_csv(path, rows)          # a list of dicts: header = every key, in first-seen order
    remove_stale_tmp(folder)              # temporaries a killed writer left behind (TMP_GLOB)

A write goes to `.<name>.<random>.tmp` beside the target, is fsynced and renamed over it. The file
gets the mode a plain open() would (0666 minus the umask), not mkstemp's private 0600, so a
group that shares a run folder can read its checkpoints and logs.
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
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = _os_error(e)
        if cause is None:
            raise
        # A full disk surfaces from torch.save as the zip writer's RuntimeError raised while handling the
        # OSError: raise the OSError itself (ENOSPC, EFBIG, EDQUOT ...), naming the file it was writing.
        raise OSError(cause.errno, cause.strerror, str(path)) from None


TMP_GLOB = ".*.tmp"


def _os_error(e: BaseException) -> OSError | None:
    """The OSError at the root of `e` (e itself or what it was raised while handling), if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_stale_tmp(folder, recursive: bool = True) -> list[Path]:
    """Delete the temporaries of atomic writes in `folder` (and below): only a writer killed mid-write
    leaves one, so call it when no writer is running (at the start of a run). Returns what it removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = sorted(folder.rglob(TMP_GLOB) if recursive else folder.glob(TMP_GLOB))
    for p in found:
        if p.is_file():
            p.unlink(missing_ok=True)
    return found


def atomic_write_text(path, text: str) -> None:
    _atomic(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(path, data: bytes) -> None:
    _atomic(path, lambda f: f.write(data))


def atomic_write_csv(path, rows) -> None:
    """Rows (dicts) as CSV; a key missing from a row is an empty cell. Used for bench results."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def append_csv_rows(path, rows) -> None:
    """Append rows (dicts) to a results CSV, atomically. Columns new to the file go after its own, its
    older rows blank there, so appended rows never misalign and no row written before is lost."""
    old = []
    if Path(path).is_file():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    atomic_write_csv(path, old + list(rows))


def atomic_torch_save(obj, path) -> None:
    _atomic(path, lambda f: torch.save(obj, f))
