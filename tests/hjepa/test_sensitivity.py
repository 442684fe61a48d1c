"""engine.planning.sensitivity: held-out maze clips and each level's loss with true vs shuffled actions."""
import pytest
import torch

from engine.builders import build_jepa
from engine.config import load_config
from engine.planning.sensitivity import action_sensitivity, maze_clips

from tests.tiny_runs import HJEPA_SMALL as SMALL, HJEPA_TINY as TINY


@pytest.fixture(scope="module")
def clips():
    return maze_clips(32, episodes=4, frames=12, seed=1)


@pytest.fixture(scope="module")
def stack():
    torch.manual_seed(0)
    return build_jepa(load_config(TINY, SMALL)).eval()


def test_maze_clips_are_normalised_frames_with_their_moves(clips):
    x, traj = clips
    assert x.shape == (4, 3, 12, 32, 32) and x.dtype == torch.float32
    assert traj["actions"].shape == (4, 11, 2) and traj["states"].shape == (4, 12, 2)
    # the ball moves: the states follow the actions except where a wall stops it
    moved = (traj["states"][:, 1:] - traj["states"][:, :-1]).norm(dim=-1)
    assert moved.mean() > 0.05
    assert not torch.equal(x[:, :, 0], x[:, :, -1])


def test_a_model_blind_to_its_actions_scores_the_same_with_any_actions(stack, clips):
    for k in (1, 2):
        enc = stack.predictor[f"level{k}"].action_encoder
        saved = enc.weight.detach().clone()
        enc.weight.data.zero_()
        try:
            rows = action_sensitivity(stack, *clips)
        finally:
            enc.weight.data.copy_(saved)
        r = rows[k - 1]
        assert r["loss_true"] == pytest.approx(r["loss_shuffled"], rel=1e-6)
        assert r["loss_true"] == pytest.approx(r["loss_zero"], rel=1e-6)
        assert r["pairwise"] == 0.0                       # never strictly better with its own actions


def test_a_model_reading_its_actions_scores_differently(stack, clips):
    rows = action_sensitivity(stack, *clips)
    assert [r["level"] for r in rows] == [1, 2]
    for r in rows:
        assert r["loss_true"] > 0 and abs(r["loss_true"] - r["loss_shuffled"]) > 1e-6 * r["loss_true"]


def test_one_trajectory_is_refused(stack, clips):
    x, traj = clips
    with pytest.raises(ValueError, match=">= 2 trajectories"):
        action_sensitivity(stack, x[:1], {k: v[:1] for k, v in traj.items()})
