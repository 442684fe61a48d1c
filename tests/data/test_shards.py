"""Tar shards: writer layout, prepare round trip, PyAV file vs shard frames, rank split, resume, bad shards.

Run: .venv/bin/python -m pytest tests/data/test_shards.py -q
"""
import json
import logging
import tarfile

import av
import numpy as np
import pytest
import torch

from engine.data import (ShardBatchSampler, ShardVideoDataset, VideoDataset, VideoTransform, decode_clip, make_loader,
                         read_index_csv)
from engine.data.shards import scan_shard, split_member_name
from engine.datagen import ShardWriter, prepare, read_counter, write_counter_video
from engine.datagen.__main__ import main as cli_main

from .conftest import write_csv


@pytest.fixture(scope="module")
def raw_shards(tmp_path_factory, vp9_csv):
    """The 8 VP9 files written as-is (no transcoding) into shards of 3: 3 + 3 + 2 samples."""
    d = tmp_path_factory.mktemp("raw_shards")
    paths, labels = read_index_csv(vp9_csv)
    with ShardWriter(d, shard_size=3) as w:
        for i, (p, lab) in enumerate(zip(paths, labels)):
            w.write(f"{i:04d}", open(p, "rb").read(), "mp4", {"label": lab, "fps": 8, "num_frames": 24},
                    arrays={"actions": np.full((24, 2), i, np.float32)})
    return d, paths, labels


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, vp9_csv):
    """prepare() of the 8 videos plus 3 bad inputs, shard size 2, short side 32 -> 4 shards of 2."""
    d = tmp_path_factory.mktemp("prep")
    (d / "empty.mp4").write_bytes(b"")
    (d / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(3000))
    paths, labels = read_index_csv(vp9_csv)
    csv = write_csv(d / "in.csv", paths + [d / "empty.mp4", d / "garbage.mp4", d / "gone.mp4"], labels + [0, 0, 0])
    return prepare(csv, d / "out", codec="vp9", size=32, shard_size=2), d / "out", labels


def test_writer_layout_and_scan(raw_shards):
    d, paths, labels = raw_shards
    tars = sorted(d.glob("*.tar"))
    assert [t.name for t in tars] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    with tarfile.open(tars[0]) as tf:
        names = tf.getnames()
    assert names[:5] == ["0000.mp4", "0000.json", "0000.cls", "0000.info.i32", "0000.actions.npy"]
    samples, problem = scan_shard(tars[2])
    assert problem is None and [s["key"] for s in samples] == ["0006", "0007"]
    assert split_member_name("a/b/0001.actions.npy") == ("a/b/0001", "actions.npy")
    with pytest.raises(ValueError, match="without dots"):
        ShardWriter(d / "x").write("a.b", b"", "mp4", {"label": 0, "fps": 1, "num_frames": 1})


def test_shard_members_equal_files(raw_shards):
    """PyAV on the file and PyAV on the tar member: identical frames for the same indices."""
    d, paths, labels = raw_shards
    ds = ShardVideoDataset(d, frames_per_clip=6, frame_step=3)
    assert len(ds) == 8 and ds.shard_counts == [3, 3, 2]
    files = VideoDataset([write_csv(d / "files.csv", paths, labels)], frames_per_clip=6, frame_step=3)
    for i in (0, 4, 7):
        for seed in (0, 11):
            xs, ys = ds[(i, seed)]
            xf, yf = files[(i, seed)]  # same seed -> same clip indices
            assert torch.equal(xs, xf) and ys == yf == labels[i]
    assert np.array_equal(ds.read_array(4, "actions"), np.full((24, 2), 4, np.float32))
    assert ds.read_meta(4)["num_frames"] == 24
    np.testing.assert_array_equal(np.frombuffer(ds.read_component(4, "info.i32"), "<i4"), [labels[4], 24, 8])


