"""Real sources (pybullet arm, Atari) and clip sampling rules on videos with known frame content.

Run: .venv/bin/python -m pytest tests/data/test_sources.py -q
"""
import json

import numpy as np
import pytest

from engine.data import ShardVideoDataset, VideoDataset, decode_clip, read_index_csv
from engine.datagen import prepare, read_counter, write_counter_video
from engine.datagen.__main__ import main as cli_main

from .conftest import write_csv

pybullet = pytest.importorskip("pybullet", reason="pybullet (requirements.txt) is not installed")
ale_py = pytest.importorskip("ale_py", reason="ale-py (requirements.txt) is not installed")


def _arrays(path):
    stem = str(path).rsplit(".", 1)[0]
    return np.load(f"{stem}.actions.npy"), np.load(f"{stem}.states.npy")


def test_robot_episodes(tmp_path):
    cli_main(["robot", "--output", str(tmp_path), "--num", "3", "--frames", "16", "--size", "32"])
    paths, labels = read_index_csv(tmp_path / "robot.csv")
    assert labels == [0, 1, 2] and json.loads((tmp_path / "robot.json").read_text())["classes"] == \
        ["random", "reach", "push"]
    for p, label in zip(paths, labels):
        frames = decode_clip(p, range(16))
        actions, states = _arrays(p)
        assert frames.shape == (16, 32, 32, 3) and actions.shape == (16, 3) and states.shape == (16, 10)
        assert np.abs(actions).max() <= 0.03 + 1e-6
        assert frames.std(0).mean() > 0.5  # the arm moves in the picture
        ee, cube = states[:, :3], states[:, 7:]
        if label == 1:  # reach: ends above the cube
            assert np.linalg.norm(ee[-1, :2] - cube[-1, :2]) < 0.05
            assert np.linalg.norm(ee[-1] - cube[-1]) < np.linalg.norm(ee[0] - cube[0])
    # deterministic: same seed, same episode
    cli_main(["robot", "--output", str(tmp_path / "again"), "--num", "1", "--frames", "16", "--size", "32"])
    again = read_index_csv(tmp_path / "again" / "robot.csv")[0][0]
    np.testing.assert_array_equal(_arrays(paths[0])[1], _arrays(again)[1])


def test_robot_frames_are_the_renderers(tmp_path):
    """The default codec is lossless: the training frames are the frames a planner gets from the renderer
    (4:2:0 video moves a 64 px arm frame by as much as a step of the arm does)."""
    from engine.datagen.sources.pybullet_arm import Arm, run_episode

    cli_main(["robot", "--output", str(tmp_path), "--num", "1", "--frames", "8", "--size", "32"])
    path = read_index_csv(tmp_path / "robot.csv")[0][0]
    arm = Arm()
    try:
        rendered, _, _ = run_episode(arm, "random", np.random.default_rng([0, 0]), 8, 32, 10)
    finally:
        arm.close()
    np.testing.assert_array_equal(decode_clip(path, range(8)), rendered)


def test_robot_views_film_one_episode_from_cameras_90_degrees_apart(tmp_path):
    """--views 2: episode i's camera k is video 2i + k, with the episode's actions and states; camera 0 films
    what a one-camera run films, camera 1 the same motion from a quarter turn round."""
    cli_main(["robot", "--output", str(tmp_path / "two"), "--num", "2", "--frames", "8", "--size", "32", "--views", "2"])
    cli_main(["robot", "--output", str(tmp_path / "one"), "--num", "2", "--frames", "8", "--size", "32"])
    two, labels = read_index_csv(tmp_path / "two" / "robot.csv")
    one, _ = read_index_csv(tmp_path / "one" / "robot.csv")
    assert len(two) == 4 and labels == [0, 0, 1, 1] and json.loads((tmp_path / "two" / "robot.json").read_text())["views"] == 2
    for i in range(2):
        cam0, cam1 = decode_clip(two[2 * i], range(8)), decode_clip(two[2 * i + 1], range(8))
        np.testing.assert_array_equal(cam0, decode_clip(one[i], range(8)))
        assert np.abs(cam0.astype(int) - cam1).mean() > 10 and cam1.std(0).mean() > 0.5   # another view, moving
        for a, b in zip(_arrays(two[2 * i]), _arrays(two[2 * i + 1])):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(_arrays(two[2 * i])[1], _arrays(one[i])[1])
        cams = [[np.load(str(p).replace(".mp4", f".{n}_camera.npy")) for n in ("actions", "states")]
                for p in (two[2 * i], two[2 * i + 1], one[i])]
        np.testing.assert_array_equal(cams[0][1], cams[2][1])          # camera 0 is the one camera
        assert np.abs(cams[0][0] - cams[1][0]).max() > 1e-3            # another camera, another frame


