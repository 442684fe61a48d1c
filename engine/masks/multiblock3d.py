"""V-JEPA / V-JEPA 2 multiblock-3D masks: the target is a union of spatio-temporal blocks, the context
its complement.

    gen = MultiBlock3D((8, 14, 14), spatial_scale=(0.15, 0.15), temporal_scale=(1.0, 1.0),
                       aspect_ratio=(0.75, 1.5), num_blocks=8)        # or MultiBlock3D(grid, **yaml_entry)
    ctx, tgt, pairs = gen.sample(24, np.random.default_rng(0))         # ctx[0][b]: context ids of sample b

Per batch one block size (t, h, w) is drawn (as the reference does, from its per-iteration seed); per
sample `num_blocks` positions. Tokens are ordered t-major, then h, then w (the patch embed's order).
Reference semantics kept on purpose:
- max_temporal_keep < 1: frames past max(1, int(T * max_temporal_keep)) leave the context and so join
  the target (the reference zeroes them in every block mask).
- a sample whose context comes out empty is redrawn (positions only, same block size).
- max_keep caps the context at its first max_keep ids (both modes; the reference applies it through its
  truncation). full_complement: target = complement of the (cut) context; pred_full_complement: context
  = complement of the (cut) target; inv_block swaps the two.
"""
from __future__ import annotations

import math

import numpy as np

from engine.masks.common import check_grid, check_int, check_range, index_sets, keep_prefix

_MAX_REDRAWS = 1000   # empty-context redraws before giving up (the reference would loop forever)


