"""DALI video readers: one pipeline definition for GPU (NVDEC) and CPU (VP8/VP9/MJPEG), handed to torch.

Usage:
    reader = select_reader(dataset_codec(ds), device="cpu", override=cfg.data.reader)   # "dali" | "pyav"
    # same clips as the PyAV path (same sample seeds, clip indices, crop boxes and flips), decoded by DALI:
    ds = VideoDataset([csv], frames_per_clip=16, frame_step=4, transform=VideoTransform(crop_size=224))
    loader = make_dali_loader(ds, batch_size=8, seed=0, device="cpu")      # or a ShardVideoDataset
    clips_B3THW, labels_B, masks = next(iter(loader))
    state = loader.state_dict(); loader.load_state_dict(state)            # resumes like ResumableLoader
    # DALI-native sampling (readers pick clips and crops themselves; fastest on a GPU):
    pipe = build_pipeline(FileSource(paths, labels), device="gpu", batch_size=8, frames_per_clip=16, ...)
    pipe = build_pipeline(WebdatasetSource(tars), device="gpu", ...)
    for clips_B3THW, labels_B, _ in DaliLoader(pipe, batch_size=8, seed=0, reader_name="Reader"): ...

Three sources feed one graph (decode -> crop + resize -> flip + normalise -> C,F,H,W float32):
  PlannedSource    host plans each sample exactly as VideoDataset would (index, seed -> clip indices,
                   crop box, flip) and hands DALI the encoded bytes + the plan; DALI decodes only those
                   frames (fn.decoders.video(frames=...)) and resizes the box (fn.resize with an ROI).
                   Deterministic, resumable, rank-sharded by our samplers, bad files skipped on the host.
  FileSource       fn.experimental.readers.video over files: windows of frames_per_clip frames frame_step
                   apart, a new window every `clip_step` frames; DALI's random_resized_crop + coin flip.
  WebdatasetSource fn.readers.webdataset over our tar shards: `<key>.info.i32` gives the frame count, so
                   the clip start is drawn in the graph with our rule (random start, last frame repeated).
Device: "gpu" decodes on NVDEC (H.264, HEVC, AV1, VP9, ...; "mixed" backend) and runs the rest on the
GPU; "cpu" needs device_id=None and decodes VP8/VP9/MJPEG only (libavcodec inside DALI).

Transform semantics (engine/data/transforms.py): one crop box per clip (area scale, log-uniform aspect,
10 tries), bilinear resize without antialias, horizontal flip p=0.5, (x/255 - mean) / std. DALI's
resize reads pixels just outside an ROI for border taps where torch clamps to the crop, so outputs
match the PyAV path up to those border pixels and codec rounding (see tests/data/test_dali.py).
Bad input: PlannedSource skips files that cannot be read or opened (missing, empty, truncated,
garbage), counted in `skipped_files` / `bad_paths`; a file that opens but fails inside DALI's decoder
raises (DALI cannot drop one sample of a batch). FileSource drops unreadable files up front
(`filter_readable`); shards come from `prepare`, which only writes videos it decoded.
"""
from __future__ import annotations

import collections
import io
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .datasets import _SkipBadFiles
from .loader import ResumableLoader
from .transforms import IMAGENET_MEAN, IMAGENET_STD, VideoEvalTransform, VideoTransform
from .video import VideoReader

logger = logging.getLogger(__name__)

CPU_CODECS = ("vp8", "vp9", "mjpeg")
GPU_CODECS = ("h264", "hevc", "av1", "vp9", "vp8", "mjpeg", "mpeg4")
READERS = ("auto", "pyav", "dali")
_CODEC_ALIASES = {"h265": "hevc", "avc": "h264", "libvpx-vp9": "vp9", "libx264": "h264", "libdav1d": "av1"}


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def probe_codec(path) -> str:
    """Codec name of a video's first stream ('h264', 'vp9', 'mjpeg', ...) from its header (PyAV)."""
    import av

    with av.open(str(path)) as c:
        if not c.streams.video:
            raise ValueError(f"{path}: no video stream")
        name = c.streams.video[0].codec_context.name
    return _CODEC_ALIASES.get(name, name)