def test_prepare_round_trip(prepared, vp9_csv):
    index, out, labels = prepared
    assert index["num_samples"] == 8 and [s["count"] for s in index["shards"]] == [2, 2, 2, 2]
    assert index["num_frames"] == 8 * 24 and index["duration"] == pytest.approx(8 * 3.0)
    assert sorted(s["path"].rsplit("/", 1)[-1] for s in index["skipped"]) == ["empty.mp4", "garbage.mp4", "gone.mp4"]
    assert json.loads((out / "index.json").read_text()) == index
    rows = (out / "index.csv").read_text().splitlines()
    assert rows[0] == "path,count,frames,duration" and rows[1] == "shard-000000.tar,2,48,6.0"
    ds = ShardVideoDataset(out / "index.json", frames_per_clip=4, frame_step=2)
    metas = [ds.read_meta(i) for i in range(len(ds))]
    assert [m["label"] for m in metas] == labels  # input order kept, no sample lost or doubled
    assert {(m["width"], m["height"], m["codec"], m["num_frames"]) for m in metas} == {(32, 32, "vp9", 24)}
    x, _ = ds[(3, 0)]
    assert x.shape == (4, 32, 32, 3) and x.dtype == torch.uint8


def test_prepare_keeps_frames_and_arrays(tmp_path):
    """Transcoding keeps every frame in order (counter video) and carries the per-frame arrays along."""
    (tmp_path / "v").mkdir()
    src = write_counter_video(tmp_path / "v" / "c.mp4", 30, fps=15, size=32, codec="h264")
    np.save(tmp_path / "v" / "c.actions.npy", np.arange(30))
    np.save(tmp_path / "v" / "c.states.npy", np.arange(60).reshape(30, 2))
    cli_main(["prepare", "--input", str(tmp_path / "v"), "--output", str(tmp_path / "s"), "--size", "0", "--gop", "8",
              "--codec", "vp9"])
    ds = ShardVideoDataset(tmp_path / "s", frames_per_clip=6, frame_step=5)
    assert read_counter(decode_clip(ds.read_video(0), [0, 7, 29, 29])).tolist() == [0, 7, 29, 29]
    assert ds.read_array(0, "actions").tolist() == list(range(30)) and ds.read_array(0, "states").shape == (30, 2)
    clip, _ = ds[(0, 3)]
    k = read_counter(clip.numpy())
    assert np.all(np.diff(k) == 5) and k[0] <= 4  # frame_step on the shard path
    with av.open(ds.read_video(0)) as c:
        keys = [p.is_keyframe for p in c.demux(video=0) if p.size]
    assert len(keys) == 30 and sum(keys) == 4  # --gop 8: keyframes at 0, 8, 16, 24
    m = ds.read_meta(0)
    assert m["fps"] == 15 and m["num_frames"] == 30 and m["source"] == str(src)


def test_prepare_all_bad_is_a_clear_error(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="none of 2 videos"):
        prepare(write_csv(tmp_path / "bad.csv", [tmp_path / "a.mp4", tmp_path / "b.mp4"]), tmp_path / "o")


