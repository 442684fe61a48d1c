"""Clip and image augmentations with an explicit np.random.Generator (deterministic per sample).

Usage:
    tf = VideoTransform(crop_size=64, random_resize_scale=(0.3, 1.0))
    x_CTHW = tf(clip_THW3_uint8, np.random.default_rng(seed))   # float32 [3, T, 64, 64], normalised
    x_CTHW = VideoEvalTransform(crop_size=64)(clip_THW3_uint8)    # resize short side + centre crop
    x_CHW = ImageTransform(crop_size=64, scale=(0.3, 1.0))(img_HW3_uint8, rng)   # I-JEPA: one frame
    x_CHW = ImageEvalTransform(crop_size=64)(img_HW3_uint8)
    u_CTHW = tf.as_uint8()(clip_THW3_uint8, rng)                   # the same clip as uint8 pixels ...
    x_CTHW = tf.normalize(u_CTHW.to(device))                       # ... normalised later: the same floats

Reference semantics (V-JEPA app/vjepa/transforms.py): ONE random resized crop box per clip (area scale,
log-uniform aspect ratio, 10 tries, then a centre crop), bilinear resize (align_corners=False, no
antialias), a horizontal flip with p=0.5, then (x/255 - mean) / std with ImageNet mean and std.
Unlike the reference, the crop is cut from the uint8 clip and resized in uint8; only the output-sized
clip is ever float: the full-resolution clip is never materialised in float (and the resize rounds to
the nearest uint8 level, <= 1/255 from a float resize). The loader (engine.data.loader) uses the uint8
twin (`as_uint8()`) in its workers and normalises whole batches where they are consumed: at 224 px a
float32 clip is 9.6 MB against 2.4 MB of uint8, and the normalisation costs less on the training device.
"""
from __future__ import annotations

import copy
import math
import mmap

import numpy as np
import torch
import torch.nn.functional as F

import kernels
from engine.data.augment import ClipRandAugment, ImageColorAugment, RandomErasing

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


def motion_shift_boxes(rng: np.random.Generator, height: int, width: int, num_frames: int, scale, ratio) -> np.ndarray:
    """int64 [T, 4] (top, left, h, w) per frame (data_aug.motion_shift, the reference's
    random_resized_crop_with_shift): random resized crop boxes for the first and the last frame, the
    frames between on the line joining them (float32 steps truncated to whole pixels, as the reference)."""
    a = random_crop_box(rng, height, width, scale, ratio)
    b = random_crop_box(rng, height, width, scale, ratio)
    steps_4T = [torch.linspace(u, v, steps=num_frames) for u, v in zip(a, b)]
    return torch.stack(steps_4T, dim=1).to(torch.int64).numpy()