def dataset_codec(dataset) -> str:
    """Codec of a VideoDataset's / ShardVideoDataset's first readable sample (for select_reader)."""
    import av

    for i in range(min(len(dataset), 8)):
        try:
            if hasattr(dataset, "read_video"):
                meta = dataset.read_meta(i) if "json" in dataset._members[i][1] else {}
                if meta.get("codec"):
                    return _CODEC_ALIASES.get(meta["codec"], meta["codec"])
                with av.open(dataset.read_video(i)) as c:
                    name = c.streams.video[0].codec_context.name
                return _CODEC_ALIASES.get(name, name)
            return probe_codec(dataset.paths[i])
        except Exception:  # noqa: BLE001 -- a bad first file: look at the next one
            continue
    raise ValueError(f"no readable video among the first samples of {getattr(dataset, 'source', dataset)}")


def _is_gpu(device) -> bool:
    return str(device).split(":")[0] in ("gpu", "cuda")


def select_reader(codec: str, device="cpu", override: str = "auto") -> str:
    """'dali' or 'pyav' for videos of `codec` on `device` ('cpu', 'cuda', 'cuda:1', 'gpu').

    override (config key data.reader): 'pyav' always; 'dali' if DALI can decode the codec on that device
    (else a ValueError saying why); 'auto': DALI on a GPU when it decodes the codec there, else PyAV --
    on CPU the PyAV path is the default: it decodes every codec, skips bad files sample by sample, and
    was as fast as DALI's CPU decoder here (bench/results/loader_cpu.csv).
    """
    if override not in READERS:
        raise ValueError(f"data.reader: expected one of {READERS}, got {override!r}")
    codec = _CODEC_ALIASES.get(str(codec).lower(), str(codec).lower())
    gpu = _is_gpu(device)
    supported = GPU_CODECS if gpu else CPU_CODECS
    if override == "pyav":
        return "pyav"
    if override == "dali":
        if not dali_available():
            raise ValueError("data.reader: 'dali' needs nvidia.dali, which is not importable here")
        if codec not in supported:
            raise ValueError(f"data.reader: DALI on {'GPU' if gpu else 'CPU'} decodes {', '.join(supported)}, "
                             f"not {codec!r}; re-encode (python -m engine.data prepare --codec vp9) or use 'pyav'")
        return "dali"
    return "dali" if gpu and dali_available() and codec in supported else "pyav"


# ----------------------------------------------------------------------------- sources
@dataclass
class FileSource:
    """Video files for fn.experimental.readers.video (DALI picks windows; clip_step None = window span)."""
    paths: list
    labels: list
    clip_step: int | None = None


@dataclass
class WebdatasetSource:
    """Tar shards written by ShardWriter / `prepare`, read by fn.readers.webdataset."""
    tar_paths: list


class _Planner(_SkipBadFiles):
    """Per (index, seed): encoded bytes + the clip plan the PyAV path would draw, with its skip logic."""

    def __init__(self, dataset):
        if getattr(dataset, "num_clips", 1) != 1:
            raise ValueError(f"DALI loader: num_clips must be 1, got {dataset.num_clips}")
        tf = dataset.transform
        if tf is not None and not isinstance(tf, (VideoTransform, VideoEvalTransform)):
            raise ValueError(f"DALI loader: transform must be VideoTransform, VideoEvalTransform or None, got {tf!r}")
        self.dataset, self.transform = dataset, tf
        self.paths, self.labels, self.source = dataset.paths, getattr(dataset, "labels", None), dataset.source
        self.sample_weights = getattr(dataset, "sample_weights", None)
        self._init_skips(getattr(dataset, "max_consecutive_failures", None))

    def _load_index(self, i, rng):
        ds = self.dataset
        if hasattr(ds, "read_video"):  # a tar shard member
            buf, label = ds.read_video(i), ds.read_label(i)
        else:
            with open(self.paths[i], "rb") as f:
                buf = io.BytesIO(f.read())
            buf.name, label = self.paths[i], int(self.labels[i])
        # opening parses the container (catches missing, empty, garbage and most truncated files)
        with VideoReader(buf, seek_threshold=ds.seek_threshold) as vr:
            (idx,) = ds.sample_indices(vr, rng)
            H, W = vr.info.height, vr.info.width
        return buf.getvalue(), idx, H, W, label

    def _label(self, i, data) -> int:
        return int(data[-1])

    def _finish(self, data, rng):
        encoded, idx, H, W, label = data
        tf = self.transform
        if isinstance(tf, (VideoTransform, VideoEvalTransform)):  # the draws of the PyAV path, in its order
            (top, left, h, w), flip = tf.plan(H, W, rng)
        else:
            top, left, h, w, flip = 0, 0, H, W, False
        return (np.frombuffer(encoded, np.uint8), idx.astype(np.int32),
                np.asarray([top, left], np.float32), np.asarray([top + h, left + w], np.float32),
                np.asarray(int(flip), np.int32))


