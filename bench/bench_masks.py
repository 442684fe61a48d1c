"""pytest-benchmark: one batch of V-JEPA ViT-L masks (24 clips, 8x14x14 grid, the reference's two
multiblock settings) from MaskCollator; the sampler runs in the loader workers, so it must stay far
below a training step.

    pytest bench/bench_masks.py --benchmark-only
"""
import numpy as np

from engine.masks import MaskCollator

GRID = (8, 14, 14)
VITL_MASK = [   # the `mask` section of the reference's V-JEPA ViT-L pretraining config
    dict(aspect_ratio=[0.75, 1.5], num_blocks=8, spatial_scale=[0.15, 0.15], temporal_scale=[1.0, 1.0],
         max_temporal_keep=1.0, max_keep=None),
    dict(aspect_ratio=[0.75, 1.5], num_blocks=2, spatial_scale=[0.7, 0.7], temporal_scale=[1.0, 1.0],
         max_temporal_keep=1.0, max_keep=None),
]


def test_sample_vitl_batch(benchmark):
    col = MaskCollator.from_config(VITL_MASK, GRID)
    g = np.random.default_rng(0)
    masks = benchmark(col.sample, 24, g)
    assert len(masks.ctx) == len(VITL_MASK)
