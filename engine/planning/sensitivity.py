"""Does an H-JEPA use its actions? Each level's loss with the true actions against shuffled ones.

    hj, cfg = load_world_model("runs/hjepa_tiny", hierarchical=True)
    clips, traj = maze_clips(cfg.data.crop_size, episodes=16, frames=12, seed=1)   # held-out, clean renders
    rows = action_sensitivity(hj, clips, traj)     # one dict per level

Per level k: the teacher-forced L1 error (whatever loss.loss_exp trains) of its predictor fed with the
true actions, with the actions of another trajectory of the batch (a cyclic shift), and with zero
actions; `pairwise` is the fraction of trajectories whose loss is lower with their own actions than
with the shifted ones. A model that ignores its actions scores loss_true == loss_shuffled and pairwise
~0.5; planning needs loss_true clearly lower and pairwise near 1, since CEM ranks candidate actions by
the distance of the latent they predict.
"""
from __future__ import annotations

import numpy as np
import torch

from engine.hjepa import HJEPA, abstract_actions


def maze_clips(size: int, episodes: int, frames: int, seed: int):
    """Exploration clips rendered straight from the maze (no video codec, as the planner sees frames):
    (normalised clips [E, 3, T, S, S], {"actions": [E, T-1, 2], "states": [E, T, 2]})."""
    from engine.data.transforms import Normalize
    from engine.datagen.sources.pybullet_maze import Maze, explore_episode
    maze, norm = Maze(size), Normalize()
    try:
        eps = [explore_episode(maze, np.random.default_rng([seed, i]), frames) for i in range(episodes)]
    finally:
        maze.close()
    clips = torch.stack([norm(torch.from_numpy(f).permute(3, 0, 1, 2)) for f, _, _ in eps])
    actions = torch.from_numpy(np.stack([a[:-1] for _, a, _ in eps]))
    states = torch.from_numpy(np.stack([s for _, _, s in eps]))
    return clips, {"actions": actions, "states": states}


def per_sample_loss(lv, inputs_BND, actions, states) -> torch.Tensor:
    """Teacher-forced L1 of each trajectory [B]: the prediction of steps 1.. against the inputs' steps 1.."""
    z = lv.step_predictor(inputs_BND[:, :-lv.tokens_per_frame], actions, states[:, :-1])
    return (z - inputs_BND[:, lv.tokens_per_frame:]).abs().mean(dim=(1, 2))


@torch.no_grad()
def action_sensitivity(hj: HJEPA, clips, traj) -> list[dict]:
    B = clips.shape[0]
    if B < 2:
        raise ValueError("action_sensitivity: needs >= 2 trajectories (the shuffled actions come from another one)")
    actions, states = traj["actions"].float(), traj["states"].float()
    if not hj.use_states:
        states = torch.zeros_like(states)
    h = hj.encode_frames(clips)
    rows = []
    for k in range(1, hj.num_levels + 1):
        if k > 1:
            h = hj.encode_level(k, h)
            actions, states = abstract_actions(actions, states, *hj.window_of(k))
        lv, flat = hj.levels[k - 1], h.reshape(B, -1, h.shape[-1])
        true = per_sample_loss(lv, flat, actions, states)
        shuffled = per_sample_loss(lv, flat, actions.roll(1, 0), states)
        zero = per_sample_loss(lv, flat, torch.zeros_like(actions), states)
        rows.append({"level": k, "loss_true": float(true.mean()), "loss_shuffled": float(shuffled.mean()),
                     "loss_zero": float(zero.mean()), "pairwise": float((true < shuffled).float().mean())})
    return rows