class PlannedSource:
    """External source: batches from a sampler (EpochBatchSampler / ShardBatchSampler) planned on the host."""

    def __init__(self, dataset, sampler):
        self.planner, self.sampler = _Planner(dataset), sampler
        self.transform = self.planner.transform
        self.produced = collections.deque()  # (epoch, batch, global batch, skipped paths) in DALI's order
        self._keys = None

    def start(self, epoch: int, batch: int):
        self.produced.clear()
        self._keys = self._stream(epoch, batch)

    def _stream(self, epoch, batch):
        s = self.sampler
        while True:
            s.epoch, s.start_batch = epoch, batch
            for b, keys in enumerate(s, start=batch):
                yield epoch, b, keys
            epoch, batch = epoch + 1, 0

    def __call__(self):
        epoch, b, keys = next(self._keys)
        outs, skipped, labels = [], [], []
        for index, seed, _gb in keys:
            plan, label, sk = self.planner.get((index, seed))
            outs.append(plan)
            labels.append(np.asarray(label, np.int64))
            skipped += sk
        self.produced.append((epoch, b, keys[0][2], skipped))
        cols = [list(c) for c in zip(*outs)]
        return (*cols, labels)


# ----------------------------------------------------------------------------- the pipeline
def build_pipeline(source, *, device="cpu", batch_size: int, frames_per_clip: int = 16, frame_step: int = 4,
                   crop_size: int = 224, scale=(0.3, 1.0), ratio=(3 / 4, 4 / 3), horizontal_flip: bool = True,
                   mean=IMAGENET_MEAN, std=IMAGENET_STD, num_threads: int = 2, device_id: int | None = None,
                   seed: int = 0, shard_id: int = 0, num_shards: int = 1, shuffle: bool = True,
                   prefetch_queue_depth: int = 2):
    """A built DALI Pipeline with outputs (video, label). One definition for every source and device.

    video: float32 [C, F, crop, crop] normalised -- or, for a PlannedSource whose dataset has no
    transform, the decoded uint8 frames [F, H, W, C] (for comparisons). For PlannedSource the clip and
    crop arguments come from its dataset; here they configure FileSource / WebdatasetSource.
    """
    from nvidia.dali import Pipeline, fn, types
    import nvidia.dali.math as dmath

    gpu = _is_gpu(device)
    if gpu and device_id is None:
        device_id = torch.cuda.current_device() if torch.cuda.is_available() else 0
    pipe = Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id if gpu else None,
                    seed=seed, prefetch_queue_depth=prefetch_queue_depth, exec_async=True, exec_pipelined=True)
    dec_device = "mixed" if gpu else "cpu"
    mean255 = [255.0 * m for m in mean]
    std255 = [255.0 * s for s in std]
    augment, plan = True, None
    with pipe:
        if isinstance(source, PlannedSource):
            enc, frames, roi_start, roi_end, mirror, label = fn.external_source(
                source=source, num_outputs=6, batch=True, parallel=False,
                dtype=[types.UINT8, types.INT32, types.FLOAT, types.FLOAT, types.INT32, types.INT64])
            video = fn.decoders.video(enc, device=dec_device, frames=frames)
            tf = source.transform
            augment = tf is not None
            if augment:
                crop_size, mean255 = tf.crop_size, (-tf.bias_C / tf.scale_C).tolist()
                std255 = (1.0 / tf.scale_C).tolist()
                plan = (roi_start, roi_end, mirror)
        elif isinstance(source, FileSource):
            span = (frames_per_clip - 1) * frame_step + 1
            video, label = fn.experimental.readers.video(
                device="gpu" if gpu else "cpu", filenames=[str(p) for p in source.paths],
                labels=[int(x) for x in source.labels], sequence_length=frames_per_clip, stride=frame_step,
                step=source.clip_step or span, random_shuffle=shuffle, initial_fill=64, shard_id=shard_id,
                num_shards=num_shards, pad_mode="edge", seed=seed, name="Reader")
        elif isinstance(source, WebdatasetSource):
            enc, info = fn.readers.webdataset(
                paths=[str(p) for p in source.tar_paths], ext=["mp4;webm;avi;mkv", "info.i32"],
                dtypes=[types.UINT8, types.INT32], missing_component_behavior="skip", random_shuffle=shuffle,
                initial_fill=64, shard_id=shard_id, num_shards=num_shards, seed=seed, name="Reader")
            label, nf = info[0], info[1]
            span = (frames_per_clip - 1) * frame_step + 1
            # our clip rule in the graph: random start, then the last frame repeated for short videos
            start = fn.cast(dmath.floor(fn.random.uniform(range=[0.0, 1.0]) * dmath.max(nf - span + 1, 1)),
                            dtype=types.INT32)
            idx = dmath.min(start + types.Constant(np.arange(frames_per_clip, dtype=np.int32) * frame_step), nf - 1)
            video = fn.decoders.video(enc, device=dec_device, frames=idx)
        else:
            raise TypeError(f"unknown DALI source {type(source).__name__}")
        if augment:
            if plan is not None:
                roi_start, roi_end, mirror = plan
                video = fn.resize(video, size=[crop_size, crop_size], roi_start=roi_start, roi_end=roi_end,
                                  roi_relative=False, interp_type=types.INTERP_LINEAR, antialias=False)
            else:
                video = fn.random_resized_crop(video, size=[crop_size, crop_size], random_area=list(scale),
                                               random_aspect_ratio=list(ratio), num_attempts=10,
                                               interp_type=types.INTERP_LINEAR, antialias=False)
                mirror = fn.random.coin_flip(probability=0.5 if horizontal_flip else 0.0)
            video = fn.crop_mirror_normalize(video, dtype=types.FLOAT, output_layout="CFHW", mean=mean255,
                                             std=std255, mirror=mirror)
        pipe.set_outputs(video, label)
    with warnings.catch_warnings():  # without a transform the plan's crop/flip outputs go unused, by design
        warnings.filterwarnings("ignore", message=".*are not used.*")
        pipe.build()
    return pipe


