"""Checks and index-set helpers shared by the mask generators: the one place mask options are validated.

    grid = check_grid((8, 14, 14), 3)
    lo, hi = check_range("spatial_scale", (0.15, 0.2), 0.0, 1.0)
    ids = index_sets(mask_BN)          # bool [B, N] -> B sorted int64 id tensors
"""
from __future__ import annotations

import math

import numpy as np
import torch


def check_grid(grid, ndim: int, name: str = "grid") -> tuple[int, ...]:
    grid = tuple(int(g) for g in grid)
    if len(grid) != ndim or min(grid) < 1:
        raise ValueError(f"{name}: expected {ndim} positive token counts, got {grid}")
    return grid


def check_range(name: str, value, lo: float, hi: float, lo_open: bool = True) -> tuple[float, float]:
    """A (min, max) pair with lo < min <= max <= hi (lo <= min when not lo_open)."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a [min, max] pair, got {value!r}") from None
    lo_ok = (a > lo) if lo_open else (a >= lo)
    if not (lo_ok and a <= b <= hi and math.isfinite(b)):
        bound = "(" if lo_open else "["
        raise ValueError(f"{name}: expected {bound}{lo}, {hi}] with min <= max, got {value!r}")
    return a, b


def check_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ValueError(f"{name}: must be an integer >= {lo}, got {value!r}")
    return int(value)


def keep_prefix(mask_BN: np.ndarray, k) -> np.ndarray:
    """Keep only the first k True entries of each row (k: int or int [B]); the reference's `cm[:k]`."""
    k_B1 = np.broadcast_to(np.asarray(k, dtype=np.int64), (mask_BN.shape[0],))[:, None]
    return mask_BN & (np.cumsum(mask_BN, axis=1) <= k_B1)


def index_sets(mask_BN: np.ndarray) -> list[torch.Tensor]:
    """Boolean [B, N] -> B sorted int64 id tensors. One nonzero for the whole batch (no per-token loop);
    each set owns its storage so pickling a set (DataLoader workers) does not ship the batch's buffer."""
    counts_B = mask_BN.sum(axis=1)
    ids = torch.from_numpy(np.nonzero(mask_BN)[1].astype(np.int64))
    return [s.clone() for s in torch.split(ids, counts_B.tolist())]
