"""engine.data: clip sampling, PyAV decoding, transforms, datasets, the resumable loader.

Run: .venv/bin/python -m pytest tests/data/test_datasets.py -x -q   (tiny videos)
"""
import dataclasses
import logging
from collections import Counter

import numpy as np
import pytest
import torch

from engine.data import (EpochBatchSampler, ImageEvalTransform, ImageFolderDataset, ImageTransform, VideoDataset,
                         VideoDecodeError, VideoEvalTransform, VideoReader, VideoTransform, decode_clip, make_loader,
                         read_index_csv, sample_clip_indices)
from engine.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from engine.datagen import generate_images, generate_videos, write_counter_video
from engine.datagen.synthetic import read_counter


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """12 tiny videos (5 classes, 16 frames of 32x32): 3 batches of 4 per epoch."""
    d = tmp_path_factory.mktemp("toy")
    return generate_videos(d, 12, num_frames=16, size=32, fps=8, seed=0, num_classes=5)


@pytest.fixture(scope="module")
def counter30(tmp_path_factory):
    """60 frames at 30 fps, frame k shows k."""
    return write_counter_video(tmp_path_factory.mktemp("cnt") / "c30.mp4", 60, fps=30, size=32)


# ----------------------------------------------------------------------------- sampling and decoding
def test_counter_video_roundtrip(counter30):
    with VideoReader(counter30) as vr:
        assert vr.info.num_frames == 60 and vr.info.fps == 30 and vr.info.exact
        idx = [5, 0, 59, 5]  # any order, repeats
        assert read_counter(vr.decode(idx)).tolist() == idx


def test_clip_indices_frame_step(counter30):
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(20):
        (idx,) = sample_clip_indices(60, 8, 3, 1, rng)
        assert np.all(np.diff(idx) == 3) and idx[0] >= 0 and idx[-1] < 60
        starts.add(int(idx[0]))
        assert read_counter(decode_clip(counter30, idx)).tolist() == idx.tolist()
    assert len(starts) > 5  # random start within the video
    # two clips: each within its own half of the video
    c0, c1 = sample_clip_indices(60, 4, 2, 2, rng)
    assert c0.max() < 30 <= c1.min()


def test_short_video_padding(tmp_path):
    p = write_counter_video(tmp_path / "short.mp4", 10, fps=8, size=32)
    (idx,) = sample_clip_indices(10, 8, 2, 1, np.random.default_rng(0))
    assert idx.tolist() == [0, 2, 4, 6, 8, 9, 9, 9]  # every step-th frame, then the last frame repeated
    ds = VideoDataset([_csv(tmp_path, [p])], frames_per_clip=8, frame_step=2)
    clip, _ = ds[(0, 0)]
    assert read_counter(clip.numpy()).tolist() == [0, 2, 4, 6, 8, 9, 9, 9]


def test_fps_sampling(tmp_path, counter30):
    ds = VideoDataset([_csv(tmp_path, [counter30])], frames_per_clip=6, frame_step=None, fps=10)
    for seed in range(3):
        clip, _ = ds[(0, seed)]
        k = read_counter(clip.numpy())
        assert np.all(np.diff(k) == 3)  # 30 fps video sampled at 10 fps: every 3rd frame


@pytest.mark.parametrize("codec", ["h264", "vp9", "mjpeg"])
def test_seek_path_matches_sequential(tmp_path, codec):
    p = write_counter_video(tmp_path / "long.bin", 200, fps=25, size=32, codec=codec, gop=10)
    idx = [150, 152, 154, 3, 190, 199]
    with VideoReader(p, seek_threshold=8) as vr:  # groups {3}, {150..154}, {190}, {199}: three seeks
        assert read_counter(vr.decode(idx)).tolist() == idx
    with VideoReader(p, seek_threshold=10**6) as vr:  # one sequential pass
        assert read_counter(vr.decode(idx)).tolist() == idx


