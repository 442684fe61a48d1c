"""DALI video decoding: one pipeline for GPU (NVDEC) and CPU (VP8/VP9/MJPEG), handed to torch.

Usage:
    reader = select_reader(dataset_codec(ds), device="cpu", override=cfg.data.reader)   # "dali" | "pyav"
    # same clips as the PyAV path (same sample seeds, clip indices, crop boxes and flips), decoded by DALI:
    ds = VideoDataset([csv], frames_per_clip=16, frame_step=4, transform=VideoTransform(crop_size=224))
    loader = make_dali_loader(ds, batch_size=8, seed=0, device="cpu")      # or a ShardVideoDataset
    clips_B3THW, labels_B, masks = next(iter(loader))
    state = loader.state_dict(); loader.load_state_dict(state)            # resumes like ResumableLoader

The host plans each sample exactly as VideoDataset would (index, seed -> clip indices, crop box, flip)
and hands DALI the encoded bytes and the plan (PlannedSource); DALI decodes only those frames
(fn.decoders.video(frames=...)), resizes the box (fn.resize with an ROI), flips and normalises. So the
batches are deterministic, resumable and rank-sharded by the loader's own samplers, and bad files are
skipped on the host. Device: "gpu" decodes on NVDEC (H.264, HEVC, AV1, VP9, ...; "mixed" backend) and
runs the rest on the GPU; "cpu" needs device_id=None and decodes VP8/VP9/MJPEG only.

Transform semantics (engine/data/transforms.py): one crop box per clip, bilinear resize without
antialias, horizontal flip, (x/255 - mean) / std. DALI's resize reads pixels just outside an ROI for
border taps where torch clamps to the crop, so outputs match the PyAV path up to those border pixels
and codec rounding (tests/data/test_dali.py). Files that cannot be read or opened (missing, empty,
truncated, garbage) are skipped and counted in `skipped_files` / `bad_paths`; a file that opens but
fails inside DALI's decoder raises (DALI cannot drop one sample of a batch).
"""
from __future__ import annotations

import collections
import functools
import io
import time
import warnings

import numpy as np
import torch

from .datasets import SkipBadFiles
from .loader import Collate, LoaderPosition, batch_sampler_for
from .transforms import VideoEvalTransform, VideoTransform
from .video import VideoReader

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


def probe_codec(source) -> str:
    """Codec name of a video ('h264', 'vp9', 'mjpeg', ...): a path or an in-memory file."""
    with VideoReader(source) as vr:
        return _CODEC_ALIASES.get(vr.info.codec, vr.info.codec)


def dataset_codec(dataset) -> str:
    """Codec of a VideoDataset's / ShardVideoDataset's first readable sample (for select_reader)."""
    for i in range(min(len(dataset), 8)):
        try:
            return probe_codec(dataset.read_video(i) if hasattr(dataset, "read_video") else dataset.paths[i])
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
    was as fast as DALI's CPU decoder (bench/results/loader_cpu.csv).
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
                             f"not {codec!r}; re-encode (python -m engine.datagen prepare --codec vp9) or use 'pyav'")
        return "dali"
    return "dali" if gpu and dali_available() and codec in supported else "pyav"


# ----------------------------------------------------------------------------- the host's plan
class _Planner(SkipBadFiles):
    """Per (index, seed): encoded bytes + the clip plan the PyAV path would draw, with its skip logic."""

    def __init__(self, dataset):
        if getattr(dataset, "num_clips", 1) != 1:
            raise ValueError(f"DALI loader: num_clips must be 1, got {dataset.num_clips}")
        tf = dataset.transform
        if tf is not None and not isinstance(tf, (VideoTransform, VideoEvalTransform)):
            raise ValueError(f"DALI loader: transform must be VideoTransform, VideoEvalTransform or None, got {tf!r}")
        self.dataset, self.transform = dataset, tf
        self.paths, self.labels, self.source = dataset.paths, getattr(dataset, "labels", None), dataset.source
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
        return (buf.getvalue(), idx, H, W), label

    def _finish(self, data, rng):
        encoded, idx, H, W = data
        tf = self.transform
        if tf is not None:  # the draws of the PyAV path, in its order
            (top, left, h, w), flip = tf.plan(H, W, rng)
        else:
            top, left, h, w, flip = 0, 0, H, W, False
        return (np.frombuffer(encoded, np.uint8), idx.astype(np.int32),
                np.asarray([top, left], np.float32), np.asarray([top + h, left + w], np.float32),
                np.asarray(int(flip), np.int32))


