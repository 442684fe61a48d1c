"""The reference video transforms' extra augmentations, on uint8 clips in the loader's workers.

    ra = ClipRandAugment()                          # data_aug.auto_augment: RandAugment "rand-m7-n4-mstd0.5-inc1"
    clip_THW3 = ra(clip_THW3, rng)                  # the same ops, with the same draws, on every frame
    erase = RandomErasing(0.25)                     # data_aug.reprob: random erasing, one box through all frames
    u8_3TSS = erase(u8_3TSS, rng)                   # after the crop, resize and flip, as the reference
    img_HW3 = ImageColorAugment(distortion=True, strength=1.0, blur=True)(img_HW3, rng)   # I-JEPA's image keys

Reference semantics (V-JEPA's app/vjepa/transforms.py and its RandAugment / RandomErasing):
- RandAugment, on the full decoded frames before the crop: 4 ops drawn uniformly with replacement from the
  15 "increasing" ops; each applies with p=0.5 at a magnitude drawn from N(7, 0.5) clipped to [0, 10],
  a random sign for the signed ones; geometric ops resample bicubically and fill with grey (128).
  Drawn once per clip, so every frame gets the same op (PIL's own ops, frame by frame).
- Random erasing (mode "pixel", one box): with probability reprob, a box of area U(0.02, 1/3) of the frame
  and log-uniform aspect ratio in [0.3, 1/0.3] (100 tries, strictly inside the frame) at the same place in
  every frame, filled with N(0, 1) noise in normalised units, drawn per pixel, channel and frame. Here the
  noise is stored as the nearest uint8 level of the pixel it stands for (x = z std + mean), so values past
  the pixel range (|z| > ~2.1) are clipped to it: the clip stays uint8 until the consumer normalises it.
(Motion shift, a crop box per frame, is engine.data.transforms.motion_shift_boxes.)

I-JEPA's image transform (src/transforms.py), after the crop and flip:
- use_color_distortion, with color_jitter_strength s: with p=0.8 a colour jitter (brightness, contrast and
  saturation factors U(max(0, 1 - 0.8 s), 1 + 0.8 s), a hue shift U(-0.2 s, 0.2 s) of a turn, applied in a
  random order, as torchvision's ColorJitter on PIL images), then with p=0.2 grayscale (PIL's "L", 3 channels).
- use_gaussian_blur: with p=0.5, PIL's Gaussian blur of radius U(0.1, 2.0).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

MAX_LEVEL = 10.0
FILL = (128, 128, 128)


def _signed(v: float, rng: np.random.Generator) -> float:
    return -v if rng.uniform() > 0.5 else v


def _affine(img, coeffs):
    return img.transform(img.size, Image.AFFINE, coeffs, resample=Image.BICUBIC, fillcolor=FILL)


# name -> (arguments from (level, rng): the draws made once per clip, op(img, *args) for each frame)
OPS = {
    "AutoContrast": (lambda lv, rng: (), lambda img: ImageOps.autocontrast(img)),
    "Equalize": (lambda lv, rng: (), lambda img: ImageOps.equalize(img)),
    "Invert": (lambda lv, rng: (), lambda img: ImageOps.invert(img)),
    "Rotate": (lambda lv, rng: (_signed(lv / MAX_LEVEL * 30.0, rng),),
               lambda img, deg: img.rotate(deg, resample=Image.BICUBIC, fillcolor=FILL)),
    "PosterizeIncreasing": (lambda lv, rng: (4 - int(lv / MAX_LEVEL * 4),),
                            lambda img, bits: img if bits >= 8 else ImageOps.posterize(img, bits)),
    "SolarizeIncreasing": (lambda lv, rng: (256 - int(lv / MAX_LEVEL * 256),),
                           lambda img, thresh: ImageOps.solarize(img, thresh)),
    "SolarizeAdd": (lambda lv, rng: (int(lv / MAX_LEVEL * 110),),   # below 128 (the threshold): + add
                    lambda img, add: img.point([min(255, i + add) if i < 128 else i for i in range(256)] * 3)),
    "ColorIncreasing": (lambda lv, rng: (1.0 + _signed(lv / MAX_LEVEL * 0.9, rng),),
                        lambda img, f: ImageEnhance.Color(img).enhance(f)),
    "ContrastIncreasing": (lambda lv, rng: (1.0 + _signed(lv / MAX_LEVEL * 0.9, rng),),
                           lambda img, f: ImageEnhance.Contrast(img).enhance(f)),
    "BrightnessIncreasing": (lambda lv, rng: (1.0 + _signed(lv / MAX_LEVEL * 0.9, rng),),
                             lambda img, f: ImageEnhance.Brightness(img).enhance(f)),
    "SharpnessIncreasing": (lambda lv, rng: (1.0 + _signed(lv / MAX_LEVEL * 0.9, rng),),
                            lambda img, f: ImageEnhance.Sharpness(img).enhance(f)),
    "ShearX": (lambda lv, rng: (_signed(lv / MAX_LEVEL * 0.3, rng),), lambda img, f: _affine(img, (1, f, 0, 0, 1, 0))),
    "ShearY": (lambda lv, rng: (_signed(lv / MAX_LEVEL * 0.3, rng),), lambda img, f: _affine(img, (1, 0, 0, f, 1, 0))),
    "TranslateXRel": (lambda lv, rng: (_signed(lv / MAX_LEVEL * 0.45, rng),),
                      lambda img, pct: _affine(img, (1, 0, pct * img.size[0], 0, 1, 0))),
    "TranslateYRel": (lambda lv, rng: (_signed(lv / MAX_LEVEL * 0.45, rng),),
                      lambda img, pct: _affine(img, (1, 0, 0, 0, 1, pct * img.size[1]))),
}


class ClipRandAugment:
    """RandAugment on a uint8 clip [T, H, W, 3]: `num_ops` ops drawn per clip, each applied to every frame."""

    def __init__(self, magnitude: float = 7.0, num_ops: int = 4, magnitude_std: float = 0.5, prob: float = 0.5):
        self.magnitude, self.num_ops, self.magnitude_std, self.prob = magnitude, num_ops, magnitude_std, prob
        self.names = list(OPS)

    def plan(self, rng: np.random.Generator) -> list[tuple[str, tuple]]:
        """[(op name, its arguments)] for one clip, in order; skipped ops are left out."""
        chosen = rng.integers(0, len(self.names), size=self.num_ops)
        ops = []
        for i in chosen:
            if rng.uniform() > self.prob:
                continue
            level = min(MAX_LEVEL, max(0.0, rng.normal(self.magnitude, self.magnitude_std)))
            name = self.names[i]
            ops.append((name, OPS[name][0](level, rng)))
        return ops

    def __call__(self, clip_THW3: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ops = self.plan(rng)
        return apply_ops(clip_THW3, ops) if ops else clip_THW3


def apply_ops(clip_THW3: np.ndarray, ops) -> np.ndarray:
    frames = []
    for frame in clip_THW3:
        img = Image.fromarray(np.ascontiguousarray(frame))
        for name, args in ops:
            img = OPS[name][1](img, *args)
        frames.append(np.asarray(img))
    return np.stack(frames)


class RandomErasing:
    """Random erasing of a uint8 clip [3, T, H, W] (see the module docstring): one box through every frame."""

    def __init__(self, probability: float, mean, std, min_area: float = 0.02, max_area: float = 1 / 3,
                 min_aspect: float = 0.3, tries: int = 100):
        self.probability, self.min_area, self.max_area, self.tries = probability, min_area, max_area, tries
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
        self.mean_C = np.asarray(mean, dtype=np.float32) * 255.0
        self.std_C = np.asarray(std, dtype=np.float32) * 255.0

    def box(self, rng: np.random.Generator, height: int, width: int):
        """(top, left, h, w) of the erased box, or None (not erased, or no box fits in `tries`)."""
        if rng.uniform() >= self.probability:
            return None
        for _ in range(self.tries):
            area = rng.uniform(self.min_area, self.max_area) * height * width
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if w < width and h < height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        return None

    def __call__(self, u8_3THW: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        C, T, H, W = u8_3THW.shape
        box = self.box(rng, H, W)
        if box is None:
            return u8_3THW
        top, left, h, w = box
        z_CThw = rng.standard_normal((C, T, h, w), dtype=np.float32)
        pix = z_CThw * self.std_C[:, None, None, None] + self.mean_C[:, None, None, None]
        out = u8_3THW.clone()
        out[:, :, top:top + h, left:left + w] = torch.from_numpy(np.clip(np.rint(pix), 0, 255).astype(np.uint8))
        return out


def adjust_hue(img, shift: float):
    """Rotate the hue by `shift` of a turn (in [-0.5, 0.5]): the HSV hue byte moves by shift * 255, wrapping."""
    h, s, v = img.convert("HSV").split()
    h_np = np.asarray(h, dtype=np.uint8) + np.uint8(np.int64(shift * 255) % 256)   # uint8 arithmetic wraps
    return Image.merge("HSV", (Image.fromarray(h_np, "L"), s, v)).convert("RGB")


JITTER_OPS = (lambda img, f: ImageEnhance.Brightness(img).enhance(f),
              lambda img, f: ImageEnhance.Contrast(img).enhance(f),
              lambda img, f: ImageEnhance.Color(img).enhance(f),
              adjust_hue)


class ImageColorAugment:
    """I-JEPA's colour distortion and Gaussian blur on a uint8 image [H, W, 3] (see the module docstring)."""

    def __init__(self, distortion: bool = False, strength: float = 1.0, blur: bool = False):
        if strength < 0:
            raise ValueError(f"color_jitter_strength: must be >= 0, got {strength}")
        self.distortion, self.blur = bool(distortion), bool(blur)
        self.ranges = [(max(0.0, 1 - 0.8 * strength), 1 + 0.8 * strength)] * 3 + [(-0.2 * strength, 0.2 * strength)]

    @property
    def active(self) -> bool:
        return self.distortion or self.blur

    def plan(self, rng: np.random.Generator) -> list[tuple]:
        """[(op, argument)] for one image: ("jitter", [(index, factor)] in order), ("gray",), ("blur", radius)."""
        ops = []
        if self.distortion:
            if rng.uniform() < 0.8:
                order = rng.permutation(4)
                factors = {i: rng.uniform(*r) for i, r in enumerate(self.ranges) if r[0] != r[1]}
                ops.append(("jitter", [(int(i), factors[i]) for i in order if i in factors]))
            if rng.uniform() < 0.2:
                ops.append(("gray",))
        if self.blur and rng.uniform() < 0.5:
            ops.append(("blur", rng.uniform(0.1, 2.0)))
        return ops

    def __call__(self, img_HW3: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ops = self.plan(rng)
        if not ops:
            return img_HW3
        img = Image.fromarray(np.ascontiguousarray(img_HW3))
        for op in ops:
            if op[0] == "jitter":
                for i, f in op[1]:
                    img = JITTER_OPS[i](img, f)
            elif op[0] == "gray":
                img = img.convert("L").convert("RGB")
            else:
                img = img.filter(ImageFilter.GaussianBlur(radius=op[1]))
        return np.asarray(img)
