"""Tar shards in the webdataset layout: a tar-header scanner and a clip dataset that reads members in place.

Usage:
    ds = ShardVideoDataset("data/shards/index.json", frames_per_clip=16, frame_step=4,
                           transform=VideoTransform(crop_size=64))
    loader = make_loader(ds, batch_size=8, seed=0, rank=rank, world_size=world)   # each rank: its own shards
    loader.state_dict() / loader.load_state_dict(state)                          # resume the stream

Layout of one sample (members share the key: the name up to the first dot of the base name), as
engine.datagen.shard_writer.ShardWriter (`python -m engine.datagen prepare`) writes it:
    <key>.mp4 | .webm | .avi | .mkv   the encoded video
    <key>.json                        {"label", "fps", "num_frames", "duration", "width", "height", "codec", "source"}
    <key>.cls                         the label as ASCII text (webdataset convention)
    <key>.info.i32                    int32 [label, num_frames, ceil(fps)] little-endian: for readers
                                      that take raw typed bytes but cannot parse JSON (DALI's webdataset)
    <key>.actions.npy, .states.npy    per-frame actions / states for sources that have them (robot, atari)

Reading: each tar's headers are scanned once (tarfile, no extraction) for the (offset, size) of every
member; a sample's video is then read with one seek + read and decoded from memory by PyAV. A missing
or unreadable tar is skipped with a warning (`bad_shards`); a truncated tar keeps its complete members.

Stream order (ShardBatchSampler): in epoch e the shards are permuted by (seed, e) and rank r takes
shards r, r+W, r+2W, ...; each shard's samples are permuted by (seed, e, shard) and read shard after
shard, so a rank reads few tars, mostly sequentially. Every rank runs the same number of batches per
epoch: floor(L / B) with L the smallest sample count any rank can be dealt (the S // W smallest shards),
the rest of a rank's stream is dropped that epoch (drop_last) -- or, with drop_last=False, ceil(L' / B)
with L' the largest possible count, a rank's stream wrapping onto its own start. Sample seeds and mask
seeds follow engine.data.loader, so the stream is identical for any num_workers and a loader restored
from state_dict() continues with the clips it has not seen yet.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import tarfile
from pathlib import Path

import numpy as np

from .datasets import VideoDataset
from .loader import sample_seeds

logger = logging.getLogger(__name__)
VIDEO_EXTS = ("mp4", "webm", "avi", "mkv")


def split_member_name(name: str) -> tuple[str, str]:
    """'dir/000017.actions.npy' -> ('dir/000017', 'actions.npy'): the webdataset key / extension rule."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


# ----------------------------------------------------------------------------- reading
def scan_shard(path) -> tuple[list[dict], str | None]:
    """Samples of one tar in stored order: ([{"key", "members": {ext: (offset, size)}}], problem or None).

    Reads headers only. A truncated tar yields its complete samples and names the problem; a sample
    without a video member is dropped (and named).
    """
    path = str(path)
    size = os.path.getsize(path)
    samples, by_key, problem = [], {}, None
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, ext = split_member_name(m.name)
                if m.offset_data + m.size > size:
                    problem = f"truncated at member {m.name}"
                    if key in by_key:  # the cut sample is incomplete: drop it whole
                        samples.remove(by_key.pop(key))
                    break
                if not ext or os.path.basename(m.name).startswith("."):
                    continue
                if key not in by_key:
                    by_key[key] = {"key": key, "members": {}}
                    samples.append(by_key[key])
                by_key[key]["members"][ext] = (m.offset_data, m.size)
    except (tarfile.TarError, EOFError, OSError) as e:
        if not samples:
            raise
        problem = f"unreadable after {len(samples)} samples: {e}"
    no_video = [s["key"] for s in samples if not any(e in s["members"] for e in VIDEO_EXTS)]
    if no_video:
        problem = (problem + "; " if problem else "") + f"{len(no_video)} sample(s) without a video: {no_video[:3]}"
        samples = [s for s in samples if s["key"] not in set(no_video)]
    return samples, problem


def resolve_shards(source) -> list[str]:
    """Tar paths from an index.json (written by `prepare`), a folder (its index.json, else its *.tar), or tars."""
    if isinstance(source, (list, tuple)):
        return [tar for s in source for tar in resolve_shards(s)]
    p = Path(source)
    if p.is_dir():
        p = p / "index.json" if (p / "index.json").exists() else p
        if p.is_dir():
            tars = sorted(str(t) for t in p.glob("*.tar"))
            if not tars:
                raise ValueError(f"{source}: no index.json and no .tar shards in this folder")
            return tars
    if p.suffix == ".json":
        idx = json.loads(p.read_text())
        if "shards" not in idx:
            raise ValueError(f"{p}: not a shard index (no 'shards' key)")
        return [str(Path(s["path"]) if Path(s["path"]).is_absolute() else p.parent / s["path"]) for s in idx["shards"]]
    if p.suffix == ".tar" or not p.exists():
        return [str(p)]  # a missing tar is reported (and skipped) by the dataset
    raise ValueError(f"{source}: expected an index.json, a folder of shards or .tar files")


