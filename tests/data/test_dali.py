"""DALI decoding on CPU: same frames and clips as the PyAV path, resume, bad files.

Run: .venv/bin/python -m pytest tests/data/test_dali.py -q
"""
import warnings

import numpy as np
import pytest
import torch

from engine.data import (ShardVideoDataset, VideoDataset, VideoEvalTransform, VideoTransform, make_loader,
                         read_index_csv)
from engine.data.dali import dali_available, dataset_codec, make_dali_loader, probe_codec, select_reader
from engine.datagen import ShardWriter, read_counter

from .conftest import write_csv

pytestmark = pytest.mark.filterwarnings("ignore::Warning:nvidia")
needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia.dali is not importable in this environment")


def _first(loader):
    return next(iter(loader))


def test_select_reader_rules(counter_videos):
    assert probe_codec(counter_videos["h264"]) == "h264" and probe_codec(counter_videos["mjpeg"]) == "mjpeg"
    assert select_reader("h264", "cpu") == "pyav" and select_reader("vp9", "cpu") == "pyav"  # CPU default: PyAV
    assert select_reader("vp9", "cpu", "pyav") == "pyav"
    with pytest.raises(ValueError, match="data.reader"):
        select_reader("vp9", "cpu", "decord")
    if dali_available():
        assert select_reader("h264", "cuda:0") == "dali" and select_reader("hevc", "gpu", "dali") == "dali"
        assert select_reader("vp9", "cpu", "dali") == "dali" and select_reader("mjpeg", "cpu", "dali") == "dali"
        with pytest.raises(ValueError, match="not 'h264'"):
            select_reader("h264", "cpu", "dali")
        assert select_reader("theora", "cuda", "auto") == "pyav"


@needs_dali
@pytest.mark.parametrize("codec", ["vp9", "vp9_sparse", "mjpeg"])
def test_dali_cpu_frames_match_pyav(codec, counter_videos, tmp_path):
    """Raw frames: the same clip indices (frame_step, last-frame padding) and pixels within codec tolerance."""
    csv = write_csv(tmp_path / "c.csv", [counter_videos[codec]] * 2)
    for fpc, step in [(6, 3), (8, 7)]:  # 8 x 7 spans 50 > 40 frames: padded by repeating the last frame
        ds = VideoDataset([csv], frames_per_clip=fpc, frame_step=step, transform=None)
        x_dali = _first(make_dali_loader(ds, batch_size=2, seed=4))[0].numpy()
        x_pyav = _first(make_loader(ds, batch_size=2, seed=4))[0].numpy()
        assert x_dali.shape == x_pyav.shape == (2, fpc, 32, 32, 3)
        for b in range(2):
            k = read_counter(x_dali[b])
            assert k.tolist() == read_counter(x_pyav[b]).tolist()
            if fpc * step > 40:
                assert k.tolist() == [0, 7, 14, 21, 28, 35, 39, 39]
            else:
                assert np.all(np.diff(k) == step)
        d = np.abs(x_dali.astype(np.float32) - x_pyav)
        assert d.mean() < 4 and np.percentile(d, 90) <= 8, (d.mean(), np.percentile(d, 90))


@needs_dali
def test_dali_cpu_augmented_clips_match_pyav(vp9_csv):
    """Same sample seeds -> same crop boxes and flips: DALI's crop/resize/flip/normalise matches transforms.py."""
    tf = VideoTransform(crop_size=32, random_resize_scale=(0.3, 1.0))
    ds = VideoDataset([vp9_csv], frames_per_clip=6, frame_step=2, transform=tf)
    xd, yd, _ = _first(make_dali_loader(ds, batch_size=4, seed=1))
    xp, yp, _ = _first(make_loader(ds, batch_size=4, seed=1))
    assert xd.shape == xp.shape == (4, 3, 6, 32, 32) and xd.dtype == torch.float32
    assert torch.equal(yd, yp)
    err = (xd - xp).abs()
    print("augmented: mean abs error", float(err.mean()), "flip scale", float((xp - xp.flip(-1)).abs().mean()))
    assert err.mean() < 0.06, err.mean()  # normalised units: ~3/255/std
    # a different flip would give errors of the order of the image's own variation
    assert err.mean() < 0.25 * (xp - xp.flip(-1)).abs().mean()
    ev = VideoDataset([vp9_csv], frames_per_clip=6, frame_step=2, transform=VideoEvalTransform(crop_size=32))
    xd, _, _ = _first(make_dali_loader(ev, batch_size=4, seed=1, shuffle=False))
    xp, _, _ = _first(make_loader(ev, batch_size=4, seed=1, shuffle=False))
    assert (xd - xp).abs().mean() < 0.06