def test_quaternion_of_a_rotation_matrix_in_every_branch():
    """Random rotations (each of Shepperd's four cases comes up) give back their quaternion, up to sign."""
    from engine.datagen.sources.pybullet_arm import _quat_from_matrix
    rng = np.random.default_rng(0)
    cases = set()
    for q in rng.normal(size=(200, 4)):
        q /= np.linalg.norm(q)
        m = np.asarray(pybullet.getMatrixFromQuaternion(q.tolist())).reshape(3, 3)
        cases.add(int(np.argmax([np.trace(m), m[0, 0], m[1, 1], m[2, 2]])))
        got = _quat_from_matrix(m)
        np.testing.assert_allclose(got * np.sign(got @ q), q, atol=1e-6)
    assert cases == {0, 1, 2, 3}


def test_to_camera_is_the_cameras_rigid_transform():
    """Displacements rotated, positions moved, the orientation turned: what the camera's view matrix does to
    the scene (checked against pybullet's own quaternion matrices)."""
    from engine.datagen.sources.pybullet_arm import Arm, camera_matrix, run_episode, to_camera
    arm = Arm(2)
    try:
        _, actions, states = run_episode(arm, "explore", np.random.default_rng([0, 3]), 6, 32, 10)
        for view in arm.cameras:
            M = camera_matrix(view)
            R = M[:3, :3]
            np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
            a, s = to_camera(M, actions, states)
            np.testing.assert_allclose(a, actions @ R.T, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(s[:, 0:3], states[:, 0:3] @ R.T + M[:3, 3], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(s[:, 7:10], states[:, 7:10] @ R.T + M[:3, 3], rtol=1e-5, atol=1e-6)
            for q, q_cam in zip(states[:, 3:7], s[:, 3:7]):
                rot = np.asarray(pybullet.getMatrixFromQuaternion(q.tolist())).reshape(3, 3)
                rot_cam = np.asarray(pybullet.getMatrixFromQuaternion(q_cam.tolist())).reshape(3, 3)
                np.testing.assert_allclose(rot_cam, R @ rot, atol=2e-6)
    finally:
        arm.close()


def test_atari_plays_and_shards(tmp_path):
    cli_main(["atari", "--output", str(tmp_path), "--num", "2", "--frames", "12", "--games", "breakout", "pong"])
    paths, labels = read_index_csv(tmp_path / "atari.csv")
    assert labels == [0, 1]
    for p in paths:
        frames = decode_clip(p, range(12))
        actions, states = _arrays(p)
        assert frames.shape == (12, 208, 160, 3) and actions.shape == (12,) and states.shape == (12, 128)
        assert states.dtype == np.uint8 and (states[0] != states[-1]).any()  # RAM changes as the game runs
    # the arrays travel into the shards with their video
    prepare(tmp_path / "atari.csv", tmp_path / "shards", codec="vp9", size=64, shard_size=1)
    ds = ShardVideoDataset(tmp_path / "shards", frames_per_clip=4, frame_step=2)
    assert len(ds) == 2 and ds.read_array(1, "actions").tolist() == _arrays(paths[1])[0].tolist()
    assert ds.read_array(1, "states").shape == (12, 128)
    assert ds[(1, 0)][0].shape == (4, 84, 64, 3)  # 208x160 -> short side 64 (even sides)
    with pytest.raises(ValueError, match="unknown Atari game"):
        cli_main(["atari", "--output", str(tmp_path / "x"), "--num", "1", "--games", "nosuchgame"])


# ----------------------------------------------------------------------------- sampling on known content
@pytest.fixture(scope="module")
def counter_shards(tmp_path_factory):
    """One 30 fps counter video (48 frames) as a file and as a one-sample shard."""
    d = tmp_path_factory.mktemp("cs")
    (d / "in").mkdir()
    v = write_counter_video(d / "in" / "c.mp4", 48, fps=30, size=32, codec="h264")
    prepare(d / "in", d / "shards", codec="h264", size=None)
    return write_csv(d / "c.csv", [v]), d / "shards"


@pytest.mark.parametrize("where", ["file", "shard"])
def test_sampling_rules(counter_shards, where):
    csv, shards = counter_shards

    def ds(**kw):
        return VideoDataset([csv], **kw) if where == "file" else ShardVideoDataset(shards, **kw)

    for seed in range(4):
        k = read_counter(ds(frames_per_clip=5, frame_step=4)[(0, seed)][0].numpy())
        assert np.all(np.diff(k) == 4) and 0 <= k[0] <= 48 - 17  # frame_step, random start inside the video
        k = read_counter(ds(frames_per_clip=4, frame_step=None, fps=10)[(0, seed)][0].numpy())
        assert np.all(np.diff(k) == 3)  # 30 fps sampled at 10 fps
        k = read_counter(ds(frames_per_clip=4, frame_step=None, duration=0.8)[(0, seed)][0].numpy())
        assert np.all(np.diff(k) == 6)  # 4 frames over 0.8 s of a 30 fps video: every 6th
    k = read_counter(ds(frames_per_clip=8, frame_step=9)[(0, 0)][0].numpy())
    assert k.tolist() == [0, 9, 18, 27, 36, 45, 47, 47]  # too short: every 9th, then the last frame repeated
    two = ds(frames_per_clip=3, frame_step=2, num_clips=2)[(0, 1)][0]
    a, b = read_counter(two[0].numpy()), read_counter(two[1].numpy())
    assert a.max() < 24 <= b.min()  # one clip per half
