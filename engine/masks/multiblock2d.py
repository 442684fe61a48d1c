"""I-JEPA multiblock-2D masks: `num_pred_masks` target blocks and `num_enc_masks` context blocks per image;
unless allow_overlap, a context block is cut down to the region outside every target block.

    gen = MultiBlock2D((16, 16), enc_mask_scale=(0.85, 1.0), pred_mask_scale=(0.15, 0.2),
                       aspect_ratio=(0.75, 1.5), num_enc_masks=1, num_pred_masks=4, min_keep=10)
    ctx, tgt, pairs = gen.sample(B, np.random.default_rng(0))   # ctx: [C][B], tgt: [M][B]

Reference semantics kept on purpose:
- per batch, one uniform draws both the scale and the aspect ratio of the target block (the reference
  reuses `_rand`), a second one the context block's size (aspect ratio 1); block sides are capped at
  grid - 1 and the top-left corner is drawn in [0, grid - side) (the reference's exclusive randint).
- a context block is valid with more than min_keep tokens; after 20 failed positions the last target's
  exclusion region is dropped (then the one before, ...), as the reference's `tries` does.
- pairs: every target with every context, target-major (the reference predictor's repeat order).
"""
from __future__ import annotations

import math

import numpy as np

from engine.masks.common import check_grid, check_int, check_range, index_sets, keep_prefix

_TIMEOUT = 20   # failed context positions before relaxing one exclusion region (the reference's timeout)


class MultiBlock2D:
    def __init__(self, grid, enc_mask_scale=(0.2, 0.8), pred_mask_scale=(0.2, 0.8), aspect_ratio=(0.3, 3.0),
                 num_enc_masks=1, num_pred_masks=2, min_keep=4, allow_overlap=False):
        self.grid = check_grid(grid, 2)
        if min(self.grid) < 2:
            raise ValueError(f"grid: I-JEPA blocks need at least 2 tokens per side, got {self.grid}")
        self.enc_mask_scale = check_range("enc_mask_scale", enc_mask_scale, 0.0, 1.0)
        self.pred_mask_scale = check_range("pred_mask_scale", pred_mask_scale, 0.0, 1.0)
        self.aspect_ratio = check_range("aspect_ratio", aspect_ratio, 0.0, float("inf"))
        self.num_enc_masks = check_int("num_enc_masks", num_enc_masks, 1)
        self.num_pred_masks = check_int("num_pred_masks", num_pred_masks, 1)
        self.min_keep, self.allow_overlap = check_int("min_keep", min_keep, 0), bool(allow_overlap)
        self.num_tokens = self.grid[0] * self.grid[1]
        # a block with <= min_keep tokens is never valid: the reference would loop forever; refuse up front
        for name, scale, ar in (("pred_mask_scale", self.pred_mask_scale, self.aspect_ratio),
                                ("enc_mask_scale", self.enc_mask_scale, (1.0, 1.0))):
            smallest = min(h * w for h, w in (self.block_size(u, scale, ar) for u in np.linspace(0, 1, 257)))
            if smallest <= self.min_keep:
                raise ValueError(f"min_keep: {name} {scale} on grid {self.grid} gives blocks of {smallest} tokens, "
                                 f"need more than min_keep={self.min_keep}")

    def block_size(self, u: float, scale, aspect_ratio) -> tuple[int, int]:
        """(h, w) from one uniform driving both scale and aspect ratio (the reference's formula)."""
        H, W = self.grid
        keep = int(H * W * (scale[0] + u * (scale[1] - scale[0])))
        ar = aspect_ratio[0] + u * (aspect_ratio[1] - aspect_ratio[0])
        h, w = int(round(math.sqrt(keep * ar))), int(round(math.sqrt(keep / ar)))
        return min(h, H - 1), min(w, W - 1)

    def sample(self, batch_size: int, rng: np.random.Generator, compat: bool = False):
        """(ctx [C][B], tgt [M][B], pairs [(c, m)] target-major)."""
        B, (H, W) = batch_size, self.grid
        C, M = self.num_enc_masks, self.num_pred_masks
        u = rng.random(2)
        p_size = self.block_size(u[0], self.pred_mask_scale, self.aspect_ratio)
        e_size = self.block_size(u[1], self.enc_mask_scale, (1.0, 1.0))
        for name, (h, w) in (("pred_mask_scale", p_size), ("enc_mask_scale", e_size)):
            if h * w <= self.min_keep:   # never valid: the reference would loop forever
                raise ValueError(f"min_keep: drew a {h}x{w} block from {name}, not more than min_keep={self.min_keep}")

        tgt_MBN = self._blocks((M, B), p_size, rng).reshape(M, B, -1)
        # acc_BLN[:, k]: the region outside the first k targets (k = M - tries in the reference)
        acc_BLN = np.ones((B, M + 1, H * W), dtype=bool)
        if not self.allow_overlap:
            acc_BLN[:, 1:] = np.logical_and.accumulate(~tgt_MBN.transpose(1, 0, 2), axis=1)
        ctx_CBN = np.stack([self._context(acc_BLN, e_size, rng) for _ in range(C)])

        if compat:   # the reference cuts every list of a kind to the minimum over all its masks and samples
            tgt_MBN = keep_prefix(tgt_MBN.reshape(M * B, -1), tgt_MBN.sum(-1).min()).reshape(M, B, -1)
            ctx_CBN = keep_prefix(ctx_CBN.reshape(C * B, -1), ctx_CBN.sum(-1).min()).reshape(C, B, -1)
        pairs = [(c, m) for m in range(M) for c in range(C)]
        return [index_sets(x) for x in ctx_CBN], [index_sets(x) for x in tgt_MBN], pairs

    # -- internals

    def _blocks(self, shape, size, rng) -> np.ndarray:
        """bool [*shape, H, W]: one block of `size` per entry, corner in [0, grid - side)."""
        H, W = self.grid
        h, w = size
        top = (rng.random(shape) * (H - h)).astype(np.int64)[..., None]
        left = (rng.random(shape) * (W - w)).astype(np.int64)[..., None]
        rows, cols = np.arange(H), np.arange(W)
        in_h = (rows >= top) & (rows < top + h)
        in_w = (cols >= left) & (cols < left + w)
        return in_h[..., :, None] & in_w[..., None, :]

    def _context(self, acc_BLN: np.ndarray, e_size, rng) -> np.ndarray:
        """bool [B, N]: one context block per sample. Each round tries _TIMEOUT positions at once for every
        pending sample (the first valid one wins, as in the reference's sequential loop); samples with none
        valid relax one exclusion region for the next round."""
        B, L, N = acc_BLN.shape
        out_BN = np.zeros((B, N), dtype=bool)
        pending_P = np.arange(B)
        tries = 0
        while pending_P.size:
            level = max(L - 1 - tries, 0)
            cand_PRN = self._blocks((pending_P.size, _TIMEOUT), e_size, rng).reshape(pending_P.size, _TIMEOUT, N)
            cand_PRN &= acc_BLN[pending_P, level][:, None, :]
            valid_PR = cand_PRN.sum(-1) > self.min_keep
            ok_P = valid_PR.any(axis=1)
            first_P = valid_PR.argmax(axis=1)
            out_BN[pending_P[ok_P]] = cand_PRN[ok_P, first_P[ok_P]]
            pending_P = pending_P[~ok_P]
            tries += 1
        return out_BN
