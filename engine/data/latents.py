"""A latent cache: a frozen encoder's latents of every frame of a data set, read in place of the frames.

A world model trained on a frozen encoder (app vjepa_droid: the V-JEPA 2-AC step; app hjepa: its level 1)
encodes each frame alone, and with a fixed crop (data_aug.random_resize_scale and random_resize_aspect_ratio
both [1.0, 1.0]) a frame's latents depend only on the video, the frame and the flip. The cache holds them
once (both orientations where data_aug.horizontal_flip is on) and training reads them instead of decoding
and encoding every clip:

    python -m engine.datagen latents --config configs/ac_lattice_tiny_cpu.yaml --output data/latents/lattice
    python -m engine.train --config configs/ac_lattice_tiny_cpu.yaml --set data.latent_cache=data/latents/lattice

A sample draws what the frame data set draws (the clip's frame indices, the crop, the flip; the same per
sample seed), so a cached run trains on the same clips, and the same latents up to float rounding, as the
run that decodes them. The cache records a fingerprint of the encoder's weights and of the settings its
latents depend on; a run whose encoder or settings differ is refused (`check_fingerprint`).

Layout of a cache folder (written whole or not at all: engine.datagen.latents):
    index.json   {"version", "fingerprint", "dtype", "tokens", "dim", "flips", "files": [{name, frames}],
                 "videos": [{path, file, offset, num_frames, fps, height, width}], "skipped": [paths that did
                 not decode]}; a video's frames sit in files[file] from frame `offset` on
    latents.bin (one process wrote it) or latents-RRRRR-of-WWWWW.bin (rank R of W wrote it): [frames, flips,
                 tokens, dim] in `dtype` (float32, or bfloat16 as raw 16-bit words)
Version 1 (one latents.bin, no "files", no "file") is read as well.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .datasets import VideoDataset
from .trajectories import WORLD, TrajectoryClip, check_arrays, load_arrays

VERSION = 2
READS = (1, 2)   # index versions this engine reads
STORE_DTYPES = {"float32": np.float32, "bfloat16": np.uint16}   # bfloat16: raw 16-bit words
BUILD_HINT = "python -m engine.datagen latents --config <this config> --output DIR"


def fingerprint(encoder: torch.nn.Module, *, crop_size: int, dtype: str, normalize_reps: bool) -> dict:
    """What a frame's latents depend on besides the frame: the settings (crop size, autocast dtype, whether
    the latents are layer-normed) and, per encoder tensor, its shape and four sums in float64 (of x, of
    x^2, of x weighted by its position, of |x|), compared with a tolerance (`fingerprint_difference`):
    fixed tables such as the sin-cos positions can come out an ulp apart from process to process."""
    tensors = {}
    for name, t in encoder.state_dict().items():
        x = t.detach().cpu().double().reshape(-1)
        w = torch.linspace(1.0, 2.0, x.numel(), dtype=torch.float64) if x.numel() else x
        tensors[name] = [list(t.shape), float(x.sum()), float((x * x).sum()), float((x * w).sum()),
                         float(x.abs().sum())]
    return {"crop_size": int(crop_size), "dtype": str(dtype), "normalize_reps": bool(normalize_reps),
            "tensors": tensors}


def fingerprint_difference(a: dict, b: dict, rtol: float = 1e-5) -> str | None:
    """The first thing on which two fingerprints differ, or None: settings exactly, tensor sums within
    rtol of the tensor's sum of |x| (rounding moves them by ~1e-7 of it, other weights by far more)."""
    for key in ("crop_size", "dtype", "normalize_reps"):
        if a.get(key) != b.get(key):
            return f"{key}: {a.get(key)!r} against {b.get(key)!r}"
    ta, tb = a.get("tensors", {}), b.get("tensors", {})
    if list(ta) != list(tb):
        return f"encoder tensors: {len(ta)} against {len(tb)} (another architecture)"
    for name, (shape, *sums) in ta.items():
        shape_b, *sums_b = tb[name]
        if shape != shape_b:
            return f"encoder tensor {name}: shape {shape} against {shape_b}"
        # each sum's own scale: rounding x by a relative e moves sum(x) and sum(x w) by at most e sum(|x|)
        # (w <= 2: twice that), sum(x^2) by 2 e sum(x^2)
        s1, s2 = max(sums[3], sums_b[3]), max(sums[1], sums_b[1])
        if any(abs(u - v) > rtol * scale + 1e-30
               for u, v, scale in zip(sums, sums_b, (s1, 2 * s2, 2 * s1, s1))):
            return f"encoder tensor {name}: other values (another checkpoint or seed)"
    return None