class PlannedSource:
    """External source: batches from a sampler (EpochBatchSampler / ShardBatchSampler) planned on the host.
    (It holds the planner rather than being one: DALI reads a source with __len__ / __getitem__ as something
    other than a batch callback.)"""

    def __init__(self, dataset, sampler):
        self.planner, self.sampler = _Planner(dataset), sampler
        self.transform = self.planner.transform
        self.produced = collections.deque()  # (epoch, batch, global batch, skipped paths) in DALI's order
        self._keys = None

    def start(self, epoch: int, batch: int, start_sample: int = 0):
        self.produced.clear()
        self._keys = self._stream(epoch, batch, start_sample)

    def _stream(self, epoch, batch, start_sample):
        s = self.sampler
        while True:
            s.epoch, s.start_batch = epoch, batch
            if hasattr(s, "start_sample"):   # EpochBatchSampler; a shard sampler's state never has one
                s.start_sample = start_sample
            for b, keys in enumerate(s, start=batch):
                yield epoch, b, keys
            epoch, batch, start_sample = epoch + 1, 0, 0

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
def build_pipeline(source: PlannedSource, *, device="cpu", batch_size: int, num_threads: int = 2,
                   device_id: int | None = None, seed: int = 0, prefetch_queue_depth: int = 2):
    """A built DALI Pipeline with outputs (video, label): the planned frames decoded, then (when the
    dataset has a transform) the planned box resized, flipped and normalised to float32 [C, F, S, S];
    without a transform, the decoded uint8 frames [F, H, W, C] (for comparisons)."""
    from nvidia.dali import Pipeline, fn, types

    gpu = _is_gpu(device)
    if gpu and device_id is None:
        device_id = torch.cuda.current_device() if torch.cuda.is_available() else 0
    pipe = Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id if gpu else None,
                    seed=seed, prefetch_queue_depth=prefetch_queue_depth, exec_async=True, exec_pipelined=True)
    with pipe:
        enc, frames, roi_start, roi_end, mirror, label = fn.external_source(
            source=source, num_outputs=6, batch=True, parallel=False,
            dtype=[types.UINT8, types.INT32, types.FLOAT, types.FLOAT, types.INT32, types.INT64])
        video = fn.decoders.video(enc, device="mixed" if gpu else "cpu", frames=frames)
        tf = source.transform
        if tf is not None:
            norm = tf.normalize
            video = fn.resize(video, size=[tf.crop_size, tf.crop_size], roi_start=roi_start, roi_end=roi_end,
                              roi_relative=False, interp_type=types.INTERP_LINEAR, antialias=False)
            video = fn.crop_mirror_normalize(video, dtype=types.FLOAT, output_layout="CFHW",
                                             mean=(-norm.bias_C / norm.scale_C).tolist(),
                                             std=(1.0 / norm.scale_C).tolist(), mirror=mirror)
        pipe.set_outputs(video, label)
    with warnings.catch_warnings():  # without a transform the plan's crop/flip outputs go unused, by design
        warnings.filterwarnings("ignore", message=".*are not used.*")
        pipe.build()
    return pipe


# ----------------------------------------------------------------------------- to torch
class DaliLoader(LoaderPosition):
    """Endless (clips [B, 3, T, S, S], labels int64 [B], masks) batches from a DALI pipeline fed by a
    PlannedSource: the batches, masks, state_dict() and load_state_dict() are those of
    engine.data.loader.ResumableLoader over the same dataset and seed."""

    def __init__(self, pipe_factory, planned: PlannedSource, *, seed, mask_sampler=None):
        super().__init__(planned.sampler)
        self._factory, self.planned = pipe_factory, planned
        self.collate = Collate(seed, mask_sampler)   # its masks: those of the PyAV loader's batches

    def __iter__(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        self.planned.start(*self.position())
        it = DALIGenericIterator(self._factory(), ["video", "label"], size=-1, auto_reset=False,
                                 last_batch_policy=LastBatchPolicy.FILL, prepare_first_batch=False)
        while True:
            t0 = time.perf_counter()
            out = next(it)[0]
            epoch, b, gb, skipped = self.planned.produced.popleft()
            self.enter_epoch(epoch)
            self.batch_in_epoch = b + 1
            self.record_batch(t0, skipped)
            clips, labels = out["video"], out["label"].reshape(-1).long()
            yield clips, labels, self.collate.masks(clips.shape[0], gb)


def make_dali_loader(dataset, *, batch_size, seed, mask_sampler=None, device="cpu", rank=0, world_size=1,
                     shuffle=True, drop_last=True, num_threads=2, device_id=None, prefetch_queue_depth=2) -> DaliLoader:
    """The DALI twin of make_loader for a VideoDataset or ShardVideoDataset (num_clips=1): same batches.

    Sampling, crops and flips are planned on the host from the loader's per-sample seeds; DALI decodes
    the planned frames and crops, resizes, flips and normalises them (on the GPU with device="cuda").
    """
    sampler = batch_sampler_for(dataset, batch_size, seed, shuffle=shuffle, drop_last=drop_last, rank=rank,
                                world_size=world_size)
    planned = PlannedSource(dataset, sampler)
    factory = functools.partial(build_pipeline, planned, device=device, batch_size=batch_size, num_threads=num_threads,
                                device_id=device_id, seed=seed, prefetch_queue_depth=prefetch_queue_depth)
    return DaliLoader(factory, planned, seed=seed, mask_sampler=mask_sampler)
