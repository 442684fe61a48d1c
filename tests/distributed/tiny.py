"""The real tiny V-JEPA for the distributed tests: engine.builders on configs/tiny_cpu.yaml, shrunk.

    cfg = tiny_cfg(["optimization.lr=0.01"])          # TINY_OVERRIDES + yours
    model = build_tiny(cfg)                          # engine.jepa.JEPA: ViT encoder, predictor, fp32 target
    sampler = build_mask_sampler(cfg)                # the config's real multiblock masks (ragged)
    dataset = RandomClips(cfg)                       # in-memory clips [3, T, H, W] (the data path is not under test)
    FixedMasks(sampler)                              # one real mask drawn once, repeated for every sample

The model: depth 2, width 48, 2 heads; predictor depth 1, width 32 with the encoder's 2 heads
(pred_num_heads unset, as V-JEPA: so the run exports to the "vjepa" reference layout): 87k encoder
and 24k predictor parameters, 256 tokens per clip (8 frames 64x64, patch 8, tubelet 2).
"""
from __future__ import annotations

import numpy as np
import torch

TINY_OVERRIDES = [
    "model.depth=2", "model.embed_dim=48", "model.num_heads=2", "model.pred_depth=1", "model.pred_embed_dim=32",
    "model.pred_num_heads=null", "data.batch_size=2", "data.num_workers=0", "optimization.ipe=8",
    "optimization.epochs=2", "optimization.warmup=1", "logging.tensorboard=false", "meta.checkpoint_every=1000",
    # the reference objective: its loss is a mean over samples, so micro-batches add up to the big batch
    # (the std/cov terms of configs/tiny_cpu.yaml are statistics of the micro-batch's tokens)
    "loss.std_coeff=0.0", "loss.cov_coeff=0.0",
]


def tiny_cfg(extra=()):
    from engine.config import load_config
    return load_config("configs/tiny_cpu.yaml", TINY_OVERRIDES + list(extra))


def build_tiny(cfg, seed: int = 0):
    """The JEPA of `cfg` with weights drawn from `seed` (the same on every rank and in the reference)."""
    from engine.builders import build_jepa
    torch.manual_seed(seed)
    return build_jepa(cfg)


class RandomClips(torch.utils.data.Dataset):
    """Sample i: a fixed random clip [3, T, H, W] (a function of i only), label 0."""

    def __init__(self, cfg, n: int = 32):
        self.shape = (3, cfg.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        return torch.randn(self.shape, generator=torch.Generator().manual_seed(int(index))), 0


class FixedMasks:
    """Real masks of `sampler`, drawn once for one sample and repeated for each sample of every batch.

    Every sample then has the same token counts, so the loss of a batch is the mean of its samples'
    losses and k micro-batches of b give exactly one batch of k*b (the accumulation test).
    """

    def __init__(self, sampler, seed: int = 0):
        self.one = sampler(1, np.random.default_rng(seed))

    def __call__(self, batch_size, rng):
        from engine.masks.collator import BatchMasks
        o = self.one
        return BatchMasks([[s[0]] * batch_size for s in o.ctx], [[s[0]] * batch_size for s in o.tgt],
                          list(o.pairs), list(o.mask_index))
