"""Map-style datasets of video clips (index CSVs) and images (an ImageFolder tree), seeded per sample.

Usage:
    ds = VideoDataset(["data/train.csv"], frames_per_clip=16, frame_step=4,
                      transform=VideoTransform(crop_size=64))
    clip_CTHW, label = ds[(17, 12345)]        # (index, per-sample seed): the loader supplies both
    clip_CTHW, label = ds[17]                 # a bare index uses the index as the seed
    imgs = ImageFolderDataset("data/images", transform=ImageTransform(crop_size=64))

An index CSV has one "<video path> <integer label>" per line, space separated (the V-JEPA reference
format); the path may itself contain spaces (the label is the last whitespace-separated field); a
relative path is taken relative to the CSV's folder; blank lines and lines starting with '#' are ignored.
Several CSVs can be mixed; `weights` (one per CSV) gives each CSV's share of the draws, as the reference's
`datasets_weights` (the loader then samples with replacement from `sample_weights`).

Bad files (missing, empty, truncated, corrupt) are not fatal: the sample at the next index is taken
instead (deterministic), the skip is counted (`skipped`, `bad_paths`) and each path is logged once per
process. After `max_consecutive_failures` failures in a row a RuntimeError names the index file(s).
The transform is called as transform(uint8 array [T, H, W, 3] or [H, W, 3], np.random.Generator).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .transforms import VideoEvalTransform, VideoTransform
from .video import VideoReader, frame_step_for, sample_clip_indices

logger = logging.getLogger(__name__)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def read_index_csv(path) -> tuple[list[str], list[int]]:
    """Parse a reference index CSV; a malformed line raises ValueError naming the file and line number."""
    path = Path(path)
    paths, labels = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)  # the label is the last field; the path may hold spaces
        try:
            if len(parts) != 2 or not parts[0].strip():
                raise ValueError
            label = int(parts[1])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: expected '<video path> <integer label>', got {line!r}") from None
        p = Path(parts[0].strip())
        paths.append(str(p if p.is_absolute() else path.parent / p))
        labels.append(label)
    return paths, labels


class NoReadableFiles(RuntimeError):
    """Every file tried for a sample failed to load: the data, not the code, is broken."""


class SkipBadFiles(torch.utils.data.Dataset):
    """Skip-and-count logic: subclasses set paths, labels, source; define _load(path, rng), _finish(data, rng).

    (Or override _load_index(i, rng) -> (data, label) when a sample is not one file, e.g. a tar member.)
    """

    max_consecutive_failures: int = 50
    warn_on_skip = True  # make_loader turns this off: it logs each bad path once, in the main process

    def _init_skips(self, max_consecutive_failures):
        self.skipped = 0  # skip events in this process (a bad file hit in two epochs counts twice)
        self.bad_paths: set[str] = set()
        if max_consecutive_failures is not None:
            self.max_consecutive_failures = max_consecutive_failures

    def __len__(self):
        return len(self.paths)

    def get(self, key):
        """(sample, label, [paths skipped on the way]) for key = index or (index, seed)."""
        index, seed = key if isinstance(key, (tuple, list)) else (key, key)
        index = int(index)
        rng = np.random.default_rng(seed)
        n = len(self.paths)
        skipped, last_err = [], None
        for attempt in range(min(n, self.max_consecutive_failures)):
            i = (index + attempt) % n
            try:
                data, label = self._load_index(i, rng)
            except Exception as e:  # noqa: BLE001 -- any unreadable file is skipped (the transform is not)
                last_err, path = e, self.paths[i]
                skipped.append(path)
                self.skipped += 1
                if path not in self.bad_paths:   # logged once per path
                    self.bad_paths.add(path)
                    if self.warn_on_skip:
                        logger.warning("skipping unreadable file %s: %s", path, e)
                continue
            return self._finish(data, rng), label, skipped
        raise NoReadableFiles(f"{len(skipped)} consecutive files failed to load starting at index {index} "
                           f"(last: {skipped[-1]}: {last_err!r}); check {self.source}") from last_err

    def _load_index(self, i, rng):
        return self._load(self.paths[i], rng), int(self.labels[i])

    def __getitem__(self, key):
        sample, label, _ = self.get(key)
        return sample, label


class _Resized:
    """Clips already cropped, resized and flipped by the reader: uint8 [3, T, S, S] each."""

    def __init__(self, clips):
        self.clips = clips


class VideoDataset(SkipBadFiles):
    """Clips from index CSVs: (float32 clip [3, T, H, W] or a list of num_clips of them, int label).

    With a VideoTransform / VideoEvalTransform the reader crops and resizes each frame as it converts it
    from the decoder's YUV planes (VideoReader.decode_resized: the same boxes, flips and resize, a
    level or so of rounding apart); `decode_to_size = False` decodes whole RGB frames and calls the
    transform on them instead.
    """

    decode_to_size = True
    fast_open = True  # MP4s read from their sample table (VideoReader(fast_open=...)); False: always av.open
    # data.filter_short_videos: a video shorter than one clip's span (frames_per_clip * step) is skipped
    # and counted like an unreadable one, as the reference skips it; otherwise its clip repeats frames
    filter_short_videos = False

    def __init__(self, index_csvs, weights=None, **clip_args):
        """clip_args: those of _init_clip_args."""
        if isinstance(index_csvs, (str, Path)):
            index_csvs = [index_csvs]
        self.index_csvs = [str(p) for p in index_csvs]
        self._init_clip_args(**clip_args)
        self.paths, labels, self.num_samples_per_dataset = [], [], []
        for csv in self.index_csvs:
            p, lab = read_index_csv(csv)
            if not p:
                raise ValueError(f"{csv}: no samples")
            self.paths += p
            labels += lab
            self.num_samples_per_dataset.append(len(p))
        self.labels = np.asarray(labels, dtype=np.int64)
        self.sample_weights = None
        if weights is not None:
            if len(weights) != len(self.index_csvs):
                raise ValueError(f"{len(weights)} weights for {len(self.index_csvs)} index files")
            self.sample_weights = np.concatenate(
                [np.full(n, w / n) for w, n in zip(weights, self.num_samples_per_dataset)])
        self.source = "index file(s) " + ", ".join(self.index_csvs)

    def _init_clip_args(self, frames_per_clip: int = 16, frame_step: int = 4, fps: float | None = None,
                        duration: float | None = None, num_clips: int = 1, transform=None,
                        random_clip_sampling: bool = True, allow_clip_overlap: bool = False,
                        max_consecutive_failures: int | None = None, seek_threshold: int = 64):
        """How clips are sampled (sample_indices), transformed and skipped, for every clip dataset."""
        if fps is not None and duration is not None:
            raise ValueError("give at most one of fps= and duration= (either overrides frame_step)")
        if fps is None and duration is None and not (frame_step and frame_step > 0):
            raise ValueError(f"frame_step must be a positive int without fps/duration, got {frame_step}")
        self.frames_per_clip, self.frame_step, self.fps, self.duration = frames_per_clip, frame_step, fps, duration
        self.num_clips, self.transform = num_clips, transform
        self.random_clip_sampling, self.allow_clip_overlap = random_clip_sampling, allow_clip_overlap
        self.seek_threshold = seek_threshold
        self._init_skips(max_consecutive_failures)

    def sample_indices(self, vr, rng) -> list:
        """This dataset's clip frame indices for an open VideoReader (the sampling rules in one place)."""
        step = self.frame_step
        if self.fps is not None or self.duration is not None:   # V-JEPA 2: from the video's own frame rate
            step = frame_step_for(vr.info.fps, fps=self.fps, duration=self.duration,
                                  frames_per_clip=self.frames_per_clip)
        if self.filter_short_videos and vr.info.num_frames < self.frames_per_clip * step:
            raise ValueError(f"video of {vr.info.num_frames} frames is shorter than a clip "
                             f"({self.frames_per_clip} x {step}) and data.filter_short_videos is on")
        return sample_clip_indices(vr.info.num_frames, self.frames_per_clip, step, self.num_clips, rng,
                                   random_clip_sampling=self.random_clip_sampling,
                                   allow_clip_overlap=self.allow_clip_overlap)

    def _load(self, path, rng):
        # the clip indices need the video's length, so the clip is sampled here, from the sample's rng
        with VideoReader(path, seek_threshold=self.seek_threshold, fast_open=self.fast_open) as vr:
            return self._decode(vr, self.sample_indices(vr, rng), rng)

    def _decode(self, vr, clips, rng):
        """The frames of `clips` (frame indices per clip) from an open reader, cropped while decoding
        when the transform allows it."""
        fpc, tf = self.frames_per_clip, self.transform
        if self.decode_to_size and isinstance(tf, (VideoTransform, VideoEvalTransform)) \
                and getattr(tf, "crops_while_decoding", True):
            # the transform's draws (same rng, same order as calling it after decoding), then each
            # frame is cropped and resized straight from the decoder's YUV planes
            plans = [tf.plan(vr.info.height, vr.info.width, rng) for _ in clips]
            u8_3TSS = vr.decode_resized(np.concatenate(clips), (tf.crop_size, tf.crop_size),
                                        np.repeat([box for box, _ in plans], fpc, axis=0),
                                        np.repeat([flip for _, flip in plans], fpc))
            return _Resized([u8_3TSS[:, k * fpc:(k + 1) * fpc] for k in range(self.num_clips)])
        frames = vr.decode(np.concatenate(clips))
        return [frames[k * fpc:(k + 1) * fpc] for k in range(self.num_clips)]

    def _finish(self, clips_THW3, rng):
        if isinstance(clips_THW3, _Resized):  # cropped while decoding: what follows the crop is left
            clips = [self.transform.finish(c, rng) for c in clips_THW3.clips]
        elif self.transform is not None:
            clips = [self.transform(c, rng) for c in clips_THW3]
        else:
            clips = [torch.from_numpy(c) for c in clips_THW3]
        return clips[0] if self.num_clips == 1 else clips


class ImageFolderDataset(SkipBadFiles):
    """root/<class>/<image>: (float32 image [3, H, W] (uint8 [H, W, 3] without a transform), int label)."""

    def __init__(self, root, transform=None, max_consecutive_failures: int | None = None):
        root = Path(root)
        self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not self.classes:
            raise ValueError(f"{root}: no class folders")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.paths, labels = [], []
        for c in self.classes:
            for f in sorted((root / c).iterdir()):
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    self.paths.append(str(f))
                    labels.append(self.class_to_idx[c])
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform, self.sample_weights = transform, None
        self.source = f"image folder {root}"
        self._init_skips(max_consecutive_failures)

    def _load(self, path, rng):
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    def _finish(self, img_HW3, rng):
        return self.transform(img_HW3, rng) if self.transform is not None else torch.from_numpy(img_HW3.copy())
