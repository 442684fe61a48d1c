"""Drawing the generated worlds: object shapes with soft edges, backgrounds and colours, shared by the
video, image and intuitive-physics generators.

    a_HW = shape_alpha("ring", yy - y, xx - x, r)      # coverage in [0, 1]
"""
from __future__ import annotations

import numpy as np

SHAPES = ("disk", "square", "diamond", "ring", "cross")
# the intuitive-physics events (engine.datagen.synthetic.generate_events)
EVENTS = ("teleport", "vanish", "pass_through")


def shape_alpha(shape: str, dy, dx, r):
    """Soft (anti-aliased) coverage in [0, 1] of a shape of radius r at offsets (dy, dx); broadcasts."""
    if shape == "disk":
        d = np.sqrt(dx * dx + dy * dy)
    elif shape == "square":
        d = np.maximum(np.abs(dx), np.abs(dy)) * 1.1
    elif shape == "diamond":
        d = (np.abs(dx) + np.abs(dy)) * 0.8
    elif shape == "ring":
        d = np.abs(np.sqrt(dx * dx + dy * dy) - 0.65 * r) * 2.6 + 0.1 * r
    elif shape == "cross":
        d = np.minimum(np.maximum(np.abs(dx), 2.5 * np.abs(dy)), np.maximum(2.5 * np.abs(dx), np.abs(dy)))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    # sub-pixel edges make slow motion visible frame to frame
    return np.clip(r - d + 0.5, 0.0, 1.0)


def random_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Static float32 [H, W, 3] background: a colour, a linear gradient and a faint stripe texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(0, 255, 3)
    ang = rng.uniform(0, 2 * np.pi)
    grad = (np.cos(ang) * xx + np.sin(ang) * yy - 0.5)[..., None] * rng.uniform(-60, 60, 3)
    freq, ang2 = rng.uniform(2, 8), rng.uniform(0, np.pi)
    stripes = np.sin(2 * np.pi * freq * (np.cos(ang2) * xx + np.sin(ang2) * yy))[..., None] * rng.uniform(0, 14, 3)
    return np.clip(base + grad + stripes, 0, 255).astype(np.float32)


def contrasting_colour(rng: np.random.Generator, bg_mean) -> np.ndarray:
    """A random colour far (L1 >= 180) from the background mean, so the actor is always visible."""
    for _ in range(50):
        c = rng.uniform(0, 255, 3)
        if np.abs(c - bg_mean).sum() >= 180:
            return c
    return 255.0 - np.asarray(bg_mean)
