"""engine.datagen's procedural videos: files that decode, determinism, the motion classes, scene options, the CLI.

Run: .venv/bin/python -m pytest tests/datagen/test_synthetic.py -x -q
"""
from collections import Counter

import av
import numpy as np
import pytest

from engine.data import decode_clip, read_index_csv
from engine.datagen import generate_split, generate_videos
from engine.datagen.__main__ import main as cli_main
from engine.datagen.synthetic import MOTION_CLASSES, render_clip


# ----------------------------------------------------------------------------- generation
@pytest.mark.parametrize("codec", ["h264", "vp9", "mjpeg"])
def test_generated_videos_decode(tmp_path, codec):
    n = 10 if codec == "h264" else 2
    csv = generate_videos(tmp_path, n, num_frames=16, size=64, fps=8, codec=codec, seed=1, num_classes=5)
    paths, labels = read_index_csv(csv)
    assert len(paths) == n and all(p.startswith("/") for p in paths)
    for line in csv.read_text().splitlines():  # reference format: "<abs path> <label>"
        assert len(line.split(" ")) == 2
    for p in paths[:2]:
        with av.open(p) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == 16 and frames[0].shape == (64, 64, 3)
    if codec == "h264":
        assert Counter(labels) == {k: 2 for k in range(5)}  # balanced


def test_generation_deterministic_and_split(tmp_path):
    a = generate_videos(tmp_path / "a", 3, size=32, seed=7)
    b = generate_videos(tmp_path / "b", 3, size=32, seed=7)
    for pa, pb in zip(read_index_csv(a)[0], read_index_csv(b)[0]):
        assert open(pa, "rb").read() == open(pb, "rb").read()  # bit-identical files for a seed
    tr, va = generate_split(tmp_path / "s", train=4, val=2, size=32, seed=7)
    assert tr.name == "train.csv" and va.name == "val.csv"
    assert len(read_index_csv(tr)[0]) == 4 and len(read_index_csv(va)[0]) == 2
    assert open(read_index_csv(tr)[0][0], "rb").read() != open(read_index_csv(va)[0][0], "rb").read()
    mtime = tr.stat().st_mtime_ns  # a rerun with the same arguments is a no-op
    assert generate_split(tmp_path / "s", train=4, val=2, size=32, seed=7)[0].stat().st_mtime_ns == mtime


def test_motion_classes_trajectories():
    """The label lives in the motion: check each class's actor trajectory over many random draws."""
    for label, cls in enumerate(MOTION_CLASSES):
        for i in range(20):
            _, yx = render_clip(label, np.random.default_rng([label, i]), num_frames=16, size=64, fps=8)
            dy, dx = np.ptp(yx[:, 0]), np.ptp(yx[:, 1])
            if cls in ("static", "pulse"):
                assert dy == 0 and dx == 0
            elif cls == "horizontal":
                assert dy == 0 and dx > 10
            elif cls == "vertical":
                assert dx == 0 and dy > 10
            elif cls == "orbit":
                assert dx > 5 and dy > 5
            elif cls == "gravity":
                vy = np.diff(yx[:, 0])
                assert dy > 5 and dx > 3 and np.mean(np.diff(vy) > 0) > 0.6  # mostly accelerating downwards


def test_render_clip_actors_and_background():
    """actors=k draws k moving objects; background="plain" is the same grey in every clip; bad names fail."""
    kw = dict(num_frames=8, size=64, fps=8, distractors=0, background="plain")
    one, _ = render_clip(1, np.random.default_rng(5), actors=1, **kw)
    three, _ = render_clip(1, np.random.default_rng(5), actors=3, **kw)
    assert (one[0, 0, 0] == 96).all() or (three[0, -1, -1] == 96).all()
    grey_1 = (one == 96).all(-1).mean()
    grey_3 = (three == 96).all(-1).mean()
    assert grey_3 < grey_1 < 1.0                      # more of the frame is covered by actors
    assert np.median(three.reshape(-1, 3), 0).tolist() == [96, 96, 96]
    moving = np.abs(three.astype(int) - three[:1]).sum(-1) > 0
    assert moving[1:].any(axis=0).sum() > 60           # horizontal actors moved over many pixels
    default, _ = render_clip(1, np.random.default_rng(5), num_frames=8, size=64, fps=8)
    again, _ = render_clip(1, np.random.default_rng(5), num_frames=8, size=64, fps=8, actors=1, radius=(4.5, 8.0),
                           distractors=3, background="random")
    assert np.array_equal(default, again)              # the defaults are the original generator
    with pytest.raises(ValueError, match="background"):
        render_clip(1, np.random.default_rng(5), background="noise")
    for bad in (dict(actors=0), dict(distractors=-1), dict(radius=(8.0, 4.0))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            render_clip(1, np.random.default_rng(5), **bad)
    # flicker: same trajectory, but the actor's colour changes from frame to frame
    steady, yx_a = render_clip(0, np.random.default_rng(6), **kw)
    flick, yx_b = render_clip(0, np.random.default_rng(6), flicker=True, **kw)
    np.testing.assert_array_equal(yx_a, yx_b)
    actor_px = ~(steady[0] == 96).all(-1)                             # a static actor covers the same pixels
    assert (np.abs(np.diff(steady[:, actor_px].astype(int), axis=0)).max() == 0)
    assert (np.abs(np.diff(flick[:, actor_px].astype(int), axis=0)).mean() > 20)


def _motion_centroids(frames_THW3):
    """Per-frame centroid (y, x) of pixels that differ from the temporal median (the moving actor)."""
    f = frames_THW3.astype(np.float32)
    diff = np.abs(f - np.median(f, axis=0)).sum(-1)  # [T, H, W]
    w = (diff > 60).astype(np.float32)
    yy, xx = np.mgrid[0:f.shape[1], 0:f.shape[2]]
    n = w.sum((1, 2)) + 1e-6
    return np.stack([(w * yy).sum((1, 2)) / n, (w * xx).sum((1, 2)) / n], 1), w.sum((1, 2))


def test_motion_visible_after_decode(tmp_path):
    """On decoded files: horizontal videos move along x only, vertical along y only, static not at all."""
    csv = generate_videos(tmp_path, 9, num_frames=16, size=64, fps=8, seed=3, num_classes=3)
    for path, label in zip(*read_index_csv(csv)):
        c_T2, area_T = _motion_centroids(decode_clip(path, range(16)))
        if MOTION_CLASSES[label] == "static":
            assert area_T.max() < 3
            continue
        moving = area_T > 5
        dy, dx = np.ptp(c_T2[moving, 0]), np.ptp(c_T2[moving, 1])
        if MOTION_CLASSES[label] == "horizontal":
            assert dx > 8 and dy < 2, (dx, dy)
        else:
            assert dy > 8 and dx < 2, (dx, dy)


# ----------------------------------------------------------------------------- CLI
def test_cli(tmp_path):
    cli_main(["generate", "--output", str(tmp_path / "v"), "--videos", "3", "--val", "2", "--size", "32",
              "--frames", "8"])
    assert len(read_index_csv(tmp_path / "v" / "train.csv")[0]) == 3
    assert len(read_index_csv(tmp_path / "v" / "val.csv")[0]) == 2
    cli_main(["images", "--output", str(tmp_path / "i"), "--num", "5", "--size", "32"])
    assert len(list((tmp_path / "i").rglob("*.png"))) == 5