@needs_dali
def test_dali_loader_resume_and_masks(vp9_csv):
    tf = VideoTransform(crop_size=16)
    ds = VideoDataset([vp9_csv], frames_per_clip=4, frame_step=2, transform=tf)
    sampler = lambda b, rng: torch.from_numpy(rng.permutation(8)[:b])  # noqa: E731
    kw = dict(batch_size=3, seed=2, mask_sampler=sampler)
    it = iter(make_dali_loader(ds, **kw))
    full = [next(it) for _ in range(4)]  # 2 batches per epoch
    first = make_dali_loader(ds, **kw)
    it = iter(first)
    next(it)
    state = first.state_dict()
    assert (state["epoch"], state["batch_in_epoch"]) == (0, 1)
    resumed = make_dali_loader(ds, **kw)
    resumed.load_state_dict(state)
    it = iter(resumed)
    rest = [next(it) for _ in range(3)]
    for a, b in zip(rest, full[1:]):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    # the PyAV loader draws the same masks for the same global batches
    it = iter(make_loader(ds, **kw))
    assert torch.equal(next(it)[2], full[0][2])


@needs_dali
def test_dali_loader_goes_on_from_a_start_sample(vp9_csv):
    """An epoch continued from a global position (a resume on another number of ranks, see
    engine.data.loader.state_for_world): DALI reads what the PyAV loader reads, then the next epoch from 0."""
    ds = VideoDataset([vp9_csv], frames_per_clip=4, frame_step=2, transform=VideoTransform(crop_size=16))
    sampler = lambda b, rng: torch.from_numpy(rng.permutation(8)[:b])  # noqa: E731
    kw = dict(batch_size=1, seed=2, mask_sampler=sampler, rank=1, world_size=2)
    # 3 of the 8 positions read: rank 1 of 2 reads positions 4 and 6, then epoch 1 from position 1
    state = {"epoch": 0, "batch_in_epoch": 0, "start_sample": 3, "seed": 2, "rank": 1, "world_size": 2,
             "batch_size": 1, "num_samples": 8}
    loaders = [make_dali_loader(ds, **kw), make_loader(ds, **kw)]
    batches = []
    for loader in loaders:
        loader.load_state_dict(state)
        it = iter(loader)
        batches.append([next(it) for _ in range(2)])
        assert (loader.state_dict()["epoch"], loader.state_dict()["start_sample"]) == (1, 0)
        batches[-1].append(next(it))
    order = [make_loader(ds, **kw).sampler.epoch_order(e) for e in (0, 1)]
    expected = [order[0][4] % 5, order[0][6] % 5, order[1][1] % 5]     # labels are i % 5
    for (xd, yd, md), (xp, yp, mp), label in zip(*batches, expected):
        assert int(yd) == int(yp) == label and torch.equal(md, mp)
        assert (xd - xp).abs().mean() < 0.06


@needs_dali
def test_dali_planned_source_on_shards(tmp_path, vp9_csv):
    paths, labels = read_index_csv(vp9_csv)
    with ShardWriter(tmp_path, shard_size=4) as w:
        for i, (p, lab) in enumerate(zip(paths, labels)):
            w.write(f"{i:03d}", open(p, "rb").read(), "mp4", {"label": lab, "fps": 8, "num_frames": 24})
    ds = ShardVideoDataset(tmp_path, frames_per_clip=5, frame_step=4, transform=None)
    assert dataset_codec(ds) == "vp9" and dataset_codec(VideoDataset([vp9_csv])) == "vp9"
    xd, yd, _ = _first(make_dali_loader(ds, batch_size=4, seed=0, rank=1, world_size=2))
    xp, yp, _ = _first(make_loader(ds, batch_size=4, seed=0, rank=1, world_size=2))
    assert torch.equal(yd, yp) and np.abs(xd.numpy().astype(np.float32) - xp.numpy()).mean() < 4


@needs_dali
def test_dali_skips_bad_files(tmp_path, vp9_csv):
    good, labels = read_index_csv(vp9_csv)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    data = open(good[0], "rb").read()
    (tmp_path / "trunc.mp4").write_bytes(data[: len(data) // 3])
    bad = [tmp_path / "empty.mp4", tmp_path / "junk.mp4", tmp_path / "trunc.mp4", tmp_path / "gone.mp4"]
    csv = write_csv(tmp_path / "mixed.csv", [good[0], *bad, *good[1:4]])
    ds = VideoDataset([csv], frames_per_clip=4, frame_step=2, transform=None)
    loader = make_dali_loader(ds, batch_size=8, seed=0, shuffle=False)
    x, y, _ = _first(loader)
    assert x.shape[0] == 8 and loader.skipped_files == 4 + 3 + 2 + 1
    assert loader.bad_paths == {str(p) for p in bad}
    all_bad = VideoDataset([write_csv(tmp_path / "allbad.csv", bad)], frames_per_clip=4, transform=None)
    with pytest.raises(RuntimeError, match="allbad.csv"):
        _first(make_dali_loader(all_bad, batch_size=2, seed=0))


def test_dali_module_imports_without_dali():
    """select_reader and the module import lazily: no DALI import at module level."""
    import engine.data.dali as m
    assert "nvidia" not in m.__dict__ and callable(m.select_reader)
    warnings.simplefilter("default")
