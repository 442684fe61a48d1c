"""Do the top level's subgoals point the way through the maze? Checks of the hierarchical planner's level 2.

    python -m engine.planning.subgoals --config configs/hjepa_tiny_cpu.yaml --checkpoint runs/hjepa_tiny
        [--episodes 8 --poses 4] [--set planning.top_horizon=4 ...]

Per held-out maze episode (the planner's: planning.goal_seed) the ball is driven by the oracle (down its
room, under the wall, up to the goal) and at every `stride`-th step of that path, the top level's
re-planning time, while it is still in the start room:
    planned: the top level's CEM (engine.planning.hierarchical, the planner's settings) from the window of
        frames the oracle path has shown, towards the goal image's level-2 latent; its first summed
        displacement is the subgoal's direction. `cos_way` is its cosine with the way (the displacement the
        oracle makes over the next `stride` actions, down towards the gap at first), `cos_straight` with
        the straight line to the goal (across the wall). Subgoals that point the way have cos_way near 1.
    true_way: each of 8 compass directions is executed for `stride` actions in the simulator and the
        window of frames it shows scored by the top level's energy (L1 to the goal's level-2 latent); the
        cosine of the lowest-energy direction with the way. Near 1: the energy itself favours the way (a
        perfect level-2 predictor would step towards the gap); near cos_straight's: the energy favours the
        wall, whatever the predictor.
    pred_way / pred_rank_corr: the same 8 directions rolled out by the level-2 predictor (one step): the
        cosine of its lowest-energy direction with the way, and the rank correlation of its energies with
        the true ones.
"""
from __future__ import annotations

import numpy as np
import torch

from engine.planning.cem import cem_plan, energy
from engine.planning.diagnose import diagnosis_args, spearman

COMPASS = np.array([[np.cos(a), np.sin(a)] for a in np.arange(8) * np.pi / 4])


def cosine(a, b) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(np.dot(a, b) / (na * nb)) if na > 1e-9 and nb > 1e-9 else float("nan")


@torch.no_grad()
def check_pose(planner, maze, goal_pos, history: list, maxnorm: float) -> dict:
    """One re-planning pose: the planned subgoal direction against the way, and the 8 compass steps'
    true and predicted level-2 energies. The ball is back at its pose on return."""
    from engine.planning.maze import oracle_action
    stride, pos = planner.stride, maze.position()
    state = maze.state()
    z2 = planner.level2(history)
    plan, _ = cem_plan(planner.top_wm, z2, state, planner.goal2, planner.top, planner.gen)
    for _ in range(stride):
        maze.act(oracle_action(maze.position(), goal_pos))
    way = maze.position() - pos
    true_e = []
    for d in COMPASS:                       # each direction at the largest step the source takes
        maze.place(pos)
        frames = []
        for _ in range(stride):
            maze.act(d * maxnorm)
            frames.append(planner.frame_wm.encode_frame(maze.render()))
        true_e.append(float(energy(planner.level2(history + frames), planner.goal2)[0]))
    maze.place(pos)
    summed = torch.as_tensor(COMPASS * maxnorm * stride, dtype=torch.float32)[:, None]
    pred_e = energy(planner.top_wm.rollout(z2, state, summed), planner.goal2).numpy()
    return {"cos_way": cosine(plan[0].numpy(), way), "cos_straight": cosine(plan[0].numpy(), goal_pos - pos),
            "true_way": cosine(COMPASS[int(np.argmin(true_e))], way),
            "pred_way": cosine(COMPASS[int(np.argmin(pred_e))], way),
            "pred_rank_corr": spearman(pred_e, true_e)}


@torch.no_grad()
def check_episode(planner, task, ep, poses: int, maxnorm: float) -> list[dict]:
    """The check at the top level's re-planning poses of the oracle path, while the ball is in its start room."""
    from engine.planning.maze import oracle_action
    maze = task.maze
    planner.reset(ep.goal_image)
    maze.place(ep.start_pos)
    history, rows = [], []
    for step in range(task.max_steps):
        pos = maze.position()
        if len(rows) == poses or np.sign(pos[0]) == np.sign(ep.goal_pos[0]):
            break
        history = (history + [planner.frame_wm.encode_frame(maze.render())])[-planner.window:]
        if step % planner.stride == 0:
            rows.append(dict(episode=ep.index, step=step, **check_pose(planner, maze, ep.goal_pos, history, maxnorm)))
        maze.act(oracle_action(pos, ep.goal_pos))
    return rows


def main(argv=None) -> list[dict]:
    from engine.planning.hierarchical import HierarchicalPlanner
    from engine.planning.maze import MazeTask
    from engine.planning.world_model import load_world_model
    args, cfg = diagnosis_args("python -m engine.planning.subgoals", __doc__.split("\n")[0], argv, "an hjepa run",
                               "re-planning poses per episode (every stride actions)", checkpoint_required=True)
    hj, train_cfg = load_world_model(args.checkpoint, hierarchical=True)
    pc = cfg.planning
    planner = HierarchicalPlanner(hj, train_cfg.data.crop_size, pc, torch.Generator().manual_seed(cfg.meta.seed))
    task = MazeTask(size=train_cfg.data.crop_size, tolerance=pc.tolerance, max_steps=pc.max_steps, seed=pc.goal_seed)
    rows = []
    try:
        for i in range(args.episodes):
            for r in check_episode(planner, task, task.episode(i), args.poses, pc.maxnorm):
                rows.append(r)
                print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()),
                      flush=True)
    finally:
        task.close()
    keys = [k for k in rows[0] if k not in ("episode", "step")]
    print(f"mean over {len(rows)} poses: " + " ".join(f"{k} {np.nanmean([r[k] for r in rows]):.3f}" for k in keys))
    return rows


if __name__ == "__main__":
    main()
