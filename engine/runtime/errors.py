"""User errors of a run: engine.train prints them as one line and exits non-zero (tracebacks are for bugs).

    raise RunError(f"{path}: what is wrong; what to do")
"""
from __future__ import annotations

import contextlib


class RunError(Exception):
    """Something the user can fix (a path, a folder, the data, a checkpoint): the message names it and says how."""


EXIT_USER_ERROR = 2


GENERATE_HINT = ("create the data first: `make demo`, or `python -m engine.datagen generate --output DIR --videos N` "
                 "and point data.datasets at DIR/train.csv")


@contextlib.contextmanager
def data_errors(cfg):
    """Turn the data set's own complaints (a missing or empty index, too few samples) into RunError
    naming the file and the config that points at it."""
    where = f"data.datasets={list(cfg.data.datasets)} in {cfg.source or 'the config'}"
    try:
        yield
    except FileNotFoundError as e:
        path = e.filename or str(e)
        raise RunError(f"{path}: not found ({where}); {GENERATE_HINT}") from None
    except ValueError as e:
        raise RunError(f"{e} ({where}); fix the index file or {GENERATE_HINT}") from None


@contextlib.contextmanager
def checkpoint_write(folder, step: int):
    """A failed checkpoint write (disk full, quota, permissions) as RunError naming the file: the
    previous checkpoint is intact, since `latest` moves only after a complete write."""
    try:
        yield
    except OSError as e:
        raise RunError(f"{e.filename or folder}: writing the checkpoint of step {step} failed ({e.strerror or e}); "
                       "free space there or pass another --output, then --resume (the previous checkpoint is "
                       "intact)") from None