# ----------------------------------------------------------------------------- to torch
class DaliLoader:
    """Endless (clips [B, 3, T, S, S], labels int64 [B], masks) batches from a DALI pipeline.

    With a PlannedSource (make_dali_loader) the batches, masks, state_dict() and load_state_dict() are
    those of engine.data.loader.ResumableLoader over the same dataset and seed. With a reader source
    (reader_name="Reader") batches follow DALI's own shuffling; state_dict() counts batches only.
    """

    def __init__(self, pipe_factory, *, batch_size, seed, mask_sampler=None, planned: PlannedSource | None = None,
                 reader_name: str | None = None):
        self._factory = pipe_factory if callable(pipe_factory) else (lambda: pipe_factory)
        self.batch_size, self.seed, self.mask_sampler = batch_size, int(seed), mask_sampler
        self.planned, self.reader_name = planned, reader_name
        self.epoch, self.batch_in_epoch, self.batches_seen = 0, 0, 0
        self.skipped_files, self.bad_paths = 0, set()
        self.wait_seconds, self.last_wait_seconds = 0.0, 0.0

    @property
    def batches_per_epoch(self) -> int:
        return self.planned.sampler.batches_per_epoch if self.planned else 0

    def __len__(self):
        return self.batches_per_epoch

    def __iter__(self):
        import time

        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        if self.planned is not None:
            epoch, batch = self.epoch, self.batch_in_epoch
            if batch >= self.batches_per_epoch:
                epoch, batch = epoch + 1, 0
            self.planned.start(epoch, batch)
            it = DALIGenericIterator(self._factory(), ["video", "label"], size=-1, auto_reset=False,
                                     last_batch_policy=LastBatchPolicy.FILL, prepare_first_batch=False)
        else:
            it = DALIGenericIterator(self._factory(), ["video", "label"], reader_name=self.reader_name,
                                     auto_reset=True, last_batch_policy=LastBatchPolicy.DROP,
                                     prepare_first_batch=False)
        while True:
            t0 = time.perf_counter()
            try:
                out = next(it)[0]
            except StopIteration:
                if self.planned is not None:
                    raise
                continue  # next epoch of a reader source (auto_reset)
            self.last_wait_seconds = time.perf_counter() - t0
            self.wait_seconds += self.last_wait_seconds
            clips, labels = out["video"], out["label"].reshape(-1).long()
            gb = self.batches_seen
            if self.planned is not None:
                self.epoch, b, gb, skipped = self.planned.produced.popleft()
                self.batch_in_epoch = b + 1
                self._record_skips(skipped)
            self.batches_seen += 1
            masks = None
            if self.mask_sampler is not None:
                masks = self.mask_sampler(clips.shape[0], np.random.default_rng([self.seed, gb]))
            yield clips, labels, masks

    _record_skips = ResumableLoader._record_skips   # same counting and logging as the PyAV loader

    def state_dict(self) -> dict:
        epoch, batch = self.epoch, self.batch_in_epoch
        if self.planned is not None:
            if batch >= self.batches_per_epoch:
                epoch, batch = epoch + 1, 0
            s = self.planned.sampler
            return {"epoch": epoch, "batch_in_epoch": batch, "seed": s.seed, "rank": s.rank,
                    "world_size": s.world_size, "batch_size": s.batch_size, "num_samples": s.n,
                    "skipped_files": self.skipped_files}
        return {"batches_seen": self.batches_seen, "seed": self.seed}

    def load_state_dict(self, state: dict, strict: bool = True):
        if self.planned is None:
            raise NotImplementedError("resuming a DALI reader source is not supported; use make_dali_loader")
        mine = self.state_dict()
        bad = [k for k in ("seed", "world_size", "batch_size", "num_samples") if k in state and state[k] != mine[k]]
        if strict and bad:
            raise ValueError("loader state does not match this loader: "
                             + ", ".join(f"{k}={state[k]} (here {mine[k]})" for k in bad))
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self.skipped_files = int(state.get("skipped_files", self.skipped_files))


