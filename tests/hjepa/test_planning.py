"""engine.planning.hierarchical: one plan step of each level, its compute accounting, and
`python -m engine.plan --hierarchical` end to end on a small untrained stack."""
import csv

import numpy as np
import pytest
import torch

from engine.builders import build_jepa
from engine.config import load_config
from engine.planning.hierarchical import (HierarchicalPlanner, cem_predictor_steps, flat_samples_for,
                                          frame_settings, hierarchical_steps_per_action, top_settings)

from tests.tiny_runs import HJEPA_SMALL, HJEPA_TINY as TINY

SMALL = HJEPA_SMALL + ["planning.samples=8", "planning.topk=2", "planning.iterations=2", "planning.top_samples=8",
                       "planning.top_topk=2", "planning.top_iterations=2", "planning.top_horizon=2",
                       "planning.max_steps=3"]


@pytest.fixture(scope="module")
def stack():
    cfg = load_config(TINY, SMALL)
    torch.manual_seed(0)
    return build_jepa(cfg).eval(), cfg


def test_a_plan_step_replans_the_top_level_once_per_stride(stack):
    hj, cfg = stack
    calls = {"level1": [], "level2": []}
    hooks = [hj.predictor[k].register_forward_hook(lambda m, a, o, k=k: calls[k].append(a[0].shape[0]))
             for k in calls]
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    try:
        planner = HierarchicalPlanner(hj, 32, cfg.planning, torch.Generator().manual_seed(0))
        planner.reset(frames[0])
        actions = [planner.act(f, np.zeros(2, np.float32)) for f in frames[1:]]
    finally:
        for h in hooks:
            h.remove()
    pc = cfg.planning
    assert all(a.shape == (2,) and np.abs(a).max() <= pc.maxnorm for a in actions)
    # 5 actions with stride 4: the top level planned at actions 0 and 4, each a CEM plus the subgoal rollout
    top = top_settings(pc, 4)
    assert len(calls["level2"]) == 2 * ((top.iterations + 1) * top.horizon + 1)
    # the frame level's horizon counts down to the subgoal: 4, 3, 2, 1, then 4 again
    low = sum((pc.iterations + 1) * h for h in (4, 3, 2, 1, 4))
    assert len(calls["level1"]) == low


def test_flat_planner_gets_the_hierarchical_planners_predictor_steps(stack):
    _, cfg = stack
    pc = load_config(TINY).planning
    budget = hierarchical_steps_per_action(pc, 4)
    low = np.mean([(pc.iterations * pc.samples + 1) * h for h in (1, 2, 3, 4)])
    top = ((pc.top_iterations * pc.top_samples + 1) * pc.top_horizon + 1) / 4
    assert budget == pytest.approx(low + top)
    flat = frame_settings(pc, samples=flat_samples_for(budget, pc))
    assert cem_predictor_steps(flat) == pytest.approx(budget, rel=0.02)


def test_plan_cli_hierarchical_writes_a_row_per_controller(stack, tmp_path):
    from engine.plan import main
    from engine.core.checkpoint import save_checkpoint
    hj, cfg = stack
    save_checkpoint(tmp_path / "run", 1, {"encoder": hj.encoder.state_dict(), "predictor": hj.predictor.state_dict(),
                                          "target_encoder": hj.target_encoder.state_dict(), "config": cfg.to_dict()})
    out = tmp_path / "plan.csv"
    args = ["--hierarchical", "--config", TINY, "--checkpoint", str(tmp_path / "run"), "--episodes", "1",
            "--csv", str(out)] + [a for o in SMALL if o.startswith("planning.") for a in ("--set", o)]
    rows = main(args)
    assert [r["controller"] for r in rows] == ["hierarchical", "flat", "random", "oracle"]
    assert all(r["steps"] == 3 for r in rows)          # max_steps=3: nobody crosses the maze in 3
    with open(out) as f:
        got = list(csv.DictReader(f))
    assert [g["controller"] for g in got] == ["hierarchical", "flat", "random", "oracle"]
    assert float(got[0]["predictor_steps_per_action"]) == pytest.approx(float(got[1]["predictor_steps_per_action"]), rel=0.1)


