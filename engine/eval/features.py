"""Frozen features for the evaluations: the encoder of an eval config, the clips of each split as the
reference evaluates them, and their token features cached on disk (or streamed when they do not fit).

    encoder = build_encoder(ec)                                   # frozen, weights from the checkpoint
    train, val = feature_sources(ec, encoder, folder)             # CachedFeatures or StreamedFeatures
    for x_BVSND, y_B in train.batches(epoch=0, batch_size=16, shuffle=True): ...

Every sample's features are [V, S, N, D]: V spatial views (training: one augmented view), S temporal
segments (clips spread over the video), N tokens per clip, D channels. This is the reference's
multi-clip x multi-view evaluation: its wrapper runs each (segment, view) clip through the encoder
alone and, per view, concatenates the segments' tokens for the classifier; at test time it averages the
classifier's softmax over views (and, without attend_across_segments, over segments too).
Test-time views are the reference's: the short side resized to the crop size, V square crops evenly
spaced along the long side (one view: the centre crop of VideoEvalTransform). Training clips take the
training augmentation (random resized crop, flip); the cache keeps `train_augmentations` copies and
epoch e reads copy e % copies, while streaming draws a fresh one every epoch.
Clips are decoded in DataLoader workers; the encoder runs in the main process. In a process group
(the deepspeed launcher, torchrun, srun) each rank extracts its share of the samples into the one cache.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from engine.ac_jepa import load_encoder_weights
from engine.config import ConfigError
from engine.core.io import atomic_write_text
from engine.eval.config import EvalConfig, image_split_folder
from engine.core.world import barrier, from_rank0, world

logger = logging.getLogger(__name__)
CACHE_MARGIN_BYTES = 1 << 30   # free disk left after a cache is written


# ------------------------------------------------------------------------------------------ encoder
def build_encoder(ec: EvalConfig, random_init: bool = False, seed: int = 0):
    """The frozen VisionTransformer of the config, loaded strictly from its checkpoint (the fixed sin-cos
    positions are recomputed for the evaluation's clip size, as the reference keeps its own when shapes
    differ). random_init: the same architecture, untrained (the baseline an encoder has to beat)."""
    from engine.models.vit import VIT_SIZES, VisionTransformer
    e, d = ec.encoder, ec.data
    frames = 1 if ec.is_image and not ec.wrapper.img_as_video_nframes and not e.frames_per_clip else (
        ec.wrapper.img_as_video_nframes or e.frames_per_clip or d.frames_per_clip)
    if e.config is not None:
        from engine.builders import encoder_kwargs
        from engine.config import load_config
        tcfg = load_config(e.config)
        kw = encoder_kwargs(tcfg)
        if ec.is_image and tcfg.is_image:
            frames = 1
        kw.update(img_size=d.resolution, num_frames=frames, use_activation_checkpointing=False)
    else:
        if e.model_name not in VIT_SIZES:
            raise ConfigError(f"model_kwargs.pretrain_kwargs.encoder.model_name: unknown {e.model_name!r}; "
                              f"one of {sorted(VIT_SIZES)}")
        size = dict(VIT_SIZES[e.model_name])
        use_rope = size.pop("use_rope", False) or e.use_rope
        kw = dict(img_size=d.resolution, patch_size=e.patch_size, num_frames=frames, tubelet_size=e.tubelet_size,
                  uniform_power=e.uniform_power, use_rope=use_rope, use_silu=e.use_silu, wide_silu=e.wide_silu,
                  use_sdpa=e.use_sdpa, **size)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = VisionTransformer(**kw)
    if not random_init:
        if ec.checkpoint is None:
            raise ConfigError("model_kwargs.checkpoint: a checkpoint (or a training run folder) is required; "
                              "pass --random-init for an untrained encoder")
        # a checkpoint written by this engine's trainer (a training config given) also holds RNG states
        load_encoder_weights(encoder, ec.checkpoint, e.checkpoint_key, option="model_kwargs.checkpoint",
                             key_option="model_kwargs.pretrain_kwargs.encoder.checkpoint_key",
                             trusted=e.config is not None, keep_own=("pos_embed",))
    encoder.eval().requires_grad_(False)
    return encoder


@torch.no_grad()
def encode(encoder, clips_B3THW, out_layers=None) -> torch.Tensor:
    """Token features [B, N, D]; with out_layers, the listed blocks' normalised outputs concatenated
    along the tokens (the reference's multi-level wrapper)."""
    from engine.models.layers import Tokens
    x = encoder.embed(clips_B3THW)
    if out_layers is None:
        return encoder.forward_dense(x)
    ids = torch.arange(x.shape[1], device=x.device)
    tok = encoder._tokens(ids) if hasattr(encoder, "_tokens") else Tokens(ids)
    outs = []
    for i, blk in enumerate(encoder.blocks):
        x = blk(x, tok)
        if i in out_layers:
            outs.append(encoder.norm(x))
    if len(outs) != len(out_layers):
        raise ConfigError(f"model_kwargs.wrapper_kwargs.out_layers: {out_layers} outside the encoder's "
                          f"{len(encoder.blocks)} blocks")
    return torch.cat(outs, dim=1)


# --------------------------------------------------------------------------------- clips and views
class MultiViewTransform:
    """uint8 clip [T, H, W, 3] -> float32 [V, 3, T, S, S]: the short side resized to S, V square crops
    evenly spaced along the long side (the reference's test-time spatial views)."""

    def __init__(self, crop_size: int, num_views: int, mean=None, std=None):
        from engine.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalize
        self.crop_size, self.num_views = int(crop_size), int(num_views)
        self.normalize = Normalize(mean or IMAGENET_MEAN, std or IMAGENET_STD, channel_dim=-4)

    def boxes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        side = min(height, width)
        step = (max(height, width) - side) // max(1, self.num_views - 1)
        return [(i * step, 0, side, side) if height > width else (0, i * step, side, side)
                for i in range(self.num_views)]

    def __call__(self, clip_THW3: np.ndarray, rng=None) -> torch.Tensor:
        from engine.data.transforms import resize_planar
        views = []
        for top, left, h, w in self.boxes(*clip_THW3.shape[1:3]):
            u8 = resize_planar(clip_THW3[:, top:top + h, left:left + w], (self.crop_size, self.crop_size), False)
            views.append(self.normalize(u8.contiguous()))
        return torch.stack(views)


class ClipViews(torch.utils.data.Dataset):
    """(float32 [V, S, 3, T, H, W], label) for item i of a VideoDataset / ImageFolderDataset, keyed
    (i, seed) as the engine's datasets; images are repeated over `frames` frames (0: kept 2-D)."""

    def __init__(self, dataset, seed: int, frames: int = 0):
        self.dataset, self.seed, self.frames = dataset, seed, frames

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, label = self.dataset[(i, self.seed + i)]
        clips = x if isinstance(x, list) else [x]                      # segments
        segs = [c if c.dim() == 5 else c.unsqueeze(0) for c in clips]  # each [V, 3, T, H, W] (or [V,3,H,W])
        x = torch.stack(segs, dim=1)                                   # [V, S, ...]
        if x.dim() == 5 and self.frames:                               # images into a video encoder
            x = x.unsqueeze(3).expand(-1, -1, -1, self.frames, -1, -1).contiguous()
        return x, label


def split_dataset(ec: EvalConfig, split: str, train_augment: bool):
    """The split's dataset: clips as the reference evaluates them (module docstring)."""
    from engine.data.datasets import ImageFolderDataset, VideoDataset
    from engine.data.transforms import ImageEvalTransform, ImageTransform, VideoEvalTransform, VideoTransform
    d = ec.data
    mean, std = (d.normalization or (None, None))
    norm = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    if ec.is_image:
        tf = ImageTransform(d.resolution, scale=tuple(d.random_resize_scale), ratio=tuple(d.random_resize_aspect_ratio),
                            horizontal_flip=d.random_horizontal_flip, **norm) if train_augment \
            else ImageEvalTransform(d.resolution, **norm)
        return ImageFolderDataset(image_split_folder(ec, split), transform=tf)
    path = d.dataset_train if split == "train" else d.dataset_val
    if path is None:
        raise ConfigError(f"experiment.data.dataset_{split}: a CSV of 'path label' lines is required")
    if train_augment:
        tf = VideoTransform(d.resolution, random_resize_scale=tuple(d.random_resize_scale),
                            random_resize_aspect_ratio=tuple(d.random_resize_aspect_ratio),
                            horizontal_flip=d.random_horizontal_flip, **norm)
    elif d.num_views_per_segment > 1:
        tf = MultiViewTransform(d.resolution, d.num_views_per_segment, **norm)
    else:
        tf = VideoEvalTransform(d.resolution, **norm)
    segments = d.num_segments if (split != "train" or ec.optimization.attend_across_segments) else 1
    ds = VideoDataset([path], frames_per_clip=d.frames_per_clip, frame_step=d.frame_step, duration=d.clip_duration,
                      num_clips=segments, transform=tf, random_clip_sampling=train_augment, allow_clip_overlap=True)
    if isinstance(tf, MultiViewTransform):
        ds.decode_to_size = False   # the views need the whole frame
    return ds


# ------------------------------------------------------------------------------------------ sources
def _extract_batches(encoder, dataset, seed, batch_size, num_workers, frames, out_layers, order=None):
    """Yield (features [B, V, S, N, D] float32, labels [B]) in dataset order (or `order`)."""
    views = ClipViews(dataset, seed, frames)
    if order is not None:
        views = torch.utils.data.Subset(views, list(order))
    loader = torch.utils.data.DataLoader(views, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         persistent_workers=False)
    for x, y in loader:
        B, V, S = x.shape[:3]
        feats = encode(encoder, x.flatten(0, 2), out_layers).float()
        yield feats.view(B, V, S, *feats.shape[1:]), torch.as_tensor(y).long()


class CachedFeatures:
    """Features of one split in a .npy file on disk (memory-mapped) plus its labels: [M, V, S, N, D]."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.x = np.load(self.path, mmap_mode="r")
        self.y = torch.from_numpy(np.load(self.path.with_suffix(".labels.npy")))
        self.copies = int(json.loads(self.path.with_suffix(".json").read_text())["copies"])

    def __len__(self):
        return len(self.y)

    def batches(self, epoch: int = 0, batch_size: int = 64, shuffle: bool = False, seed: int = 0):
        M = len(self.y)
        order = torch.randperm(M, generator=torch.Generator().manual_seed(seed * 100003 + epoch)) if shuffle \
            else torch.arange(M)
        V = self.x.shape[1] // self.copies
        c = epoch % self.copies   # the training copy of this epoch (test sets: one copy of V views)
        for i in range(0, M, batch_size):
            idx = np.sort(order[i:i + batch_size].numpy())
            x = torch.from_numpy(np.ascontiguousarray(self.x[idx, c * V:(c + 1) * V]))
            yield x, self.y[idx]


class StreamedFeatures:
    """Features of one split computed on every pass (when a cache does not fit on disk)."""

    def __init__(self, encoder, dataset, *, seed, batch_size, num_workers, frames, out_layers, fresh_each_epoch):
        self.encoder, self.dataset, self.seed = encoder, dataset, seed
        self.kw = dict(num_workers=num_workers, frames=frames, out_layers=out_layers)
        self.extract_batch_size = batch_size
        self.fresh_each_epoch = fresh_each_epoch
        self.y = torch.as_tensor(np.asarray(dataset.labels)).long()

    def __len__(self):
        return len(self.dataset)

    def batches(self, epoch: int = 0, batch_size: int = 64, shuffle: bool = False, seed: int = 0):
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist() \
            if shuffle else None
        s = self.seed + (epoch * 7919 if self.fresh_each_epoch else 0)
        yield from _extract_batches(self.encoder, self.dataset, s, batch_size, order=order, **self.kw)


def _cache_key(ec: EvalConfig, split: str, copies: int, random_init: bool, seed: int) -> str:
    ck = Path(ec.checkpoint) if ec.checkpoint else None
    stamp = (str(ck.resolve()), ck.stat().st_mtime_ns) if ck is not None and ck.exists() else None
    blob = json.dumps([split, copies, random_init, seed, stamp, ec.to_dict()["data"], ec.to_dict()["encoder"],
                       ec.to_dict()["wrapper"], ec.optimization.attend_across_segments], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def feature_sources(ec: EvalConfig, encoder, folder, *, random_init: bool = False, seed: int = 0, log=print):
    """(train, val) feature sources: cached on disk under folder/features/ when they fit (cache: auto),
    or always, or never (streamed). A cache written earlier for the same data and checkpoint is reused."""
    f = ec.features
    frames = encoder.num_frames if (ec.is_image and encoder.is_video) else 0
    out = {}
    for split, train_aug in (("train", True), ("val", False)):
        ds = split_dataset(ec, split, train_aug)
        copies = f.train_augmentations if train_aug else 1
        kw = dict(seed=seed + (0 if train_aug else 1_000_003), batch_size=f.batch_size, num_workers=f.num_workers,
                  frames=frames, out_layers=ec.wrapper.out_layers)
        V = 1 if train_aug or ec.is_image else ec.data.num_views_per_segment
        S = 1 if ec.is_image else ds.num_clips
        N = encoder.num_patches * len(ec.wrapper.out_layers or [0])
        shape_VSND = (V, S, N, encoder.embed_dim)
        need = 4 * math.prod(shape_VSND) * len(ds) * copies
        cache_dir = Path(folder) / "features"
        cache_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(cache_dir).free
        use_cache = from_rank0(f.cache == "always" or (f.cache == "auto" and need + CACHE_MARGIN_BYTES < free))
        if not use_cache:
            log(f"{split}: streaming features ({need / 2**30:.1f} GiB would not fit on disk, {free / 2**30:.1f} "
                f"GiB free)" if f.cache == "auto" else f"{split}: streaming features (cache: never)")
            out[split] = StreamedFeatures(encoder, ds, fresh_each_epoch=train_aug, **kw)
            continue
        path = cache_dir / f"{split}_{_cache_key(ec, split, copies, random_init, seed)}.npy"
        if not from_rank0(path.with_suffix(".json").exists()):
            log(f"{split}: extracting features of {len(ds)} samples x {copies} into {path} ({need / 2**20:.0f} MiB)")
            _write_cache(path, encoder, ds, copies, kw, shape_VSND)
        else:
            log(f"{split}: reusing cached features {path}")
        out[split] = CachedFeatures(path)
    return out["train"], out["val"]


def _write_cache(path: Path, encoder, ds, copies: int, kw: dict, shape_VSND) -> None:
    """Features of every sample into one .npy; in a process group, rank r encodes samples r, r + W, ...
    into the same file (a folder every rank sees), and rank 0 publishes it when all are done. A sample's
    clips depend on its index and seed only, so the file is the one a single process writes."""
    rank, size = world()
    V = shape_VSND[0]
    tmp, tmp_labels = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.stem}.labels.tmp")
    if rank == 0:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(ds), copies * V, *shape_VSND[1:]))
        np.lib.format.open_memmap(tmp_labels, mode="w+", dtype=np.int64, shape=(len(ds),))
    barrier()
    x, labels = np.load(tmp, mmap_mode="r+"), np.load(tmp_labels, mmap_mode="r+")
    mine = list(range(rank, len(ds), size))
    for c in range(copies):
        i = 0
        kwc = dict(kw, seed=kw["seed"] + c * 7919)   # copy c is the streamed source's epoch c
        for feats, y in _extract_batches(encoder, ds, order=mine, **kwc):
            if tuple(feats.shape[1:]) != tuple(shape_VSND):
                raise RuntimeError(f"features of shape {tuple(feats.shape[1:])}, expected {tuple(shape_VSND)}")
            rows = mine[i:i + len(y)]
            x[rows, c * V:(c + 1) * V] = feats.numpy()
            labels[rows] = y.numpy()
            i += len(y)
    x.flush()
    labels.flush()
    del x, labels
    barrier()
    if rank == 0:   # the .json last: it marks a complete cache
        os.replace(tmp_labels, path.with_suffix(".labels.npy"))
        os.replace(tmp, path)
        atomic_write_text(path.with_suffix(".json"), json.dumps({"copies": copies, "samples": len(ds)}))
    barrier()


def pooled(source, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Features averaged over tokens and segments, then over views: [M, D] (kNN, linear probe, embed)."""
    xs, ys = [], []
    for x, y in source.batches(epoch=0, batch_size=batch_size):
        xs.append(x.mean(dim=(2, 3)).mean(1))
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def num_classes_of(ec: EvalConfig, *label_sets) -> int:
    if ec.data.num_classes is not None:
        return ec.data.num_classes
    return int(max(int(y.max()) for y in label_sets)) + 1