def frame_level(model: torch.nn.Module) -> torch.nn.Module:
    """The frozen-encoder step (engine.ac_jepa.ACJEPA) of a world model: itself, or H-JEPA's level 1."""
    levels = getattr(model, "levels", None)
    return levels[0] if levels is not None else model


def run_fingerprint(model: torch.nn.Module, cfg) -> dict:
    """The fingerprint of a world model's frozen frame encoder as cfg runs it."""
    step = frame_level(model)
    return fingerprint(step.encoder, crop_size=cfg.data.crop_size, dtype=cfg.meta.dtype,
                       normalize_reps=step.normalize_reps)


@dataclass
class _Info:
    num_frames: int
    fps: float
    height: int
    width: int


@dataclass
class _Entry:
    file: int      # index into LatentCache.files
    offset: int    # its first frame's place in that file, in frames
    info: _Info


class LatentCacheError(Exception):
    """The cache folder is missing, damaged, or made for another encoder: the message says how to rebuild it."""


class LatentCache:
    """A cache folder, read-only: `entry(path)` and `frames(entry, idx_T, flip)` -> float32 [T, N, D].
    The latents file is opened lazily (in each DataLoader worker after it starts) and never read whole."""

    def __init__(self, folder):
        self.folder = Path(folder)
        index = self.folder / "index.json"
        if not index.is_file():
            raise LatentCacheError(f"data.latent_cache {self.folder}: no latent cache there (no index.json); "
                                   f"build one with {BUILD_HINT}")
        try:
            meta = json.loads(index.read_text())
            version = meta.get("version")
            if version in READS:
                self.fingerprint, self.dtype = meta["fingerprint"], meta["dtype"]
                self.tokens, self.dim, self.flips = int(meta["tokens"]), int(meta["dim"]), int(meta["flips"])
                self.entries = {v["path"]: _Entry(int(v.get("file", 0)), int(v["offset"]),
                                                  _Info(int(v["num_frames"]), float(v["fps"]), int(v["height"]),
                                                        int(v["width"])))
                                for v in meta["videos"]}
                files = meta["files"] if version >= 2 else [{"name": "latents.bin", "frames": meta["frames"]}]
                self.files = [(str(f["name"]), int(f["frames"])) for f in files]
                if self.dtype not in STORE_DTYPES:
                    raise KeyError(f"dtype {self.dtype!r}")
                if any(not 0 <= e.file < len(self.files) for e in self.entries.values()):
                    raise KeyError("a video's file")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise LatentCacheError(f"{index}: not a latent cache index ({type(e).__name__}: {e}); rebuild it with "
                                   f"{BUILD_HINT}") from None
        if version not in READS:
            raise LatentCacheError(f"{index}: latent cache version {version!r}, this engine reads {list(READS)}; "
                                   f"rebuild it with {BUILD_HINT}")
        self.skipped = list(meta.get("skipped", []))
        self.frame_bytes = self.flips * self.tokens * self.dim * np.dtype(STORE_DTYPES[self.dtype]).itemsize
        self._fds = {}
        for name, frames in self.files:
            data = self.folder / name
            size = data.stat().st_size if data.is_file() else 0
            if size != frames * self.frame_bytes:
                raise LatentCacheError(f"{data}: {size} bytes, its index describes {frames * self.frame_bytes}; the "
                                       f"cache is incomplete or damaged: rebuild it with {BUILD_HINT}")

    def _file(self, k: int) -> int:
        if k not in self._fds:
            self._fds[k] = os.open(self.folder / self.files[k][0], os.O_RDONLY)
        return self._fds[k]

    def __getstate__(self):   # DataLoader workers open the files themselves
        return {**self.__dict__, "_fds": {}}

    def __del__(self):
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)

    def entry(self, path: str) -> _Entry:
        e = self.entries.get(path)
        if e is None:
            why = "it did not decode when the cache was built" if path in self.skipped else "the cache does not hold it"
            raise ValueError(f"{path}: no latents in {self.folder} ({why})")
        return e

    def frames(self, entry: _Entry, idx_T: np.ndarray, flip: bool) -> torch.Tensor:
        """float32 [T, N, D]: the latents of frames idx_T of the video (mirrored ones where flip).
        One pread of the frames the clip spans, or, where the clip skips more frames than it reads (a long
        frame step), one per frame of that frame's orientation alone; the pages stay in the page cache, out of
        this process's resident set (a mapping of the whole file would count every page read there)."""
        idx = np.asarray(idx_T, dtype=np.int64)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        dtype, fd, fb = np.dtype(STORE_DTYPES[self.dtype]), self._file(entry.file), self.frame_bytes
        f = int(flip) if self.flips > 1 else 0
        if hi - lo <= 2 * len(idx):
            buf = os.pread(fd, (hi - lo) * fb, (entry.offset + lo) * fb)
            rows = np.frombuffer(buf, dtype=dtype).reshape(hi - lo, self.flips, self.tokens, self.dim)[idx - lo, f]
        else:
            ob = fb // self.flips   # one orientation of a frame
            rows = np.stack([np.frombuffer(os.pread(fd, ob, ((entry.offset + int(i)) * self.flips + f) * ob),
                                           dtype=dtype) for i in idx]).reshape(len(idx), self.tokens, self.dim)
        t = torch.from_numpy(rows)   # both ways a new array: fancy indexing and stack copy
        return (t.view(torch.bfloat16) if self.dtype == "bfloat16" else t).float()

    def check_fingerprint(self, digest: dict, what: str) -> None:
        diff = fingerprint_difference(self.fingerprint, digest)
        if diff is not None:
            raise LatentCacheError(f"data.latent_cache {self.folder}: its latents come from another encoder or other "
                                   f"settings than {what} ({diff}); rebuild it with {BUILD_HINT}")


