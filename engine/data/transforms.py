"""Clip and image augmentations with an explicit np.random.Generator (deterministic per sample).

Usage:
    tf = VideoTransform(crop_size=64, random_resize_scale=(0.3, 1.0))
    x_CTHW = tf(clip_THW3_uint8, np.random.default_rng(seed))   # float32 [3, T, 64, 64], normalised
    x_CTHW = VideoEvalTransform(crop_size=64)(clip_THW3_uint8)    # resize short side + centre crop
    x_CHW = ImageTransform(crop_size=64, scale=(0.3, 1.0))(img_HW3_uint8, rng)   # I-JEPA: one frame
    x_CHW = ImageEvalTransform(crop_size=64)(img_HW3_uint8)

Reference semantics (V-JEPA app/vjepa/transforms.py): ONE random resized crop box per clip (area scale,
log-uniform aspect ratio, 10 tries, then a centre crop), bilinear resize (align_corners=False, no
antialias), a horizontal flip with p=0.5, then (x/255 - mean) / std with ImageNet mean and std.
Unlike the reference, the crop is cut from the uint8 clip and resized in uint8; only the output-sized
clip is ever float: the full-resolution clip is never materialised in float (and the resize rounds to
the nearest uint8 level, <= 1/255 from a float resize).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def random_crop_box(rng: np.random.Generator, height: int, width: int, scale, ratio, tries: int = 10):
    """(top, left, h, w) of an Inception-style random resized crop (the reference's _get_param_spatial_crop)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(tries):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height  # fallback: the largest centred box within the ratio range
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _resize_normalise(region_THW3: np.ndarray, out_hw, flip: bool, scale_C, bias_C) -> torch.Tensor:
    """uint8 [T, h, w, 3] region -> float32 [3, T, H, W]: resize, optional flip, x * scale + bias."""
    if not region_THW3.flags.writeable:  # e.g. np.asarray(PIL image): torch wants writable memory to share
        region_THW3 = region_THW3.copy()
    x_T3hw = torch.from_numpy(region_THW3).permute(0, 3, 1, 2)  # a uint8 view with channels-last strides
    if tuple(x_T3hw.shape[-2:]) != tuple(out_hw):
        # resized in uint8: torch's vectorised channels-last uint8 bilinear kernel (no antialias, like the
        # float path) is ~5x faster than converting first; it rounds to the nearest level (<= 1/255 off)
        x_T3hw = F.interpolate(x_T3hw, size=tuple(out_hw), mode="bilinear", align_corners=False)
    if flip:
        x_T3hw = x_T3hw.flip(-1)
    # to planar [3, T, H, W] while still uint8 (a strided float conversion costs ~2x more), then the
    # normalisation as one multiply-add into the only float tensor, output-sized:
    # (x/255 - mean)/std = x * (1/(255 std)) - mean/std
    u_3THW = torch.empty((3, x_T3hw.shape[0], *x_T3hw.shape[-2:]), dtype=torch.uint8)
    u_3THW.copy_(x_T3hw.permute(1, 0, 2, 3))
    return torch.addcmul(bias_C.view(3, 1, 1, 1), u_3THW, scale_C.view(3, 1, 1, 1))


class VideoTransform:
    """Training augmentation: one random resized crop per clip, flip, normalise -> float32 [3, T, S, S]."""

    def __init__(self, crop_size: int = 224, random_resize_scale=(0.3, 1.0), random_resize_aspect_ratio=(3 / 4, 4 / 3),
                 horizontal_flip: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.crop_size = int(crop_size)
        self.scale = tuple(random_resize_scale)
        self.ratio = tuple(random_resize_aspect_ratio)
        self.horizontal_flip = horizontal_flip
        std_C = torch.tensor(std, dtype=torch.float32)
        self.scale_C = 1.0 / (255.0 * std_C)
        self.bias_C = -torch.tensor(mean, dtype=torch.float32) / std_C

    def __call__(self, clip_THW3: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        T, H, W, _ = clip_THW3.shape
        top, left, h, w = random_crop_box(rng, H, W, self.scale, self.ratio)
        flip = self.horizontal_flip and rng.uniform() < 0.5
        region = clip_THW3[:, top:top + h, left:left + w]
        return _resize_normalise(region, (self.crop_size, self.crop_size), flip, self.scale_C, self.bias_C)


class VideoEvalTransform:
    """Evaluation: resize the short side to crop_size*256/224, centre crop crop_size -> float32 [3, T, S, S].

    Implemented as crop-then-resize: the centre box in source pixels that the resized centre crop
    would cover is cut first, so only that region is resized (same result up to border rounding).
    """

    def __init__(self, crop_size: int = 224, short_side_size: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.crop_size = int(crop_size)
        self.short_side_size = short_side_size or int(crop_size * 256 / 224)
        std_C = torch.tensor(std, dtype=torch.float32)
        self.scale_C = 1.0 / (255.0 * std_C)
        self.bias_C = -torch.tensor(mean, dtype=torch.float32) / std_C

    def __call__(self, clip_THW3: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        T, H, W, _ = clip_THW3.shape
        side = min(H, W) * self.crop_size / self.short_side_size  # source pixels per output crop side
        h = w = max(1, int(round(side)))
        top, left = (H - h) // 2, (W - w) // 2
        region = clip_THW3[:, top:top + h, left:left + w]
        return _resize_normalise(region, (self.crop_size, self.crop_size), False, self.scale_C, self.bias_C)


EvalVideoTransform = VideoEvalTransform  # alias


class ImageTransform:
    """I-JEPA augmentation for one uint8 image [H, W, 3] -> float32 [3, S, S] (a one-frame VideoTransform)."""

    def __init__(self, crop_size: int = 224, scale=(0.3, 1.0), ratio=(3 / 4, 4 / 3), horizontal_flip: bool = True,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.video = VideoTransform(crop_size, scale, ratio, horizontal_flip, mean, std)

    def __call__(self, img_HW3: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        return self.video(img_HW3[None], rng)[:, 0]


class ImageEvalTransform:
    """Evaluation for one image: resize short side to crop_size*256/224, centre crop -> float32 [3, S, S]."""

    def __init__(self, crop_size: int = 224, short_side_size: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.video = VideoEvalTransform(crop_size, short_side_size, mean, std)

    def __call__(self, img_HW3: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        return self.video(img_HW3[None])[:, 0]