# ----------------------------------------------------------------------------- transforms
def test_video_transform_shape_norm_determinism():
    clip = np.random.default_rng(0).integers(0, 256, (4, 40, 48, 3), dtype=np.uint8)
    tf = VideoTransform(crop_size=32, random_resize_scale=(0.3, 1.0))
    x = tf(clip, np.random.default_rng(5))
    assert x.shape == (3, 4, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x, tf(clip, np.random.default_rng(5)))  # same rng -> same crop and flip
    assert not torch.equal(x, tf(clip, np.random.default_rng(6)))
    const = np.full((2, 40, 48, 3), 200, np.uint8)  # normalisation: (v/255 - mean) / std per channel
    want = (200 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(tf(const, np.random.default_rng(0))[:, :, 5, 5], want[:, None].expand(3, 2), atol=1e-5)


def test_video_transform_one_box_per_clip_and_flip():
    # a full-frame crop (scale 1, ratio 1 on a square clip): the output is the clip, possibly flipped
    clip = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    tf = VideoTransform(crop_size=16, random_resize_scale=(1, 1), random_resize_aspect_ratio=(1, 1), mean=(0, 0, 0),
                        std=(1 / 255,) * 3)
    flips = set()
    ref = torch.from_numpy(clip).permute(3, 0, 1, 2).float()
    for s in range(10):
        x = tf(clip, np.random.default_rng(s))
        flipped = torch.allclose(x, ref.flip(-1))
        assert flipped or torch.allclose(x, ref)
        flips.add(flipped)
    assert flips == {True, False}
    # one box for the whole clip: identical frames stay identical after a random crop
    same = np.repeat(clip[:1], 4, axis=0)
    y = VideoTransform(crop_size=8)(same, np.random.default_rng(3))
    assert all(torch.equal(y[:, 0], y[:, t]) for t in range(4))


def test_eval_and_image_transforms():
    clip = np.random.default_rng(0).integers(0, 256, (2, 36, 48, 3), dtype=np.uint8)
    assert VideoEvalTransform(crop_size=32)(clip).shape == (3, 2, 32, 32)
    assert ImageTransform(crop_size=24, scale=(0.5, 1.0))(clip[0], np.random.default_rng(0)).shape == (3, 24, 24)
    assert ImageEvalTransform(crop_size=24)(clip[0]).shape == (3, 24, 24)


# ----------------------------------------------------------------------------- datasets
def _csv(tmp_path, paths, name="index.csv"):
    p = tmp_path / name
    p.write_text("".join(f"{x} {i % 3}\n" for i, x in enumerate(paths)))
    return p


def test_dataset_items(toy):
    ds = VideoDataset([toy], frames_per_clip=8, frame_step=2, transform=VideoTransform(crop_size=32))
    x, y = ds[(4, 99)]
    assert x.shape == (3, 8, 32, 32) and y == 4 % 5
    assert torch.equal(x, ds[(4, 99)][0])
    clips, _ = VideoDataset([toy], frames_per_clip=4, frame_step=2, num_clips=2, transform=VideoTransform(32))[(0, 1)]
    assert len(clips) == 2 and clips[0].shape == (3, 4, 32, 32)


def test_bad_csv_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("/a.mp4 1\n\n/b.mp4 notalabel\n")
    with pytest.raises(ValueError, match=r"bad\.csv:3"):
        read_index_csv(p)


def test_bad_files_are_skipped_and_counted(tmp_path, toy, caplog):
    good = read_index_csv(toy)[0]
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    data = open(good[0], "rb").read()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 2])
    bad = [tmp_path / "zero.mp4", tmp_path / "garbage.mp4", tmp_path / "trunc.mp4", tmp_path / "missing.mp4"]
    csv = _csv(tmp_path, [good[0], *bad, good[1]])
    ds = VideoDataset([csv], frames_per_clip=4, frame_step=1)
    with caplog.at_level(logging.WARNING):
        x, _ = ds[(1, 0)]  # index 1 is bad: indices 1-4 are skipped, 5 is returned
        ds[(1, 0)]
    assert torch.equal(x, ds[(5, 0)][0])
    assert ds.skipped == 8 and len(ds.bad_paths) == 4
    assert sum("skipping unreadable" in r.message for r in caplog.records) == 4  # each path logged once
    # the loader counts skips from its workers
    loader = make_loader(ds, batch_size=6, seed=0, num_workers=0, shuffle=False)
    next(iter(loader))
    assert loader.skipped_files == 4 + 3 + 2 + 1 and len(loader.bad_paths) == 4  # indices 1..4 each walk to 5


def test_all_bad_raises_clear_error(tmp_path):
    (tmp_path / "z.mp4").write_bytes(b"")
    csv = _csv(tmp_path, [tmp_path / "z.mp4", tmp_path / "nope.mp4"], name="allbad.csv")
    with pytest.raises(RuntimeError, match="allbad.csv"):
        VideoDataset([csv], frames_per_clip=4, frame_step=1)[(0, 0)]
    with pytest.raises(VideoDecodeError):
        decode_clip(tmp_path / "z.mp4", [0])


