"""The reference's extra video augmentations (engine.data.augment, VideoTransform's auto_augment /
motion_shift / reprob), data.num_clips > 1, data.filter_short_videos, checked against their definitions."""
import math

import numpy as np
import pytest
import torch

from engine.data.augment import OPS, ClipRandAugment, RandomErasing, apply_ops
from engine.data.transforms import IMAGENET_MEAN, IMAGENET_STD, VideoTransform, motion_shift_boxes, random_crop_box


def _clip(T=4, H=24, W=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (T, H, W, 3), dtype=np.uint8)


@pytest.mark.parametrize("name,args,want", [
    ("Invert", (), lambda x: 255 - x),
    ("SolarizeIncreasing", (100,), lambda x: np.where(x >= 100, 255 - x, x)),
    ("SolarizeAdd", (30,), lambda x: np.where(x < 128, np.minimum(255, x.astype(int) + 30), x)),
    ("PosterizeIncreasing", (2,), lambda x: x & 0b11000000),
    ("BrightnessIncreasing", (0.5,), lambda x: np.floor(x * 0.5 + 0.5)),
    ("TranslateXRel", (0.25,), lambda x: np.concatenate([x[:, :, 8:], np.full_like(x[:, :, :8], 128)], axis=2)),
    ("TranslateYRel", (-0.25,), lambda x: np.concatenate([np.full_like(x[:, :6], 128), x[:, :-6]], axis=1)),
])
def test_randaugment_ops_match_their_definitions(name, args, want):
    clip = _clip()
    got = apply_ops(clip, [(name, args)])
    assert got.shape == clip.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want(clip).astype(int)).max() <= 1, name


def test_randaugment_draws_once_per_clip_and_applies_to_every_frame():
    ra = ClipRandAugment()
    frame = _clip(T=1)
    clip = np.repeat(frame, 5, axis=0)                      # five identical frames stay identical
    changed = 0
    for seed in range(40):
        out = ra(clip, np.random.default_rng(seed))
        assert all(np.array_equal(out[0], out[t]) for t in range(1, 5))
        changed += not np.array_equal(out, clip)
    # 4 ops at p = 0.5 each: a clip is left as it is with probability 1/16 (+ ops that change nothing)
    assert 28 <= changed <= 40
    # the plan: ops drawn from the 15 "increasing" ops, magnitudes around 7 (signed ops: +-)
    plans = [ra.plan(np.random.default_rng(s)) for s in range(200)]
    assert {n for p in plans for n, _ in p} == set(OPS) and len(OPS) == 15
    assert np.mean([len(p) for p in plans]) == pytest.approx(2.0, abs=0.25)
    rot = [abs(a[0]) for p in plans for n, a in p if n == "Rotate"]
    assert 0.6 * 30 < np.mean(rot) < 0.8 * 30 and max(rot) <= 30