class MultiBlock3D:
    def __init__(self, grid, spatial_scale=(0.2, 0.8), temporal_scale=(1.0, 1.0), aspect_ratio=(0.3, 3.0),
                 num_blocks=1, max_temporal_keep=1.0, max_keep=None, full_complement=False,
                 pred_full_complement=False, inv_block=False):
        self.grid = check_grid(grid, 3)
        self.spatial_scale = check_range("spatial_scale", spatial_scale, 0.0, 1.0)
        self.temporal_scale = check_range("temporal_scale", temporal_scale, 0.0, 1.0)
        self.aspect_ratio = check_range("aspect_ratio", aspect_ratio, 0.0, float("inf"))
        if isinstance(max_temporal_keep, bool) or not isinstance(max_temporal_keep, (int, float)) \
                or not 0.0 < max_temporal_keep <= 1.0:
            raise ValueError(f"max_temporal_keep: expected a value in (0, 1], got {max_temporal_keep!r}")
        if full_complement and pred_full_complement:
            raise ValueError("full_complement: cannot be combined with pred_full_complement")
        self.num_blocks = check_int("num_blocks", num_blocks, 1)
        self.max_keep = None if max_keep is None else check_int("max_keep", max_keep, 1)
        self.full_complement, self.pred_full_complement = bool(full_complement), bool(pred_full_complement)
        self.inv_block = bool(inv_block)
        T, H, W = self.grid
        self.num_tokens = T * H * W
        # the context only spans the first frames (the reference's max_context_duration)
        self.context_frames = max(1, int(T * float(max_temporal_keep)))
        if self.block_size(0.0, 0.0, 0.0) == self.grid and self.block_size(0.0, 0.0, 1.0) == self.grid:
            raise ValueError(f"spatial_scale: blocks of scale {self.spatial_scale} x temporal_scale "
                             f"{self.temporal_scale} cover the whole grid {self.grid}: the context would be empty")

    def block_size(self, u_t: float, u_s: float, u_ar: float) -> tuple[int, int, int]:
        """(t, h, w) from three uniforms, the reference's formula (int() truncation, round-half-even)."""
        T, H, W = self.grid
        t = max(1, int(T * (self.temporal_scale[0] + u_t * (self.temporal_scale[1] - self.temporal_scale[0]))))
        scale = self.spatial_scale[0] + u_s * (self.spatial_scale[1] - self.spatial_scale[0])
        keep = int(H * W * scale)
        ar = self.aspect_ratio[0] + u_ar * (self.aspect_ratio[1] - self.aspect_ratio[0])
        h, w = int(round(math.sqrt(keep * ar))), int(round(math.sqrt(keep / ar)))
        return t, min(h, H), min(w, W)

    def draw_blocks(self, batch_size: int, rng: np.random.Generator):
        """Block size (t, h, w) for the batch and starts int64 [B, num_blocks, 3] (t0, h0, w0), redrawing
        samples whose context would be empty."""
        T, H, W = self.grid
        size = self.block_size(*rng.random(3))
        if size == self.grid:
            raise ValueError(f"spatial_scale: drew a block {size} covering the whole grid: the context would be empty")
        starts_BK3 = self._draw_starts(batch_size, size, rng)
        for _ in range(_MAX_REDRAWS):
            empty_B = ~self._context(self._target(starts_BK3, size)).any(axis=1)
            if not empty_B.any():
                return size, starts_BK3
            starts_BK3[empty_B] = self._draw_starts(int(empty_B.sum()), size, rng)
        raise RuntimeError(f"MultiBlock3D: no non-empty context after {_MAX_REDRAWS} draws of block {size}")

    def sample(self, batch_size: int, rng: np.random.Generator, compat: bool = False):
        """([[ctx ids per sample]], [[tgt ids per sample]], [(0, 0)]): one context, one target; compat cuts
        them as the reference does."""
        size, starts_BK3 = self.draw_blocks(batch_size, rng)
        tgt_BN = self._target(starts_BK3, size)
        ctx_BN = self._context(tgt_BN)
        # the reference cuts the context at min(batch min, max_keep) and the target at its batch min
        ctx_cap, tgt_cap = self.max_keep, None
        if compat:
            ctx_min = int(ctx_BN.sum(axis=1).min())
            ctx_cap = ctx_min if ctx_cap is None else min(ctx_cap, ctx_min)
            tgt_cap = int(tgt_BN.sum(axis=1).min())
        if ctx_cap is not None:
            ctx_BN = keep_prefix(ctx_BN, ctx_cap)
        if tgt_cap is not None:
            tgt_BN = keep_prefix(tgt_BN, tgt_cap)
        if self.full_complement:
            tgt_BN = ~ctx_BN
        elif self.pred_full_complement:
            ctx_BN = ~tgt_BN
        if self.inv_block:
            ctx_BN, tgt_BN = tgt_BN, ctx_BN
        return [index_sets(ctx_BN)], [index_sets(tgt_BN)], [(0, 0)]

    # -- internals

    def _draw_starts(self, n: int, size, rng) -> np.ndarray:
        hi_3 = np.array(self.grid) - np.array(size) + 1          # starts in [0, dim - size] inclusive
        return (rng.random((n, self.num_blocks, 3)) * hi_3).astype(np.int64)

    def _target(self, starts_BK3: np.ndarray, size) -> np.ndarray:
        """bool [B, N]: the union of the blocks, plus every frame past the context's span."""
        T, H, W = self.grid
        t, h, w = size
        B = starts_BK3.shape[0]
        # per-axis membership, then an outer AND: [B, K, T] x [B, K, H] x [B, K, W] -> [B, K, T, H, W]
        in_t = _axis_in(starts_BK3[..., 0], t, T)
        in_h = _axis_in(starts_BK3[..., 1], h, H)
        in_w = _axis_in(starts_BK3[..., 2], w, W)
        block_BKTHW = in_t[:, :, :, None, None] & in_h[:, :, None, :, None] & in_w[:, :, None, None, :]
        tgt_BTHW = block_BKTHW.any(axis=1)
        tgt_BTHW[:, self.context_frames:] = True
        return tgt_BTHW.reshape(B, -1)

    def _context(self, tgt_BN: np.ndarray) -> np.ndarray:
        return ~tgt_BN


def _axis_in(start_BK: np.ndarray, length: int, dim: int) -> np.ndarray:
    """bool [B, K, dim]: position p lies in [start, start + length)."""
    p = np.arange(dim)
    return (p >= start_BK[..., None]) & (p < start_BK[..., None] + length)
