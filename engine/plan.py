"""Closed-loop planning with a trained action-conditioned world model on the pybullet reach task (or the
push task: planning.task push), or with an H-JEPA on the two-room maze (--hierarchical).

    python -m engine.plan --config configs/ac_arm_tiny_cpu.yaml --checkpoint runs/ac_arm [runs/ac_arm_s1 ...]
        --episodes 20 [--set planning.samples=200 ...] [--baselines random zero oracle] [--csv results.csv]
    python -m engine.plan --hierarchical --config configs/hjepa_tiny_cpu.yaml --checkpoint runs/hjepa_tiny
        --episodes 20 [--csv bench/results/hjepa_plan_cpu.csv]

Per episode (engine.planning.reach: held-out scenes and goals from planning.goal_seed): render the goal
image, then MPC: encode the current frame, plan with CEM towards the goal image's latent (engine.planning.cem,
the `planning` section), execute the first action, repeat until the end effector is within
planning.tolerance of the goal or planning.max_steps actions are spent. The same episodes are run with
the baselines (random actions, zero actions, and the oracle that knows the goal position). planning.task push
(engine.planning.push): the goal image shows the cube pushed 10 cm, success is the cube within
planning.tolerance of that spot, the oracle pushes it there. Prints one
row per controller: success rate, mean final distance (m), seconds per action. planning.views 2: the
task films with two cameras and CEM minimises the mean of both views' energies (engine.planning.ensemble).

--hierarchical (engine.planning.maze, engine.planning.hierarchical): per held-out maze episode, the
hierarchical planner (the top level's subgoals, the frame level's actions), the flat planner (CEM on the
frame level alone towards the goal latent, given as many predictor steps per action: its samples are
raised to match), random actions and the oracle that knows the way; the same columns plus the
predictor steps each planner spent per action. planning.top_planner graph: the top level is a shortest
path over a graph of the exploration data's level-2 latents (engine.planning.latent_graph; no predictor
steps), so flat gets the frame level's predictor steps per action. First it prints each level's action
sensitivity (engine.planning.sensitivity: loss with the true vs shuffled actions on held-out exploration
clips).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from engine.config import ConfigError, load_config
from engine.core.io import append_csv_rows

BASELINES = ("random", "zero", "oracle")
MAZE_BASELINES = ("random", "oracle")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m engine.plan", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="the planning run's YAML (its `planning` section)")
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="an action-conditioned run folder or checkpoint file; several: plan with their ensemble "
                        "(engine.planning.ensemble: the mean of their energies)")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--first-episode", type=int, default=0, help="episode index to start from")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES)
    p.add_argument("--csv", help="append one row per controller to this CSV")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--hierarchical", action="store_true",
                   help="an hjepa checkpoint on the maze task: hierarchical vs flat planning at equal compute")
    return p.parse_args(argv)


def summarize(name: str, results) -> dict:
    return {"controller": name, "episodes": len(results),
            "success_rate": float(np.mean([r.success for r in results])),
            "final_distance_m": float(np.mean([r.final_distance for r in results])),
            "min_distance_m": float(np.mean([r.min_distance for r in results])),
            "steps": float(np.mean([r.steps for r in results])),
            "seconds_per_action": float(np.mean([r.seconds_per_action for r in results]))}


def planner(world_model, pc, seed: int, camera_frame: bool = False, steps_per_subgoal: int | None = None):
    """The MPC controller: CEM towards the episode's goal image latent, first action executed. camera_frame:
    the model was trained on actions and states in its camera's frame: the rollouts get them so, per view.
    steps_per_subgoal: the arm tasks' episodes carry subgoal images (planning.subgoals > 1); it aims at each
    in turn for that many actions, then at the goal, as V-JEPA 2-AC's multi-stage tasks."""
    from engine.planning.cem import cem_plan
    from engine.planning.reach import camera_frames
    gen = torch.Generator().manual_seed(seed)
    goals, spent = {}, {}
    per_subgoal = max(1, steps_per_subgoal or 1)

    def act(frame, state, ep, arm):
        if ep.index not in goals:
            subgoals = ep.subgoal_images if steps_per_subgoal else []
            goals[ep.index] = ([world_model.encode_frame(im, "subgoal image") for im in subgoals]
                               + [world_model.encode_frame(ep.goal_image, "goal image")])
            spent[ep.index] = 0
            if camera_frame:
                world_model.frames = camera_frames(arm)
        aim = goals[ep.index][min(spent[ep.index] // per_subgoal, len(goals[ep.index]) - 1)]
        spent[ep.index] += 1
        z0 = world_model.encode_frame(frame)
        actions_HA, _ = cem_plan(world_model, z0, state, aim, pc, gen)
        return actions_HA[0].numpy()
    return act


def report(rows: list[dict], args, pc, extra=()) -> None:
    """Print the table; with --csv append one row per controller (the planning settings beside it)."""
    print(f"{'controller':<12} {'success':>8} {'final m':>8} {'min m':>7} {'steps':>6} {'s/action':>9}"
          + "".join(f" {k:>14}" for k in extra))
    for r in rows:
        print(f"{r['controller']:<12} {r['success_rate']:>8.2f} {r['final_distance_m']:>8.3f} "
              f"{r['min_distance_m']:>7.3f} {r['steps']:>6.1f} {r['seconds_per_action']:>9.4f}"
              + "".join(f" {r.get(k, float('nan')):>14.1f}" for k in extra))
    if args.csv:
        settings = {"checkpoint": " + ".join(map(str, args.checkpoint)), "first_episode": args.first_episode,
                    "samples": pc.samples, "horizon": pc.horizon, "iterations": pc.iterations,
                    "energy": pc.energy, "energy_steps": pc.energy_steps, "tolerance": pc.tolerance,
                    "max_steps": pc.max_steps, "views": pc.views, "task": "maze" if args.hierarchical else pc.task,
                    "subgoals": pc.subgoals}
        if args.hierarchical:
            settings["top_planner"] = pc.top_planner
        append_csv_rows(args.csv, [{**settings, **r} for r in rows])


def run_episodes(task, controllers: dict, names: list[str], args, line) -> dict[str, list]:
    """Every controller of `names` on each episode of args' range, in turn; after an episode prints
    line(index, episode, {name: its result}). The task is closed however the loop ends."""
    results = {n: [] for n in names}
    try:
        for i in range(args.first_episode, args.first_episode + args.episodes):
            ep = task.episode(i)
            for n in names:
                results[n].append(task.run(ep, controllers[n]))
            print(line(i, ep, {n: results[n][-1] for n in names}), flush=True)
    finally:
        task.close()
    return results


def world_model(args):
    """(the trained world model --checkpoint holds, or the ensemble of several, and the first run's Config);
    a bad checkpoint is one line, exit 2."""
    from engine.planning.world_model import load_world_models
    try:
        return load_world_models(args.checkpoint, hierarchical=args.hierarchical, views=args.views)
    except (FileNotFoundError, ValueError) as e:
        print(f"checkpoint error: {e}", file=sys.stderr)
        raise SystemExit(2)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2)
    if args.episodes < 1:
        print("--episodes must be >= 1", file=sys.stderr)
        raise SystemExit(2)
    if args.hierarchical:
        args.views = 1   # the config refuses planning.views for the maze
        return main_hierarchical(args, cfg)
    from engine.planning.push import PushTask
    from engine.planning.reach import ReachTask, random_controller, zero_controller
    pc = cfg.planning
    args.views = pc.views
    wm, train_cfg = world_model(args)
    task = {"reach": ReachTask, "push": PushTask}[pc.task](
        size=train_cfg.data.crop_size, tolerance=pc.tolerance, max_steps=pc.max_steps, seed=pc.goal_seed,
        views=pc.views, subgoals=pc.subgoals)
    controllers = {"cem": planner(wm, pc, cfg.meta.seed, train_cfg.data.camera_frame, pc.max_steps // pc.subgoals)}
    rng = np.random.default_rng(cfg.meta.seed)
    controllers.update({"random": random_controller(rng, pc.maxnorm), "zero": zero_controller,
                        "oracle": lambda frame, state, ep, arm: task.oracle(ep)})
    names = ["cem"] + [b for b in BASELINES if b in args.baselines]

    def line(i, ep, last):
        r = last["cem"]
        return (f"episode {i}: cem {'reached' if r.success else 'missed'} in {r.steps} steps, final "
                f"{r.final_distance:.3f} m (start {np.linalg.norm(ep.start_pos - ep.goal_pos):.3f} m)")
    results = run_episodes(task, controllers, names, args, line)
    rows = [summarize(n, results[n]) for n in names]
    print(f"\n{pc.task}, {args.episodes} episodes, tolerance {pc.tolerance} m, budget {pc.max_steps} actions; CEM "
          f"{pc.samples} samples x horizon {pc.horizon} x {pc.iterations} iterations")
    report(rows, args, pc)
    return rows


def main_hierarchical(args, cfg) -> list[dict]:
    """Hierarchical vs flat (equal predictor steps per action) vs random vs oracle on the maze."""
    from engine.planning.cem import LatentWorldModel
    from engine.planning.hierarchical import flat_samples_for, frame_settings, hierarchical_steps_per_action
    from engine.planning.latent_graph import hierarchical_planner
    from engine.planning.maze import MazeTask, oracle_controller, random_controller
    from engine.planning.sensitivity import action_sensitivity, maze_clips
    hj, train_cfg = world_model(args)
    pc = cfg.planning
    clips, traj = maze_clips(train_cfg.data.crop_size, episodes=16, frames=train_cfg.data.dataset_fpcs[0], seed=1)
    for r in action_sensitivity(hj, clips, traj):
        print(f"level {r['level']} on 16 held-out exploration clips: loss with true actions {r['loss_true']:.4f}, "
              f"shuffled {r['loss_shuffled']:.4f}, zero {r['loss_zero']:.4f}; own actions better on "
              f"{r['pairwise']:.0%} of clips", flush=True)
    stride = hj.window_of(2)[1]
    budget = hierarchical_steps_per_action(pc, stride)
    flat_pc = frame_settings(pc, samples=flat_samples_for(budget, pc))
    try:
        hier = hierarchical_planner(hj, train_cfg.data.crop_size, pc, torch.Generator().manual_seed(cfg.meta.seed))
    except (FileNotFoundError, ValueError) as e:
        print(f"graph error: {e}", file=sys.stderr)
        raise SystemExit(2)
    episode = {}

    def hierarchical(frame, state, ep, maze):
        if episode.get("index") != ep.index:
            hier.reset(ep.goal_image)
            episode["index"] = ep.index
        return hier.act(frame, state)

    flat_wm = LatentWorldModel(hj.levels[0], train_cfg.data.crop_size, zero_states=not hj.use_states)
    rng = np.random.default_rng(cfg.meta.seed)
    controllers = {"hierarchical": hierarchical, "flat": planner(flat_wm, flat_pc, cfg.meta.seed),
                   "random": random_controller(rng, pc.maxnorm), "oracle": oracle_controller}
    names = ["hierarchical", "flat"] + [b for b in MAZE_BASELINES if b in args.baselines]
    steps = {"hierarchical": budget, "flat": float((flat_pc.iterations * flat_pc.samples + 1) * flat_pc.horizon)}
    task = MazeTask(size=train_cfg.data.crop_size, tolerance=pc.tolerance, max_steps=pc.max_steps, seed=pc.goal_seed)
    results = run_episodes(task, controllers, names, args, lambda i, ep, last: f"episode {i}: " + ", ".join(
        f"{n} {'reached' if r.success else 'missed'} ({r.final_distance:.2f} m)" for n, r in last.items()))
    rows = [dict(summarize(n, results[n]), predictor_steps_per_action=steps.get(n, 0.0)) for n in names]
    top = (f"graph (lookahead {pc.graph_lookahead}, {pc.graph_neighbours} links per node)" if pc.top_planner == "graph"
           else f"top CEM {pc.top_samples} x horizon {pc.top_horizon} x {pc.top_iterations}")
    print(f"\nmaze, {args.episodes} episodes, tolerance {pc.tolerance} m, budget {pc.max_steps} actions; "
          f"hierarchical: {top} every {stride} actions + frame CEM {pc.samples} x {pc.iterations}; flat: CEM "
          f"{flat_pc.samples} x horizon {pc.horizon} x {pc.iterations}")
    report(rows, args, pc, extra=("predictor_steps_per_action",))
    return rows


if __name__ == "__main__":
    main()
