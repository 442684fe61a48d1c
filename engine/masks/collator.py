"""BatchMasks (the masks of one batch) and MaskCollator (draws them from mask generators).

    collator = MaskCollator.from_config(cfg_mask, grid=(8, 14, 14), mode="ragged")
    masks = collator.sample(24, np.random.default_rng([seed, global_batch]))
    masks.ctx[c][b]   # int64 token ids kept by context c for sample b (sorted, unique)
    masks.tgt[m][b]   # int64 token ids predicted by target m
    masks.pairs       # [(c, m)]: the predictor maps context c to target m
    enc_CBK, pred_MBK = masks.stacked()   # compat mode only: rectangular [B, K] per list

Modes:
- "ragged" (default): every token a generator keeps is in the sets; lengths differ per sample.
- "compat": the reference truncation, exactly: each list is cut to the batch minimum length, keeping the
  first K sorted ids (so the latest-time tokens go), which makes every list stackable into [B, K].
Both modes consume the rng identically, so a compat set is always a prefix of the ragged one.

`sample` is a pure function of its rng: the data pipeline calls it in DataLoader workers with an rng
seeded from (seed, global batch index), which makes masks reproducible and resumable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

MODES = ("ragged", "compat")


@dataclass
class BatchMasks:
    ctx: list[list[torch.Tensor]]   # [C][B] context token ids (int64, sorted, unique, in [0, N))
    tgt: list[list[torch.Tensor]]   # [M][B] target token ids, same rules
    pairs: list[tuple[int, int]]    # (c, m): predict target m from context c; the loss averages over pairs
    mask_index: list[int]           # per pair: the learned mask token the predictor uses

    @property
    def batch_size(self) -> int:
        return len(self.ctx[0]) if self.ctx else 0

    # Pickled as one flat int64 array (sent inline) plus lengths, not (C + M) * B small tensors: a
    # DataLoader worker hands every tensor over through its own shared-memory segment and file
    # descriptor, which cost ~7 ms per batch for the tiny config's 32 index sets (3% of its step).
    def __getstate__(self) -> dict:
        sets = [s for lists in (self.ctx, self.tgt) for sets in lists for s in sets]
        flat = torch.cat([s.reshape(-1).to(torch.int64) for s in sets]).numpy() if sets else np.zeros(0, np.int64)
        return {"flat": flat, "lens": [int(s.numel()) for s in sets], "ctx": [len(x) for x in self.ctx],
                "tgt": [len(x) for x in self.tgt], "pairs": self.pairs, "mask_index": self.mask_index}

    def __setstate__(self, state: dict) -> None:
        sets = iter(torch.from_numpy(state["flat"]).split(state["lens"]))
        self.ctx = [[next(sets) for _ in range(n)] for n in state["ctx"]]
        self.tgt = [[next(sets) for _ in range(n)] for n in state["tgt"]]
        self.pairs, self.mask_index = state["pairs"], state["mask_index"]

    def stacked(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(ctx, tgt) as lists of int64 [B, K] tensors, the reference collator's form. Only when every
        set of a list has one length (compat mode, or a generator with fixed lengths)."""
        out = []
        for name, lists in (("ctx", self.ctx), ("tgt", self.tgt)):
            stacked = []
            for i, sets in enumerate(lists):
                lens = {int(s.numel()) for s in sets}
                if len(lens) > 1:
                    raise ValueError(f"BatchMasks.stacked: {name}[{i}] is ragged (lengths {min(lens)}..{max(lens)});"
                                     " sample with mode='compat' to get rectangular masks")
                stacked.append(torch.stack(sets))
            out.append(stacked)
        return out[0], out[1]


# ---------------------------------------------------------------- helpers shared by the generators

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


# ---------------------------------------------------------------- the collator

class MaskCollator:
    """Draws a batch's masks from one or more generators (MultiBlock3D / TubeMask, one per mask config,
    or a single MultiBlock2D). A generator contributes its contexts, its targets and its own (c, m) pairs;
    pairs of generator g use mask token g (V-JEPA: one mask token per mask config; I-JEPA: token 0),
    or `mask_tokens[g]` when given (V-JEPA 2: every config of a frames-per-clip group shares the
    group's token)."""

    def __init__(self, generators, mode: str = "ragged", mask_tokens=None):
        if not isinstance(generators, (list, tuple)):
            generators = [generators]
        if not generators:
            raise ValueError("generators: at least one mask generator is needed")
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        sizes = {g.num_tokens for g in generators}
        if len(sizes) > 1:
            raise ValueError(f"generators: all must share one token grid, got token counts {sorted(sizes)}")
        self.generators, self.mode = list(generators), mode
        if mask_tokens is not None and len(mask_tokens) != len(self.generators):
            raise ValueError(f"mask_tokens: one per generator ({len(self.generators)}), got {list(mask_tokens)}")
        self.mask_tokens = list(range(len(self.generators))) if mask_tokens is None else [int(t) for t in mask_tokens]
        self.num_tokens = sizes.pop()

    def sample(self, batch_size: int, rng: np.random.Generator) -> BatchMasks:
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        ctx, tgt, pairs, mask_index = [], [], [], []
        for g_i, gen in enumerate(self.generators):
            g_ctx, g_tgt, g_pairs = gen.sample(batch_size, rng, compat=self.mode == "compat")
            pairs += [(len(ctx) + c, len(tgt) + m) for c, m in g_pairs]
            mask_index += [self.mask_tokens[g_i]] * len(g_pairs)
            ctx += g_ctx
            tgt += g_tgt
        return BatchMasks(ctx, tgt, pairs, mask_index)

    __call__ = sample

    @classmethod
    def from_config(cls, mask_cfg, grid, mode: str = "ragged", mask_tokens=None) -> "MaskCollator":
        """From the YAML `mask` section as parsed: a list of dicts (V-JEPA / V-JEPA 2: one MultiBlock3D per
        entry, or a TubeMask for an entry with `ratio`) or one dict (I-JEPA: a MultiBlock2D; its
        `patch_size` key is the caller's business and is ignored here)."""
        from engine.masks.multiblock2d import MultiBlock2D
        from engine.masks.multiblock3d import MultiBlock3D
        from engine.masks.tube import TubeMask
        if isinstance(mask_cfg, dict):
            cfg = {k: v for k, v in mask_cfg.items() if k != "patch_size"}
            return cls([_build(MultiBlock2D, grid, cfg, "mask")], mode=mode)
        if not isinstance(mask_cfg, (list, tuple)) or not mask_cfg:
            raise ValueError(f"mask: expected a non-empty list of mask configs or an I-JEPA dict, got {mask_cfg!r}")
        gens = []
        for i, m in enumerate(mask_cfg):
            if not isinstance(m, dict):
                raise ValueError(f"mask.{i}: expected a dict, got {m!r}")
            kind = TubeMask if "ratio" in m else MultiBlock3D
            gens.append(_build(kind, grid, m, f"mask.{i}"))
        return cls(gens, mode=mode, mask_tokens=mask_tokens)


def _build(kind, grid, cfg: dict, where: str):
    import inspect
    allowed = set(inspect.signature(kind.__init__).parameters) - {"self", "grid"}
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key for {kind.__name__} (known: {sorted(allowed)})")
    try:
        return kind(grid, **cfg)
    except ValueError as e:
        raise ValueError(f"{where}.{e}") from None