class Normalize:
    """uint8 pixels -> (x/255 - mean) / std, float32 (or `dtype`), on the tensor's own device.

    channel_dim: where the 3 channels are counted from the end: -4 for clips ([3, T, H, W] and batches
    [B, 3, T, H, W]), -3 for images ([3, H, W], [B, 3, H, W]). Computed as
    x * (1/(255 std)) + (-mean/std) (kernels.normalize_u8: on CPU one pass from uint8, the product
    rounded then the sum, the same floats as a conversion, a multiply and an add in turn).
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, channel_dim: int = -4):
        if channel_dim not in (-4, -3):
            raise ValueError(f"channel_dim must be -4 (clips) or -3 (images), got {channel_dim}")
        std_C = torch.tensor(std, dtype=torch.float32)
        self.scale_C = 1.0 / (255.0 * std_C)
        self.bias_C = -torch.tensor(mean, dtype=torch.float32) / std_C
        self.channel_dim = channel_dim

    def __call__(self, x_u8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if x_u8.dtype != torch.uint8:
            raise TypeError(f"Normalize expects uint8 pixels, got {x_u8.dtype} (already normalised?)")
        if x_u8.dim() < -self.channel_dim or x_u8.shape[self.channel_dim] != 3:
            raise ValueError(f"Normalize expects 3 channels at dim {self.channel_dim}, got shape {tuple(x_u8.shape)}")
        scale_C, bias_C = self._constants(x_u8.device)
        x = kernels.normalize_u8(x_u8, scale_C, bias_C, channel_dim=self.channel_dim,
                                 out=_empty_f32(x_u8.shape, x_u8.device))
        return x if dtype == torch.float32 else x.to(dtype)

    def _constants(self, device):
        """(scale_C, bias_C) on `device`, copied there once (not a host-to-device copy per batch)."""
        if device.type == "cpu":
            return self.scale_C, self.bias_C
        cache = self.__dict__.setdefault("_on_device", {})
        if device not in cache:
            cache[device] = (self.scale_C.to(device), self.bias_C.to(device))
        return cache[device]


_HUGEPAGE_MIN_BYTES = 4 << 20


def _empty_f32(shape, device) -> torch.Tensor:
    """torch.empty(shape, float32); on CPU, large ones in memory advised to use transparent huge pages.

    A fresh batch (38.5 MB for 4 clips at 224 px) is mapped anew on every allocation, and faulting it
    in 4 KiB pages can cost more than the conversion itself; 2 MiB pages take 512x fewer faults.
    The tensor owns its mapping (unmapped when the tensor is freed); where huge pages are off, the
    advice is a no-op.
    """
    n = math.prod(shape)
    if torch.device(device).type != "cpu" or n * 4 < _HUGEPAGE_MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=torch.float32, device=device)
    buf = mmap.mmap(-1, n * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(buf, dtype=torch.float32).view(shape)


def resize_planar(region_THW3: np.ndarray, out_hw, flip: bool) -> torch.Tensor:
    """uint8 [T, h, w, 3] region -> uint8 [3, T, H, W]: bilinear resize (no antialias), optional flip.

    The result is a [3, T, H, W] view of channels-last memory ([T, H, W, 3]): whoever needs it planar
    makes it so in a pass it does anyway (the loader's batch stack, the float conversion), ~30% cheaper
    than a separate planar copy here.
    """
    if not region_THW3.flags.writeable:  # e.g. np.asarray(PIL image): torch wants writable memory to share
        region_THW3 = region_THW3.copy()
    x_T3hw = torch.from_numpy(region_THW3).permute(0, 3, 1, 2)  # a uint8 view with channels-last strides
    resized = tuple(x_T3hw.shape[-2:]) != tuple(out_hw)
    if resized:
        # resized in uint8: torch's vectorised channels-last uint8 bilinear kernel (no antialias, like the
        # float path) moves a quarter of the bytes of converting first; it rounds to the nearest level
        # (<= 1/255 off)
        x_T3hw = F.interpolate(x_T3hw, size=tuple(out_hw), mode="bilinear", align_corners=False)
    if flip:
        x_T3hw = x_T3hw.flip(-1)
    elif not resized:  # still a view of the caller's array: own the pixels
        x_T3hw = x_T3hw.clone(memory_format=torch.channels_last)
    return x_T3hw.permute(1, 0, 2, 3)


class _Output:
    """dtype handling shared by the transforms: float32 = normalised here, uint8 = normalised later."""

    def _init_output(self, mean, std, dtype, channel_dim: int) -> None:
        if dtype not in (torch.float32, torch.uint8):
            raise ValueError(f"transform dtype must be torch.float32 (normalised) or torch.uint8 (raw pixels), "
                             f"got {dtype}")
        self.normalize, self.dtype = Normalize(mean, std, channel_dim=channel_dim), dtype

    def as_uint8(self):
        """A copy of this transform that returns the uint8 pixels; its `normalize` gives the floats later."""
        twin = copy.copy(self)
        twin.dtype = torch.uint8
        return twin

    def _out(self, u8: torch.Tensor) -> torch.Tensor:
        return u8 if self.dtype == torch.uint8 else self.normalize(u8)

    def finish(self, u8: torch.Tensor, rng: np.random.Generator | None = None) -> torch.Tensor:
        """The output of a clip already cropped, resized and flipped (by a reader that crops while it
        decodes, from `plan`'s box): what the transform does after the crop."""
        return self._out(u8)


class VideoTransform(_Output):
    """Training augmentation: one random resized crop per clip, flip, normalise -> float32 [3, T, S, S].

    dtype=torch.uint8 returns the cropped, resized, flipped uint8 clip [3, T, S, S] instead (4x fewer
    bytes between processes); `self.normalize(x)` then gives the same float32 values, e.g. on the GPU.
    The reference's other augmentations (engine.data.augment), in its order: auto_augment (RandAugment on
    the full frames), motion_shift (a crop box per frame instead of one per clip), then the crop, resize
    and flip, then reprob (random erasing).
    """

    def __init__(self, crop_size: int = 224, random_resize_scale=(0.3, 1.0), random_resize_aspect_ratio=(3 / 4, 4 / 3),
                 horizontal_flip: bool = True, mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype=torch.float32,
                 auto_augment: bool = False, motion_shift: bool = False, reprob: float = 0.0):
        self.crop_size = int(crop_size)
        self.scale = tuple(random_resize_scale)
        self.ratio = tuple(random_resize_aspect_ratio)
        self.horizontal_flip = horizontal_flip
        self._init_output(mean, std, dtype, channel_dim=-4)
        self.auto_augment = ClipRandAugment() if auto_augment else None
        self.motion_shift = bool(motion_shift)
        if not 0.0 <= reprob <= 1.0:
            raise ValueError(f"reprob: expected a probability in [0, 1], got {reprob}")
        self.erase = RandomErasing(reprob, mean, std) if reprob > 0 else None

    @property
    def crops_while_decoding(self) -> bool:
        """Whether a reader may crop while it decodes (plan, then finish): not when an augmentation needs
        the full frames (auto_augment) or a box per frame (motion_shift)."""
        return self.auto_augment is None and not self.motion_shift

    def plan(self, height: int, width: int, rng: np.random.Generator) -> tuple[tuple[int, int, int, int], bool]:
        """((top, left, h, w), flip) for a clip of height x width: the draws __call__ makes, in its order.
        A reader that crops while it decodes (VideoReader.decode_resized) takes its box from here."""
        box = random_crop_box(rng, height, width, self.scale, self.ratio)
        return box, bool(self.horizontal_flip and rng.uniform() < 0.5)

    def finish(self, u8_3TSS: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """After the crop, resize and flip: random erasing (from a child stream of `rng`, so a reader
        that crops while decoding draws the same boxes), then the output dtype."""
        if self.erase is not None:
            u8_3TSS = self.erase(u8_3TSS, rng.spawn(1)[0])
        return self._out(u8_3TSS)

    def __call__(self, clip_THW3: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        T, H, W, _ = clip_THW3.shape
        size = (self.crop_size, self.crop_size)
        if self.auto_augment is not None:
            clip_THW3 = self.auto_augment(clip_THW3, rng)
        if self.motion_shift:
            boxes_T4 = motion_shift_boxes(rng, H, W, T, self.scale, self.ratio)
            flip = bool(self.horizontal_flip and rng.uniform() < 0.5)
            frames = [resize_planar(clip_THW3[t:t + 1, top:top + h, left:left + w], size, flip)
                      for t, (top, left, h, w) in enumerate(boxes_T4)]
            return self.finish(torch.cat(frames, dim=1), rng)
        (top, left, h, w), flip = self.plan(H, W, rng)
        region = clip_THW3[:, top:top + h, left:left + w]
        return self.finish(resize_planar(region, size, flip), rng)


class VideoEvalTransform(_Output):
    """Evaluation: resize the short side to crop_size*256/224, centre crop crop_size -> float32 [3, T, S, S].

    Implemented as crop-then-resize: the centre box in source pixels that the resized centre crop
    would cover is cut first, so only that region is resized (same result up to border rounding).
    dtype=torch.uint8: uint8 [3, T, S, S], normalised later by `self.normalize`.
    """

    def __init__(self, crop_size: int = 224, short_side_size: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 dtype=torch.float32):
        self.crop_size = int(crop_size)
        self.short_side_size = short_side_size or int(crop_size * 256 / 224)
        self._init_output(mean, std, dtype, channel_dim=-4)

    def plan(self, height: int, width: int, rng: np.random.Generator | None = None):
        """((top, left, h, w), False): the centre box in source pixels (no random draws)."""
        side = min(height, width) * self.crop_size / self.short_side_size  # source pixels per output crop side
        h = w = max(1, int(round(side)))
        return ((height - h) // 2, (width - w) // 2, h, w), False

    def __call__(self, clip_THW3: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        T, H, W, _ = clip_THW3.shape
        (top, left, h, w), _ = self.plan(H, W)
        region = clip_THW3[:, top:top + h, left:left + w]
        return self._out(resize_planar(region, (self.crop_size, self.crop_size), False))


class ImageTransform(_Output):
    """I-JEPA augmentation for one uint8 image [H, W, 3] -> float32 [3, S, S] (a one-frame VideoTransform).

    dtype=torch.uint8: uint8 [3, S, S], normalised later by `self.normalize` (channel_dim -3).
    """

    def __init__(self, crop_size: int = 224, scale=(0.3, 1.0), ratio=(3 / 4, 4 / 3), horizontal_flip: bool = True,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype=torch.float32, color_distortion: bool = False,
                 color_jitter_strength: float = 1.0, gaussian_blur: bool = False):
        self.video = VideoTransform(crop_size, scale, ratio, horizontal_flip, mean, std, dtype=torch.uint8)
        self._init_output(mean, std, dtype, channel_dim=-3)
        self.color = ImageColorAugment(color_distortion, color_jitter_strength, gaussian_blur)

    def __call__(self, img_HW3: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        u8_3SS = self.video(img_HW3[None], rng)[:, 0]
        if self.color.active:   # after the crop and flip, as the reference
            u8_3SS = torch.from_numpy(self.color(u8_3SS.permute(1, 2, 0).numpy(), rng).copy()).permute(2, 0, 1)
        return self._out(u8_3SS)


class ImageEvalTransform(_Output):
    """Evaluation for one image: resize short side to crop_size*256/224, centre crop -> float32 [3, S, S]."""

    def __init__(self, crop_size: int = 224, short_side_size: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 dtype=torch.float32):
        self.video = VideoEvalTransform(crop_size, short_side_size, mean, std, dtype=torch.uint8)
        self._init_output(mean, std, dtype, channel_dim=-3)

    def __call__(self, img_HW3: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        return self._out(self.video(img_HW3[None])[:, 0])
