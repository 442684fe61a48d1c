"""Procedural image folder for I-JEPA: textured backgrounds with shapes, as PNG files in ImageFolder layout.

Usage:
    from engine.datagen.images import generate_images
    root = generate_images("data/generated/images", 500, size=64, seed=0)   # root/<class>/<NNNNNN>.png
    ds = ImageFolderDataset(root, transform=ImageTransform(crop_size=64))

The class is the shape of the largest object (disk, square, diamond, ring, cross); background colour,
gradient, stripes, colours, positions and 0-3 smaller distractor shapes are random. Image i depends
only on (seed, i) and has label i % num_classes (balanced). Files are written atomically.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .drawing import SHAPES, contrasting_colour, random_background, shape_alpha


def render_image(label: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """uint8 [H, W, 3]: an object of shape SHAPES[label] among smaller distractors of any shape."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = random_background(rng, size)
    s = size / 64.0
    for _ in range(rng.integers(0, 4)):
        cy, cx = rng.uniform(0, size, 2)
        a = shape_alpha(SHAPES[rng.integers(len(SHAPES))], yy - cy, xx - cx, rng.uniform(3, 6) * s)[..., None]
        img = img * (1 - a) + a * contrasting_colour(rng, img.mean((0, 1)))
    r = rng.uniform(10, 18) * s  # the class object is always the largest
    cy, cx = rng.uniform(r, size - r, 2)
    a = shape_alpha(SHAPES[label], yy - cy, xx - cx, r)[..., None]
    img = img * (1 - a) + a * contrasting_colour(rng, img.mean((0, 1)))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def generate_images(out_dir, num_images: int, size: int = 64, seed: int = 0, num_classes: int = len(SHAPES),
                    progress: bool = False) -> Path:
    """Write num_images PNGs to out_dir/<shape>/<NNNNNN>.png; return out_dir (the ImageFolder root)."""
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in [2, {len(SHAPES)}], got {num_classes}")
    root = Path(out_dir).resolve()
    for c in SHAPES[:num_classes]:
        (root / c).mkdir(parents=True, exist_ok=True)
    it = range(num_images)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="generating images", unit="image")
    for i in it:
        label = i % num_classes
        path = root / SHAPES[label] / f"{i:06d}.png"
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(render_image(label, np.random.default_rng([seed, i]), size)).save(tmp, format="PNG")
        os.replace(tmp, path)
    return root
