"""Masks for JEPA training: ragged per-sample token-id sets (every kept token is trained) or, in compat
mode, the reference's truncated rectangular masks.

    from engine.masks import MaskCollator
    collator = MaskCollator.from_config(cfg_mask, grid=(8, 14, 14), mode="ragged")   # YAML `mask` section
    masks = collator.sample(batch_size, np.random.default_rng([seed, global_batch]))  # BatchMasks

Generators: MultiBlock3D (V-JEPA / V-JEPA 2), MultiBlock2D (I-JEPA), TubeMask (V-JEPA random tube).
"""
from engine.masks.collator import BatchMasks, MaskCollator
from engine.masks.multiblock2d import MultiBlock2D
from engine.masks.multiblock3d import MultiBlock3D
from engine.masks.tube import TubeMask

__all__ = ["BatchMasks", "MaskCollator", "MultiBlock2D", "MultiBlock3D", "TubeMask"]