def test_random_erasing_box_and_noise():
    er = RandomErasing(1.0, IMAGENET_MEAN, IMAGENET_STD)
    u8 = torch.full((3, 6, 40, 40), 7, dtype=torch.uint8)
    out = er(u8, np.random.default_rng(0))
    box_HW = (out != 7).any(0).any(0)                        # erased pixels (one box through every frame)
    rows, cols = box_HW.any(1).nonzero().flatten(), box_HW.any(0).nonzero().flatten()
    h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    assert 0.02 * 1600 * 0.8 <= h * w <= 1600 / 3 * 1.2 and h < 40 and w < 40
    region = out[:, :, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].float()
    assert not torch.equal(region[:, 0], region[:, 1])       # fresh noise per frame
    z = (region / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    assert abs(float(z.mean())) < 0.1 and 0.8 < float(z.std()) < 1.05   # N(0, 1) in normalised units (clipped)
    never = RandomErasing(0.0, IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(never(u8, np.random.default_rng(0)), u8)
    hits = sum(RandomErasing(0.25, IMAGENET_MEAN, IMAGENET_STD).box(np.random.default_rng(s), 40, 40) is not None
               for s in range(400))
    assert 70 <= hits <= 130


def test_motion_shift_interpolates_two_crop_boxes():
    boxes = motion_shift_boxes(np.random.default_rng(3), 48, 64, 8, (0.3, 1.0), (0.75, 1.35))
    rng = np.random.default_rng(3)
    first, last = random_crop_box(rng, 48, 64, (0.3, 1.0), (0.75, 1.35)), random_crop_box(rng, 48, 64, (0.3, 1.0),
                                                                                          (0.75, 1.35))
    assert tuple(boxes[0]) == first and tuple(boxes[-1]) == last
    for t in range(8):
        for i in range(4):
            exact = first[i] + (last[i] - first[i]) * t / 7
            assert boxes[t, i] == math.floor(exact + 1e-4) or boxes[t, i] == math.floor(exact - 1e-4)
    tf = VideoTransform(16, motion_shift=True, horizontal_flip=False, dtype=torch.uint8)
    clip = np.broadcast_to(np.arange(64, dtype=np.uint8)[None, None, :, None], (8, 48, 64, 3))
    out = tf(np.ascontiguousarray(clip), np.random.default_rng(3))
    assert out.shape == (3, 8, 16, 16)
    # column values follow each frame's own box: the leftmost column tracks the box's left edge
    left = out[0, :, 0, 0].int()
    assert (left - torch.from_numpy(boxes[:, 1]).int()).abs().max() <= 2


def test_video_transform_wires_the_augmentations():
    clip = _clip(T=4, H=32, W=32)
    plain = VideoTransform(16, dtype=torch.uint8)
    assert plain.crops_while_decoding
    assert not VideoTransform(16, auto_augment=True).crops_while_decoding
    assert not VideoTransform(16, motion_shift=True).crops_while_decoding
    erased = VideoTransform(16, reprob=1.0, dtype=torch.uint8)
    assert erased.crops_while_decoding                      # erasing follows the crop: a fused reader keeps it
    a, b = plain(clip, np.random.default_rng(1)), erased(clip, np.random.default_rng(1))
    assert not torch.equal(a, b) and (a != b).float().mean() < 0.5   # same crop, one box erased
    with pytest.raises(ValueError, match="reprob"):
        VideoTransform(16, reprob=1.5)


def test_config_keys_reach_the_transform_and_the_loader(tmp_path):
    from engine.builders import build_dataset, build_loader
    from engine.config import load_config
    from engine.datagen.synthetic import generate_split
    generate_split(tmp_path, train=6, val=2, num_frames=12, size=32, seed=0)
    base = [f"data.datasets=[{tmp_path / 'train.csv'}]", "data.num_workers=0", "data.batch_size=2",
            "data.num_frames=4", "data.crop_size=32"]
    cfg = load_config("configs/tiny_cpu.yaml", base + ["data_aug.auto_augment=true", "data_aug.motion_shift=true",
                                                       "data_aug.reprob=0.3", "data.filter_short_videos=true"])
    ds = build_dataset(cfg)
    assert isinstance(ds.transform.auto_augment, ClipRandAugment) and ds.transform.motion_shift
    assert ds.transform.erase.probability == 0.3 and ds.filter_short_videos
    x, _ = ds[(0, 1)]
    assert x.shape == (3, 4, 32, 32)
    long = load_config("configs/tiny_cpu.yaml", base + ["data.filter_short_videos=true", "data.sampling_rate=4"])
    ds = build_dataset(long)                                  # 12-frame videos, clips spanning 4 x 4 frames
    with pytest.raises(RuntimeError, match="consecutive files failed"):
        ds[(0, 1)]
    assert ds.skipped >= 1
    assert build_dataset(load_config("configs/tiny_cpu.yaml", base + ["data.sampling_rate=4"]))[(0, 1)][0].shape[1] == 4
    for flag in (True, False):
        cfg = load_config("configs/tiny_cpu.yaml", base + ["data.num_workers=1", f"data.persistent_workers={flag}"])
        assert build_loader(cfg, build_dataset(cfg), "cpu")._dl.persistent_workers is flag


def test_num_clips_concatenates_along_the_batch_and_trains(tmp_path):
    from engine.builders import build_dataset, build_loader, build_mask_sampler
    from engine.config import load_config
    from engine.datagen.synthetic import generate_split
    from engine.runtime.trainer import Trainer
    generate_split(tmp_path, train=8, val=2, num_frames=24, size=32, seed=0)
    over = [f"data.datasets=[{tmp_path / 'train.csv'}]", "data.num_workers=0", "data.batch_size=2",
            "data.num_frames=4", "data.crop_size=32", "data.num_clips=2", "model.depth=1", "model.embed_dim=48",
            "model.num_heads=2", "model.pred_depth=1", "model.pred_embed_dim=32", "model.pred_num_heads=2",
            "optimization.ipe=2", "optimization.epochs=1", "logging.tensorboard=false"]
    cfg = load_config("configs/tiny_cpu.yaml", over)
    ds = build_dataset(cfg)
    loader = build_loader(cfg, ds, "cpu", mask_sampler=build_mask_sampler(cfg))
    clips, labels, masks = next(iter(loader))[:3]
    assert clips.shape == (4, 3, 4, 32, 32) and labels.shape == (4,) and masks.batch_size == 4
    (i0, s0, _), (i1, s1, _) = next(iter(loader.sampler))
    first, second = ds[(i0, s0)][0], ds[(i1, s1)][0]          # two clips per video
    for k in range(2):                                         # clip-major: [clip k of sample 0, of sample 1]
        assert torch.equal(clips[2 * k], first[k]) and torch.equal(clips[2 * k + 1], second[k])
    for sets in masks.ctx + masks.tgt:                         # each clip with its video's masks
        assert torch.equal(sets[0], sets[2]) and torch.equal(sets[1], sets[3])
    summary = Trainer(cfg, tmp_path / "run", progress=False).fit(max_steps=2)
    assert summary["steps"] == 2 and math.isfinite(summary["mean_loss_last_20"])


def test_ijepa_colour_distortion_and_blur_follow_their_definitions():
    from PIL import Image, ImageFilter
    from engine.data.augment import ImageColorAugment, adjust_hue
    img = _clip(T=1, H=20, W=20)[0]
    # hue: the HSV hue byte moves by shift * 255 (wrapping); saturation and value stay
    hsv = np.asarray(Image.fromarray(img).convert("HSV")).astype(int)
    back = np.asarray(adjust_hue(Image.fromarray(img), 0.25).convert("HSV")).astype(int)
    moved = (back[..., 0] - hsv[..., 0] - 63 + 128) % 256 - 128      # 0: moved by exactly 63 levels
    assert np.mean((np.abs(moved) <= 2) | (hsv[..., 1] < 16)) > 0.95     # (RGB rounding; grey pixels have no hue)
    # the plans: jitter in 80% of images, each factor inside its range, grayscale in 20%, blur in 50%
    aug = ImageColorAugment(distortion=True, strength=0.5, blur=True)
    plans = [aug.plan(np.random.default_rng(s)) for s in range(500)]
    jitters = [p[0][1] for p in plans if p and p[0][0] == "jitter"]
    assert 0.74 < len(jitters) / 500 < 0.86 and all(sorted(i for i, _ in j) == [0, 1, 2, 3] for j in jitters)
    assert all(0.6 <= f <= 1.4 for j in jitters for i, f in j if i < 3) and all(-0.1 <= f <= 0.1 for j in jitters
                                                                                for i, f in j if i == 3)
    assert 0.15 < np.mean([any(o[0] == "gray" for o in p) for p in plans]) < 0.25
    radii = [o[1] for p in plans for o in p if o[0] == "blur"]
    assert 0.44 < len(radii) / 500 < 0.56 and 0.1 <= min(radii) and max(radii) <= 2.0
    # grayscale is PIL's "L" on every channel; blur is PIL's Gaussian blur of the drawn radius
    gray = ImageColorAugment(distortion=True, strength=0.0)
    seed = next(s for s in range(100) if gray.plan(np.random.default_rng(s)) == [("gray",)])
    out = gray(img, np.random.default_rng(seed))
    assert np.array_equal(out[..., 0], np.asarray(Image.fromarray(img).convert("L"))) and (out == out[..., :1]).all()
    blur = ImageColorAugment(blur=True)
    seed = next(s for s in range(100) if blur.plan(np.random.default_rng(s)))
    (_, radius), = blur.plan(np.random.default_rng(seed))
    want = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(radius=radius)))
    assert np.array_equal(blur(img, np.random.default_rng(seed)), want)