class LatentVideoDataset(VideoDataset):
    """VideoDataset whose samples are the cached latents of the clip it would decode: float32 [T, N, D].

    The clip's frame indices, crop and flip are drawn as VideoDataset draws them (same rules, same
    per-sample seed, same order: sample_indices, then the transform's plan); nothing is decoded."""

    def __init__(self, cache: LatentCache, index_csvs, weights=None, **clip_args):
        super().__init__(index_csvs, weights=weights, **clip_args)
        if self.num_clips != 1:
            raise ValueError(f"a latent cache gives one clip per video (data.num_clips 1), got {self.num_clips}")
        self.cache = cache
        self.source += f" (latents from {cache.folder})"
        unknown = [p for p in dict.fromkeys(self.paths) if p not in cache.entries and p not in cache.skipped]
        if unknown:   # videos added to the index, or moved, since the cache was built
            raise LatentCacheError(f"data.latent_cache {cache.folder}: {len(unknown)} of the videos "
                                   f"data.datasets lists are not in it (first: {unknown[0]}); rebuild it with "
                                   f"{BUILD_HINT}")
        # the transform only draws the crop and flip here: no pixels come out to normalise (make_loader
        # would otherwise turn it into a uint8 twin and normalise the batches)
        self.draws, self.transform = self.transform, None

    def _clip(self, path, rng):
        entry = self.cache.entry(path)
        idx = self.sample_indices(entry, rng)[0]
        _, flip = self.draws.plan(entry.info.height, entry.info.width, rng)
        return self.cache.frames(entry, idx, flip), idx

    def _load(self, path, rng):
        return self._clip(path, rng)[0]

    def _finish(self, data, rng):
        return data


class LatentTrajectoryDataset(LatentVideoDataset):
    """The latents of a trajectory's clip with its actions and states (engine.data.trajectories)."""

    def __init__(self, cache: LatentCache, index_csvs, weights=None, arrays=WORLD, **clip_args):
        super().__init__(cache, index_csvs, weights=weights, **clip_args)
        self.arrays = tuple(arrays)
        for path in self.paths[:1]:
            check_arrays(path, self.arrays)

    def _load(self, path, rng):
        latents, idx = self._clip(path, rng)
        a, s = load_arrays(path, self.arrays, idx)
        return TrajectoryClip(latents, torch.from_numpy(a), torch.from_numpy(s))