def make_dali_loader(dataset, *, batch_size, seed, mask_sampler=None, device="cpu", rank=0, world_size=1,
                     shuffle=True, drop_last=True, num_threads=2, device_id=None, prefetch_queue_depth=2) -> DaliLoader:
    """The DALI twin of make_loader for a VideoDataset or ShardVideoDataset (num_clips=1): same batches.

    Sampling, crops and flips are planned on the host from the loader's per-sample seeds; DALI decodes
    the planned frames and crops, resizes, flips and normalises them (on the GPU with device="cuda").
    """
    from .loader import EpochBatchSampler

    if hasattr(dataset, "make_batch_sampler"):
        sampler = dataset.make_batch_sampler(batch_size, seed, shuffle=shuffle, drop_last=drop_last, rank=rank,
                                             world_size=world_size)
    else:
        sampler = EpochBatchSampler(len(dataset), batch_size, seed, shuffle=shuffle, drop_last=drop_last, rank=rank,
                                    world_size=world_size, weights=getattr(dataset, "sample_weights", None))
    if sampler.batches_per_epoch == 0:
        raise ValueError(f"{len(dataset)} samples over {world_size} rank(s) make no batch of {batch_size}")
    planned = PlannedSource(dataset, sampler)

    def factory():
        return build_pipeline(planned, device=device, batch_size=batch_size, num_threads=num_threads,
                              device_id=device_id, seed=seed, prefetch_queue_depth=prefetch_queue_depth)

    return DaliLoader(factory, batch_size=batch_size, seed=seed, mask_sampler=mask_sampler, planned=planned)


def filter_readable(paths, labels) -> tuple[list, list, list]:
    """(good paths, their labels, [(bad path, reason)]): files PyAV can open, for FileSource (DALI fails whole)."""
    good, good_labels, bad = [], [], []
    for p, lab in zip(paths, labels):
        try:
            with VideoReader(p):
                pass
        except Exception as e:  # noqa: BLE001 -- any unreadable file is dropped and named
            bad.append((str(p), str(e)))
            logger.warning("dropping unreadable file %s: %s", p, e)
            continue
        good.append(str(p))
        good_labels.append(int(lab))
    if not good:
        raise ValueError(f"none of {len(bad)} files is readable (first: {bad[0] if bad else None})")
    return good, good_labels, bad


def dali_codec_check(paths, device="cpu", sample: int = 4):
    """Raise a ValueError naming the file if one of the first `sample` files has a codec DALI cannot decode."""
    supported = GPU_CODECS if _is_gpu(device) else CPU_CODECS
    for p in list(paths)[:sample]:
        c = probe_codec(p)
        if c not in supported:
            raise ValueError(f"{p}: codec {c!r} is not decodable by DALI on {device} (supported: {supported})")