class ShardBatchSampler:
    """This rank's batches over its own shards for one epoch; the loader sets `epoch` and `start_batch`."""

    def __init__(self, shard_counts, batch_size, seed, *, shuffle=True, drop_last=True, rank=0, world_size=1):
        counts = np.asarray(shard_counts, dtype=np.int64)
        S, W = len(counts), int(world_size)
        if not 0 <= rank < W:
            raise ValueError(f"rank {rank} not in [0, {W})")
        if S < W:
            raise ValueError(f"{S} shard(s) for {W} ranks: each rank needs a shard of its own; "
                             f"prepare the data with a smaller --shard-size")
        self.counts, self.offsets = counts, np.concatenate([[0], np.cumsum(counts)])
        self.n, self.batch_size, self.seed = int(counts.sum()), int(batch_size), int(seed)
        self.shuffle, self.drop_last, self.rank, self.world_size = shuffle, drop_last, int(rank), W
        srt = np.sort(counts)
        if drop_last:  # every rank is dealt at least S // W shards, at least the smallest ones
            self.samples_per_epoch = int(srt[:S // W].sum())
            self.batches_per_epoch = self.samples_per_epoch // self.batch_size
        else:
            self.samples_per_epoch = int(srt[::-1][:math.ceil(S / W)].sum())
            self.batches_per_epoch = math.ceil(self.samples_per_epoch / self.batch_size)
        self.epoch, self.start_batch = 0, 0

    def rank_stream(self, epoch: int) -> np.ndarray:
        """Dataset indices of this rank's whole stream in epoch `epoch` (before the per-epoch cut)."""
        S = len(self.counts)
        shards = np.random.default_rng([self.seed, epoch]).permutation(S) if self.shuffle else np.arange(S)
        parts = []
        for s in shards[self.rank::self.world_size]:
            n = int(self.counts[s])
            within = np.random.default_rng([self.seed, epoch, int(s)]).permutation(n) if self.shuffle else np.arange(n)
            parts.append(self.offsets[s] + within)
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def global_batch(self, epoch: int, batch: int) -> int:
        return (epoch * self.batches_per_epoch + batch) * self.world_size + self.rank

    def __len__(self):
        return self.batches_per_epoch - self.start_batch

    def __iter__(self):
        epoch, B, W = self.epoch, self.batch_size, self.world_size
        stream = self.rank_stream(epoch)
        for b in range(self.start_batch, self.batches_per_epoch):
            pos = np.arange(b * B, min((b + 1) * B, self.samples_per_epoch))
            seeds = sample_seeds(self.seed, epoch, pos * W + self.rank)  # distinct across ranks
            gb = self.global_batch(epoch, b)
            yield [(int(stream[p % len(stream)]), int(s), gb) for p, s in zip(pos, seeds)]


class ShardVideoDataset(VideoDataset):
    """Clips from tar shards, same clip sampling and transforms as VideoDataset; samples are read in place.

    Items: (clip float32 [3, T, H, W] (list of num_clips), label); labels come from `<key>.cls` (else the
    JSON's "label"). `make_loader` picks up `make_batch_sampler`, so each rank reads its own shards.
    """

    def __init__(self, shards, **clip_args):
        """clip_args: those of VideoDataset._init_clip_args."""
        self._init_clip_args(**clip_args)
        self.shard_paths, self.shard_counts, self.bad_shards = [], [], {}
        self.paths, self._members = [], []  # per sample: "tar:key" (for messages), (tar index, {ext: (off, size)})
        for tar in resolve_shards(shards):
            try:
                samples, problem = scan_shard(tar)
            except (tarfile.TarError, EOFError, OSError) as e:
                samples, problem = [], f"{type(e).__name__}: {e}"
            if problem:
                self.bad_shards[tar] = problem
                logger.warning("shard %s: %s%s", tar, problem, "" if samples else " (skipped)")
            if not samples:
                continue
            t = len(self.shard_paths)
            self.shard_paths.append(tar)
            self.shard_counts.append(len(samples))
            for s in samples:
                self.paths.append(f"{tar}:{s['key']}")
                self._members.append((t, s["members"]))
        if not self.paths:
            raise ValueError(f"no readable samples in shards {shards!r}: {self.bad_shards}")
        self.labels = np.full(len(self.paths), -1, np.int64)  # filled as samples are read
        self.sample_weights, self.index_csvs = None, []
        self.source = f"shards {shards!r}" if not isinstance(shards, (list, tuple)) else f"{len(shards)} shard paths"

    def make_batch_sampler(self, batch_size, seed, *, shuffle=True, drop_last=True, rank=0, world_size=1):
        return ShardBatchSampler(self.shard_counts, batch_size, seed, shuffle=shuffle, drop_last=drop_last,
                                 rank=rank, world_size=world_size)

    # -- members
    def read_component(self, i: int, ext: str) -> bytes:
        """Raw bytes of sample i's member `<key>.<ext>` (KeyError naming the sample if it has none)."""
        t, members = self._members[i]
        if ext not in members:
            raise KeyError(f"{self.paths[i]}: no member .{ext} (has {sorted(members)})")
        (offset, size), tar = members[ext], self.shard_paths[t]
        with open(tar, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise OSError(f"{tar}: member at {offset} is truncated ({len(data)} of {size} bytes)")
        return data

    def read_array(self, i: int, name: str) -> np.ndarray:
        """A saved per-frame array of sample i, e.g. read_array(i, "actions")."""
        return np.load(io.BytesIO(self.read_component(i, f"{name}.npy")), allow_pickle=False)

    def read_meta(self, i: int) -> dict:
        return json.loads(self.read_component(i, "json"))

    def read_video(self, i: int) -> io.BytesIO:
        ext = next(e for e in VIDEO_EXTS if e in self._members[i][1])
        buf = io.BytesIO(self.read_component(i, ext))
        buf.name = f"{self.paths[i]}.{ext}"  # names the member in decode errors
        return buf

    def read_label(self, i: int) -> int:
        members = self._members[i][1]
        try:
            return int(self.read_component(i, "cls").decode().strip()) if "cls" in members else \
                int(self.read_meta(i)["label"])
        except (ValueError, KeyError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.paths[i]}: no readable label ({e})") from e

    # -- SkipBadFiles hooks
    def _load_index(self, i, rng):
        label = self.read_label(i)
        self.labels[i] = label
        return self._load(self.read_video(i), rng), label
