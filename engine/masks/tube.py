"""V-JEPA random-tube masks: per sample, a random `ratio` of the spatial positions is masked through all
frames (a tube); the context keeps the rest.

    gen = TubeMask((8, 14, 14), ratio=0.9)
    ctx, tgt, pairs = gen.sample(B, np.random.default_rng(0))   # every sample keeps int(196 * 0.1) * 8 ids

Every sample has the same counts, so ragged and compat modes give the same sets.
"""
from __future__ import annotations

import numpy as np

from engine.masks.common import check_grid, index_sets


class TubeMask:
    def __init__(self, grid, ratio=0.9):
        self.grid = check_grid(grid, 3)
        T, H, W = self.grid
        if not 0.0 < float(ratio) < 1.0:
            raise ValueError(f"ratio: expected a masking ratio in (0, 1), got {ratio!r}")
        self.ratio = float(ratio)
        self.num_tokens = T * H * W
        self.keep_spatial = int(H * W * (1.0 - self.ratio))   # the reference's num_keep_spatial
        if not 0 < self.keep_spatial < H * W:
            raise ValueError(f"ratio: {ratio} on a {H}x{W} grid keeps {self.keep_spatial} of {H * W} positions; "
                             "the context and the target must both be non-empty")

    def sample(self, batch_size: int, rng: np.random.Generator, compat: bool = False):
        T, H, W = self.grid
        # a random permutation per row; its first keep_spatial positions are the kept ones
        order_BS = np.argsort(rng.random((batch_size, H * W)), axis=1)
        keep_BS = np.zeros((batch_size, H * W), dtype=bool)
        np.put_along_axis(keep_BS, order_BS[:, :self.keep_spatial], True, axis=1)
        ctx_BN = np.tile(keep_BS, (1, T))      # t-major: the same spatial set in every frame
        return [index_sets(ctx_BN)], [index_sets(~ctx_BN)], [(0, 0)]