def test_plan_cli_refuses_a_checkpoint_of_another_app(tmp_path, capsys):
    from engine.plan import main
    from engine.core.checkpoint import save_checkpoint
    save_checkpoint(tmp_path, 1, {"encoder": {}, "predictor": {}, "config": {"app": "vjepa_droid"}})
    with pytest.raises(SystemExit):
        main(["--hierarchical", "--config", TINY, "--checkpoint", str(tmp_path), "--episodes", "1"])
    assert "not a checkpoint of an `app: hjepa` run" in capsys.readouterr().err


def test_subgoal_check_scores_the_compass_steps_and_puts_the_ball_back(stack):
    """engine.planning.subgoals: a goal that IS the window after `stride` steps down makes the true energy
    pick down, the way the oracle goes first from the left room's upper part; the checks follow the
    oracle path at the top level's re-planning steps and leave the ball where they found it."""
    from engine.planning.maze import MazeTask
    from engine.planning.subgoals import COMPASS, check_episode, check_pose
    hj, cfg = stack
    pc = cfg.planning
    planner = HierarchicalPlanner(hj, 32, pc, torch.Generator().manual_seed(0))
    task = MazeTask(size=32, tolerance=pc.tolerance, max_steps=30, seed=pc.goal_seed)
    try:
        ep, maze = task.episode(0), task.maze
        rows = check_episode(planner, task, ep, poses=2, maxnorm=pc.maxnorm)
        assert [r["step"] for r in rows] == [0, 4]
        assert all(-1 - 1e-6 <= r[k] <= 1 + 1e-6 for r in rows for k in ("cos_way", "cos_straight", "true_way"))
        maze.place(ep.start_pos)
        pos = maze.position()
        history = [planner.frame_wm.encode_frame(maze.render())]
        down = []
        for _ in range(planner.stride):
            maze.act(COMPASS[6] * pc.maxnorm)
            down.append(planner.frame_wm.encode_frame(maze.render()))
        planner.goal2 = planner.level2(history + down)
        maze.place(pos)
        r = check_pose(planner, maze, ep.goal_pos, history, pc.maxnorm)
        assert r["true_way"] > 0.99
        np.testing.assert_allclose(maze.position(), pos, atol=1e-9)
    finally:
        task.close()


def test_route_check_scores_the_oracles_way_below_the_straight_line_in_the_simulator(stack):
    """engine.planning.subgoals --check routes: over 6 level-2 steps (24 actions) the oracle's way reaches
    the goal, so the window the simulator shows there is the goal's (energy near 0), while the straight
    line ends on the wall; the ball is back at its start."""
    from engine.planning.maze import MazeTask
    from engine.planning.subgoals import check_routes
    hj, _ = stack
    pc = load_config(TINY, SMALL + ["planning.top_horizon=6"]).planning
    planner = HierarchicalPlanner(hj, 32, pc, torch.Generator().manual_seed(0))
    task = MazeTask(size=32, tolerance=pc.tolerance, max_steps=30, seed=pc.goal_seed)
    try:
        ep = task.episode(0)
        r = check_routes(planner, task, ep)
        np.testing.assert_allclose(task.maze.position(), ep.start_pos, atol=1e-9)
    finally:
        task.close()
    assert r["true_oracle"] < 0.2 * r["true_straight"]
    assert all(np.isfinite(r[f"pred_{k}"]) and r[f"pred_{k}"] > 0 for k in ("oracle", "straight", "plan"))
    assert r["plan_final_m"] > 0


def test_oracle_subgoals_are_the_oracles_next_window_and_leave_the_ball_in_place(stack):
    from engine.planning.maze import MazeTask, oracle_action
    from engine.planning.subgoals import OracleSubgoals, run_hierarchical
    hj, cfg = stack
    pc = cfg.planning
    task = MazeTask(size=32, tolerance=pc.tolerance, max_steps=pc.max_steps, seed=pc.goal_seed)
    try:
        ep, maze = task.episode(1), task.maze
        planner = OracleSubgoals(hj, 32, pc, maze, torch.Generator().manual_seed(0))
        planner.goal_pos = ep.goal_pos
        planner.reset(ep.goal_image)
        maze.place(ep.start_pos)
        sub = planner.plan_subgoal(maze.state())
        np.testing.assert_allclose(maze.position(), ep.start_pos, atol=1e-9)
        frames = []
        for _ in range(planner.stride):
            maze.act(oracle_action(maze.position(), ep.goal_pos))
            frames.append(planner.frame_wm.encode_frame(maze.render()))
        torch.testing.assert_close(sub, planner.level2(frames))
        row = run_hierarchical(planner, task, ep)
    finally:
        task.close()
    assert row["steps"] == pc.max_steps and row["reached"] == 0.0     # 3 actions do not cross the maze