def test_two_ranks_split_shards_without_loss_or_overlap(prepared):
    _, out, _ = prepared
    ds = ShardVideoDataset(out, frames_per_clip=4, frame_step=2)
    for epoch in range(3):
        streams = [ds.make_batch_sampler(1, seed=5, rank=r, world_size=2).rank_stream(epoch) for r in range(2)]
        both = np.concatenate(streams)
        assert sorted(both.tolist()) == list(range(8))  # every clip once per epoch, on one rank
        shards = [set((np.asarray(s) // 2).tolist()) for s in streams]  # each rank reads whole shards of its own
        assert not shards[0] & shards[1] and len(shards[0]) == len(shards[1]) == 2
    # through the real loaders: 2 ranks x 2 batches of 2 = all 8 clips of the epoch
    seen = []
    for r in range(2):
        loader = make_loader(ds, batch_size=2, seed=5, rank=r, world_size=2)
        assert loader.batches_per_epoch == 2
        for _, keys in zip(range(2), loader.sampler):
            seen += [k[0] for k in keys]
    assert sorted(seen) == list(range(8))
    with pytest.raises(ValueError, match="4 shard"):
        ShardBatchSampler([2, 2, 2, 2], 1, 0, rank=0, world_size=5)


def test_unequal_shards_give_equal_batch_counts():
    for counts, world in [([5, 5, 3], 2), ([7, 1, 4, 4, 2], 3), ([3], 1)]:
        per_rank = []
        for r in range(world):
            s = ShardBatchSampler(counts, 2, seed=1, rank=r, world_size=world)
            for e in range(4):
                s.epoch = e
                batches = list(s)
                assert len(batches) == s.batches_per_epoch
                flat = [k[0] for b in batches for k in b]
                assert len(flat) == len(set(flat))
                per_rank.append(len(batches))
        assert len(set(per_rank)) == 1  # no rank waits for another at an epoch's end


def test_shard_stream_resume(prepared):
    _, out, _ = prepared
    tf = VideoTransform(crop_size=16)
    kw = dict(batch_size=2, seed=9)
    ds = ShardVideoDataset(out, frames_per_clip=4, frame_step=2, transform=tf)
    full_loader = make_loader(ds, **kw)
    it = iter(full_loader)
    full = [next(it) for _ in range(6)]  # 4 batches per epoch: crosses into epoch 1
    first = make_loader(ShardVideoDataset(out, frames_per_clip=4, frame_step=2, transform=tf), **kw)
    it = iter(first)
    [next(it) for _ in range(3)]
    state = first.state_dict()
    assert (state["epoch"], state["batch_in_epoch"]) == (0, 3)
    resumed = make_loader(ShardVideoDataset(out, frames_per_clip=4, frame_step=2, transform=tf), **kw)
    resumed.load_state_dict(state)
    it = iter(resumed)
    rest = [next(it) for _ in range(3)]
    for a, b in zip(rest, full[3:]):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # the resumed part of epoch 0 holds only clips not seen before the save
    s = resumed.sampler
    s.epoch, s.start_batch = 0, 0
    keys = [[k[0] for k in b] for b in s]
    assert not set(sum(keys[:3], [])) & set(keys[3])


def test_bad_shards_and_members(tmp_path, raw_shards, caplog):
    d, paths, labels = raw_shards
    good = sorted(d.glob("*.tar"))
    data = good[0].read_bytes()
    (tmp_path / "trunc.tar").write_bytes(data[: len(data) * 2 // 3])  # ends inside a later member
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 40)
    with caplog.at_level(logging.WARNING):
        ds = ShardVideoDataset([str(good[1]), str(tmp_path / "trunc.tar"), str(tmp_path / "junk.tar"),
                                str(tmp_path / "missing.tar")], frames_per_clip=4, frame_step=2)
    assert set(ds.bad_shards) == {str(tmp_path / n) for n in ("trunc.tar", "junk.tar", "missing.tar")}
    assert "truncated" in ds.bad_shards[str(tmp_path / "trunc.tar")]
    assert ds.shard_counts == [3, 2]  # the truncated tar keeps its complete samples, drops the cut one
    assert sum("missing.tar" in r.message for r in caplog.records) == 1
    # a corrupt video member inside a readable tar is skipped like a bad file and named
    with ShardWriter(tmp_path / "c", shard_size=10) as w:
        w.write("bad", np.random.default_rng(1).bytes(2000), "mp4", {"label": 1, "fps": 8, "num_frames": 24})
        w.write("good", open(paths[0], "rb").read(), "mp4", {"label": 4, "fps": 8, "num_frames": 24})
    cds = ShardVideoDataset(tmp_path / "c", frames_per_clip=4, frame_step=2)
    x, y = cds[(0, 0)]
    assert y == 4 and cds.skipped == 1 and cds.bad_paths == {f"{tmp_path / 'c' / 'shard-000000.tar'}:bad"}
    with pytest.raises(ValueError, match="no readable samples"):
        ShardVideoDataset([str(tmp_path / "junk.tar")])
    with ShardWriter(tmp_path / "allbad", shard_size=10) as w:
        for k in range(3):
            w.write(f"b{k}", b"\0" * 100, "mp4", {"label": 0, "fps": 8, "num_frames": 24})
    with pytest.raises(RuntimeError, match="3 consecutive files failed"):
        ShardVideoDataset(tmp_path / "allbad", frames_per_clip=4)[(0, 0)]
