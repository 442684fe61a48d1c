"""BatchMasks (the masks of one batch) and MaskCollator (draws them from mask generators).

    collator = MaskCollator.from_config(cfg_mask, grid=(8, 14, 14), mode="ragged")
    masks = collator.sample(24, np.random.default_rng([seed, global_batch]))
    masks.ctx[c][b]   # int64 token ids kept by context c for sample b (sorted, unique)
    masks.tgt[m][b]   # int64 token ids predicted by target m
    masks.pairs       # [(c, m)]: the predictor maps context c to target m

Modes:
- "ragged" (default): every token a generator keeps is in the sets; lengths differ per sample.
- "compat": the reference truncation, exactly: each list is cut to the batch minimum length, keeping the
  first K sorted ids (so the latest-time tokens go), which makes every list stackable into [B, K]
  (the reference collator's form: `torch.stack(masks.ctx[c])`).
Both modes consume the rng identically, so a compat set is always a prefix of the ragged one.

`sample` is a pure function of its rng: the data pipeline calls it in DataLoader workers with an rng
seeded from (seed, global batch index), which makes masks reproducible and resumable.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch

from engine.masks.multiblock2d import MultiBlock2D
from engine.masks.multiblock3d import MultiBlock3D
from engine.masks.tube import TubeMask

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
    # descriptor, a cost per tensor that adds up over the (C + M) * B small sets of every batch.
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

    def repeat(self, n: int) -> "BatchMasks":
        """The masks of a batch of n x B clips laid out clip-major (data.num_clips = n): sample b's sets
        again for b + B, b + 2B, ... (the reference reuses one mask pair for every clip of a video)."""
        return BatchMasks([sets * n for sets in self.ctx], [sets * n for sets in self.tgt], list(self.pairs),
                          list(self.mask_index))


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
        """From the `mask` section: a list of per-config entries (V-JEPA / V-JEPA 2: one MultiBlock3D each,
        or a TubeMask for an entry with a `ratio`) or one entry (I-JEPA: a MultiBlock2D; its `patch_size`
        is the caller's business and is ignored here). An entry is the typed config (engine.config's
        VideoMaskConfig / ImageMaskConfig) or a plain dict of the same keys. Values are checked once, by
        the generators; errors name the entry (`mask.1.spatial_scale: ...`)."""
        if isinstance(mask_cfg, (list, tuple)):
            if not mask_cfg:
                raise ValueError("mask: expected at least one mask config")
            gens = [_generator(m, grid, f"mask.{i}", image=False) for i, m in enumerate(mask_cfg)]
            return cls(gens, mode=mode, mask_tokens=mask_tokens)
        return cls([_generator(mask_cfg, grid, "mask", image=True)], mode=mode)


def _generator(entry, grid, where: str, image: bool):
    opts = dict(entry) if isinstance(entry, dict) else dict(vars(entry))
    opts.pop("patch_size", None)
    if image:
        kind = MultiBlock2D
    elif opts.get("ratio") is not None:
        kind = TubeMask
        opts = {"ratio": opts["ratio"]} if not isinstance(entry, dict) else opts
    else:
        kind = MultiBlock3D
        opts.pop("ratio", None)
    allowed = set(inspect.signature(kind.__init__).parameters) - {"self", "grid"}
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key for {kind.__name__} (known: {sorted(allowed)})")
    try:
        return kind(grid, **opts)
    except ValueError as e:
        raise ValueError(f"{where}.{e}") from None