def test_landscape_check_scores_every_free_grid_point(stack):
    from engine.datagen.sources.pybullet_maze import FREE, blocked
    from engine.planning.maze import MazeTask
    from engine.planning.subgoals import check_landscape
    hj, cfg = stack
    pc = cfg.planning
    planner = HierarchicalPlanner(hj, 32, pc, torch.Generator().manual_seed(0))
    task = MazeTask(size=32, tolerance=pc.tolerance, max_steps=30, seed=pc.goal_seed)
    try:
        r = check_landscape(planner, task, task.episode(0), spacing=0.4)
    finally:
        task.close()
    ticks = np.arange(-FREE, FREE + 1e-9, 0.4)
    assert r["points"] == sum(not blocked([x, y]) for x in ticks for y in ticks)
    corr = [v for k, v in r.items() if k.startswith(("top_", "frame_"))]
    assert len(corr) == 8 and all(-1 <= v <= 1 for v in corr)


def test_simulator_windows_are_the_windows_the_summed_displacements_lead_to(stack):
    """--top-model simulator: the top level's model: K sequences -> the level-2 latents of the windows the simulator
    shows after them, the ball put back where it was."""
    from engine.planning.maze import MazeTask
    from engine.planning.subgoals import SimulatorWindows, execute_summed
    hj, cfg = stack
    planner = HierarchicalPlanner(hj, 32, cfg.planning, torch.Generator().manual_seed(0))
    task = MazeTask(size=32, tolerance=0.15, max_steps=30, seed=1000)
    try:
        ep, maze = task.episode(0), task.maze
        maze.place(ep.start_pos)
        summed = torch.tensor([[[0.0, -0.6], [0.6, 0.0]], [[0.6, 0.0], [0.6, 0.0]]])   # down-right; right into the wall
        z = SimulatorWindows(planner, maze).rollout(None, maze.state(), summed)
        np.testing.assert_allclose(maze.position(), ep.start_pos, atol=1e-9)
        assert z.shape == (2, 16, 32)
        torch.testing.assert_close(z[1], execute_summed(planner, maze, summed[1].numpy())[0])
        assert maze.position()[0] < 0          # the wall stopped it in the start room
        assert (z[0] - z[1]).abs().mean() > 1e-3
    finally:
        task.close()


def test_subgoals_cli_plans_with_the_oracles_subgoals_and_the_simulator_as_top_model(stack, tmp_path):
    from engine.core.checkpoint import save_checkpoint
    from engine.planning.subgoals import main
    hj, cfg = stack
    save_checkpoint(tmp_path / "run", 1, {"encoder": hj.encoder.state_dict(), "predictor": hj.predictor.state_dict(),
                                          "target_encoder": hj.target_encoder.state_dict(), "config": cfg.to_dict()})
    sets = [a for o in SMALL if o.startswith("planning.") for a in ("--set", o)]
    base = ["--config", TINY, "--checkpoint", str(tmp_path / "run"), "--episodes", "1"] + sets
    rows = main(base + ["--check", "plan", "--subgoals", "oracle"])
    assert len(rows) == 1 and rows[0]["steps"] == 3 and rows[0]["reached"] == 0.0
    rows = main(base + ["--check", "routes", "--top-model", "simulator"])
    # the simulator is the top model: a route's predicted energy is the energy of where it truly leads (the
    # oracle's own actions are not an even split of its sums, so its route is left out)
    for k in ("straight", "plan"):
        assert rows[0][f"pred_{k}"] == pytest.approx(rows[0][f"true_{k}"], rel=1e-4)
