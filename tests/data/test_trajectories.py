"""Trajectory data: arm episodes (video + per-frame actions + states) through the dataset and the loader."""
import numpy as np
import pytest
import torch

from engine.data import read_index_csv
from engine.datagen.__main__ import main as cli_main
from engine.data.loader import make_loader
from engine.data.trajectories import TrajectoryDataset, clip_arrays

pytest.importorskip("pybullet", reason="pybullet (requirements.txt) is not installed")


def test_clip_arrays_sum_actions_between_sampled_frames():
    actions = np.arange(20, dtype=np.float32).reshape(10, 2)
    states = np.arange(30, dtype=np.float32).reshape(10, 3)
    a, s = clip_arrays(actions, states, np.array([1, 3, 5, 7]))
    np.testing.assert_array_equal(s, states[[1, 3, 5, 7]])
    np.testing.assert_array_equal(a, np.stack([actions[1:3].sum(0), actions[3:5].sum(0), actions[5:7].sum(0)]))


@pytest.fixture(scope="module")
def arm(tmp_path_factory):
    out = tmp_path_factory.mktemp("arm")
    cli_main(["robot", "--output", str(out), "--num", "2", "--frames", "12", "--size", "32",
              "--policies", "explore"])
    return out


def test_explore_episodes_and_loader_batches(arm):
    paths, labels = read_index_csv(arm / "robot.csv")
    assert labels == [3, 3]   # explore's index among the policies
    from engine.data.transforms import VideoTransform
    tf = VideoTransform(32, random_resize_scale=(1.0, 1.0), random_resize_aspect_ratio=(1.0, 1.0), horizontal_flip=False)
    ds = TrajectoryDataset(arm / "robot.csv", frames_per_clip=4, frame_step=2, transform=tf)
    clips, labels_B, traj = next(iter(make_loader(ds, batch_size=2, seed=0)))
    assert clips.shape == (2, 3, 4, 32, 32) and clips.dtype == torch.float32
    assert traj["actions"].shape == (2, 3, 3) and traj["states"].shape == (2, 4, 10)
    # every sampled state row is a row of its episode, and actions are the sums over each 2-frame step
    episodes = [(np.load(str(p).replace(".mp4", ".actions.npy")), np.load(str(p).replace(".mp4", ".states.npy")))
                for p in paths]
    for b in range(2):
        found = [(k, int(t)) for k, (_, sts) in enumerate(episodes)
                 for t in np.where((sts == traj["states"][b, 0].numpy()).all(1))[0]]
        assert len(found) == 1
        k, t0 = found[0]
        acts, sts = episodes[k]
        np.testing.assert_allclose(traj["states"][b].numpy(), sts[t0:t0 + 8:2])
        want = np.stack([acts[t0 + 2 * i:t0 + 2 * i + 2].sum(0) for i in range(3)])
        np.testing.assert_allclose(traj["actions"][b].numpy(), want, rtol=1e-5, atol=1e-7)


def test_index_without_arrays_is_refused(tmp_path):
    from engine.datagen.synthetic import generate_split
    train, _ = generate_split(tmp_path, train=2, val=0, num_frames=4, size=32)
    with pytest.raises(ValueError, match="actions.npy beside it"):
        TrajectoryDataset(train, frames_per_clip=4, frame_step=1)


def test_camera_frame_reads_the_arrays_in_the_videos_camera_frame(arm, tmp_path):
    """data.camera_frame: the same frames and draws, the actions and states the arm source wrote in the
    video's camera frame; an index without them is refused naming the file and the key."""
    from engine.data.trajectories import CAMERA
    from engine.data.transforms import VideoTransform
    tf = VideoTransform(32, random_resize_scale=(1.0, 1.0), random_resize_aspect_ratio=(1.0, 1.0), horizontal_flip=False)
    world = TrajectoryDataset(arm / "robot.csv", frames_per_clip=4, frame_step=2, transform=tf)
    camera = TrajectoryDataset(arm / "robot.csv", frames_per_clip=4, frame_step=2, transform=tf, arrays=CAMERA)
    (cw, _, tw), (cc, _, tc) = (next(iter(make_loader(ds, batch_size=2, seed=0))) for ds in (world, camera))
    torch.testing.assert_close(cw, cc)
    assert not torch.allclose(tw["actions"], tc["actions"], atol=1e-4)
    torch.testing.assert_close(tw["actions"].norm(dim=-1), tc["actions"].norm(dim=-1))   # rotated, not changed
    ee_to_cube = [(t["states"][..., 7:10] - t["states"][..., 0:3]).norm(dim=-1) for t in (tw, tc)]
    torch.testing.assert_close(ee_to_cube[0], ee_to_cube[1])                               # a rigid move
    from engine.datagen.synthetic import generate_split
    plain, _ = generate_split(tmp_path, train=2, val=0, num_frames=4, size=32)
    for p in read_index_csv(plain)[0]:   # world-frame arrays only
        for name in ("actions", "states"):
            np.save(str(p).replace(".mp4", f".{name}.npy"), np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"no \S+\.actions_camera\.npy beside it; .* in its camera's frame "
                                         r"\(data\.camera_frame"):
        TrajectoryDataset(plain, frames_per_clip=4, frame_step=1, arrays=CAMERA)


def test_ac_training_runs_through_the_engine_loop(arm, tmp_path):
    """Two optimizer steps of the tiny arm config through `python -m engine.train`: only the predictor moves."""
    from engine.train import main
    out = tmp_path / "run"
    summary = main(["--config", "configs/ac_arm_tiny_cpu.yaml", "--output", str(out), "--max-steps", "2",
                    "--no-progress", "--set", f"data.datasets=[{arm / 'robot.csv'}]", "--set", "data.crop_size=32",
                    "--set", "data.batch_size=2", "--set", "data.num_workers=0", "--set", "model.pred_depth=1",
                    "--set", "data.sampling_rate=2"])
    assert summary["steps"] == 2 and np.isfinite(summary["mean_loss_last_20"])
    state = torch.load(summary["checkpoint"], weights_only=False)
    assert state["config"]["app"] == "vjepa_droid" and "action_encoder.weight" in state["predictor"]
    import csv
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 2 and all(float(r["loss_tf"]) > 0 and float(r["loss_rollout"]) > 0 for r in rows)