def test_image_folder(tmp_path):
    root = generate_images(tmp_path / "img", 10, size=32, seed=0)
    ds = ImageFolderDataset(root, transform=ImageTransform(crop_size=16))
    assert len(ds) == 10 and len(ds.classes) == 5 and Counter(ds.labels.tolist()) == {k: 2 for k in range(5)}
    x, y = ds[(3, 1)]
    assert x.shape == (3, 16, 16) and 0 <= y < 5
    batch = next(iter(make_loader(ds, batch_size=4, seed=0)))
    assert batch[0].shape == (4, 3, 16, 16)
    open(ds.paths[2], "wb").close()  # a bad image is skipped like a bad video
    assert torch.equal(ds[(2, 0)][0], ds[(3, 0)][0]) and ds.skipped == 1


# ----------------------------------------------------------------------------- loader
@dataclasses.dataclass
class _Masks:
    enc: list


class _MaskSampler:
    """Stands in for MaskCollator.sample: opaque, picklable, rng-driven."""

    def sample(self, batch_size, rng):
        return _Masks([torch.from_numpy(rng.permutation(16)[: 4 + i]) for i in range(batch_size)])


def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _same(a, b):
    (xa, ya, ma), (xb, yb, mb) = a, b
    return (torch.equal(xa, xb) and torch.equal(ya, yb)
            and all(torch.equal(p, q) for p, q in zip(ma.enc, mb.enc)) and len(ma.enc) == len(mb.enc))


def _toy_ds(toy):
    return VideoDataset([toy], frames_per_clip=4, frame_step=2, transform=VideoTransform(crop_size=16))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_determinism_and_resume(toy, num_workers):
    kw = dict(batch_size=4, seed=3, mask_sampler=_MaskSampler().sample, num_workers=num_workers)
    full = _batches(make_loader(_toy_ds(toy), **kw), 5)  # 3 batches per epoch: crosses an epoch boundary
    assert full[0][0].shape == (4, 3, 4, 16, 16) and full[0][1].dtype == torch.int64
    assert all(_same(a, b) for a, b in zip(full, _batches(make_loader(_toy_ds(toy), **kw), 5)))
    assert not torch.equal(full[0][0], full[3][0])  # a new epoch: new order and augmentations
    first = make_loader(_toy_ds(toy), **kw)
    _batches(first, 3)
    state = first.state_dict()
    assert state["epoch"] == 1 and state["batch_in_epoch"] == 0
    resumed = make_loader(_toy_ds(toy), **kw)
    resumed.load_state_dict(state)
    rest = _batches(resumed, 2)
    assert _same(rest[0], full[3]) and _same(rest[1], full[4])
    assert resumed.wait_seconds > 0 and resumed.last_wait_seconds >= 0


def test_loader_workers_match_single_process(toy):
    a = _batches(make_loader(_toy_ds(toy), batch_size=4, seed=1, num_workers=0), 2)
    b = _batches(make_loader(_toy_ds(toy), batch_size=4, seed=1, num_workers=2), 2)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert a[0][2] is None


def test_rank_sharding_no_overlap():
    for n, world in [(100, 3), (12, 4), (7, 2)]:
        seen = []
        for r in range(world):
            s = EpochBatchSampler(n, 2, seed=0, rank=r, world_size=world)
            s.epoch = 1
            batches = list(s)
            assert len(batches) == s.batches_per_epoch
            seen += [k[0] for b in batches for k in b]
            seeds = [k[1] for b in batches for k in b]
            assert len(set(seeds)) == len(seeds)
        assert len(seen) == len(set(seen))  # no sample on two ranks
    # masks differ across ranks: distinct global batch ids
    gbs = {EpochBatchSampler(8, 2, 0, rank=r, world_size=2).global_batch(0, 1) for r in range(2)}
    assert len(gbs) == 2


def test_weighted_index_files(tmp_path, toy):
    ds = VideoDataset([toy, toy], weights=[1.0, 0.0], frames_per_clip=4, frame_step=1)
    assert ds.sample_weights.shape == (24,)
    s = EpochBatchSampler(len(ds), 4, seed=0, weights=ds.sample_weights)
    drawn = [k[0] for b in s for k in b]
    assert len(drawn) == 24 and max(drawn) < 12  # all draws from the first index file


def test_resume_mid_epoch_and_strict_state(toy):
    kw = dict(batch_size=4, seed=5)
    full = _batches(make_loader(_toy_ds(toy), **kw), 3)
    a = make_loader(_toy_ds(toy), **kw)
    _batches(a, 1)
    b = make_loader(_toy_ds(toy), **kw)
    b.load_state_dict(a.state_dict())
    nxt = _batches(b, 2)
    assert torch.equal(nxt[0][0], full[1][0]) and torch.equal(nxt[1][0], full[2][0])
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(_toy_ds(toy), batch_size=2, seed=5).load_state_dict(a.state_dict())
