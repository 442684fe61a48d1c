"""Do the top level's subgoals point the way through the maze? Checks of the hierarchical planner's level 2.

    python -m engine.planning.subgoals --config configs/hjepa_tiny_cpu.yaml --checkpoint runs/hjepa_tiny
        [--check compass|landscape|routes|plan] [--subgoals oracle] [--top-model simulator]
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
--check landscape: does the energy grow with the way round the wall or with the straight line? Per
    episode the ball is placed on a grid of free points (--spacing m) and each point's steady window scored
    by the top level's energy to the goal (and its frame by the frame level's); `geo` / `straight` are
    their rank correlations with the geodesic / straight-line distance, over all points and over the
    start room's (`_start`, where the two disagree: the way there leads down to the gap). With
    planning.top_planner graph, `graph_*` scores the graph's path length to the goal from the node
    nearest each window (engine.planning.latent_graph) the same way.
--check routes: from each episode's start, top_horizon steps of summed displacements: the oracle's way
    (round the wall) and the straight line (into the wall), each scored by the top level's predictor
    (`pred_*`) and by the window the simulator shows after executing them (`true_*`); then the top CEM's
    plan, predicted and executed (`*_plan`, its summed displacements split evenly over their actions;
    `plan_final_m`: where it takes the ball). A model that knows the wall predicts oracle < straight, as the
    simulator shows once the horizon reaches the goal; pred_plan far below true_plan: the CEM found a way
    through the model's errors.
--check plan: closed-loop episodes of the hierarchical planner (reached, steps, final distance), with
    --subgoals oracle: its top level replaced by the oracle (OracleSubgoals: the subgoal is the level-2
        latent of the window the oracle's next `stride` actions show; the frame level plans as always).
        Whether the frame level follows good subgoals.
--top-model simulator (any check): the top level's world model is the simulator (SimulatorWindows: its CEM
    and subgoals see the true windows its summed displacements lead to; the level-2 energy and the frame
    level unchanged). Whether a perfect level-2 predictor would be enough, or the energy and the search
    fail anyway.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from engine.planning.cem import cem_plan, energy
from engine.planning.diagnose import diagnosis_args, spearman
from engine.planning.hierarchical import HierarchicalPlanner

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
        true_e.append(float(energy(planner.level2(history + frames), planner.goal2, planner.top.energy)[0]))
    maze.place(pos)
    summed = torch.as_tensor(COMPASS * maxnorm * stride, dtype=torch.float32)[:, None]
    pred_e = energy(planner.top_wm.rollout(z2, state, summed), planner.goal2, planner.top.energy).numpy()
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


@torch.no_grad()
def steady_energies(planner, frame_HW3, goal1_1ND) -> tuple[float, float]:
    """(top-level energy of the steady window of this frame, frame-level energy of the frame) to the goal, each
    the configured planning.energy, as the planner scores them."""
    z1 = planner.frame_wm.encode_frame(frame_HW3)
    top = energy(planner.level2([z1]), planner.goal2, planner.top.energy)
    return float(top[0]), float(energy(z1, goal1_1ND, planner.pc.energy)[0])


@torch.no_grad()
def check_landscape(planner, task, ep, spacing: float = 0.2) -> dict:
    """Rank correlations of the energies of steady windows on a grid of free points with the geodesic and
    the straight-line distance to the goal, over the maze and over the start room."""
    from engine.datagen.sources.pybullet_maze import FREE, blocked
    from engine.planning.maze import geodesic_distance
    planner.reset(ep.goal_image)
    goal1 = planner.frame_wm.encode_frame(ep.goal_image)
    maze = task.maze
    ticks = np.arange(-FREE, FREE + 1e-9, spacing)
    pts = [np.array([x, y]) for x in ticks for y in ticks if not blocked([x, y])]
    e2, e1, windows = [], [], []
    for p in pts:
        maze.place(p)
        frame = maze.render()
        a, b = steady_energies(planner, frame, goal1)
        e2.append(a)
        e1.append(b)
        windows.append(planner.level2([planner.frame_wm.encode_frame(frame)]))
    maze.place(ep.start_pos)
    geo = np.array([geodesic_distance(p, ep.goal_pos) for p in pts])
    straight = np.array([np.linalg.norm(p - ep.goal_pos) for p in pts])
    start = np.array([np.sign(p[0]) == np.sign(ep.start_pos[0]) for p in pts])
    e2, e1 = np.asarray(e2), np.asarray(e1)
    row = {"episode": ep.index, "points": len(pts)}
    scores = [("top", e2), ("frame", e1)]
    if getattr(planner, "graph", None) is not None:     # the graph top level: each point's path length to the goal
        scores.append(("graph", planner.dist[planner.graph.nearest(torch.cat(windows))]))
    for name, e in scores:
        row.update({f"{name}_geo": spearman(e, geo), f"{name}_straight": spearman(e, straight),
                    f"{name}_geo_start": spearman(e[start], geo[start]),
                    f"{name}_straight_start": spearman(e[start], straight[start])})
    return row


def execute_summed(planner, maze, summed_HA) -> torch.Tensor:
    """Execute summed displacements (each split evenly over `stride` actions); the level-2 latent of the
    last window the frames show. The ball is left where the actions took it."""
    actions = np.repeat(np.asarray(summed_HA, dtype=np.float64) / planner.stride, planner.stride, axis=0)
    frames = []
    for t, a in enumerate(actions):
        maze.act(a)
        if t >= len(actions) - planner.window:      # only the last window is encoded
            frames.append(planner.frame_wm.encode_frame(maze.render()))
    return planner.level2(frames)


@torch.no_grad()
def check_routes(planner, task, ep) -> dict:
    """The top level's predicted and true energies of the oracle's way, the straight line and its own CEM
    plan, over top_horizon steps from the episode's start."""
    from engine.planning.maze import oracle_action
    maze, H, stride = task.maze, planner.top.horizon, planner.stride
    planner.reset(ep.goal_image)
    maze.place(ep.start_pos)
    state = maze.state()
    planner.history = [planner.frame_wm.encode_frame(maze.render())]
    z2 = planner.level2(planner.history)
    oracle, frames = [], []
    for _ in range(H):                          # the oracle's way, as the summed displacements it commands
        total = np.zeros(2)
        for _ in range(stride):
            a = oracle_action(maze.position(), ep.goal_pos)
            maze.act(a)
            total += a
            frames.append(planner.frame_wm.encode_frame(maze.render()))
        oracle.append(total)
    true_oracle = float(energy(planner.level2(frames), planner.goal2, planner.top.energy)[0])
    maze.place(ep.start_pos)                    # the top model plans from the start (the simulator's too)
    bound = planner.top.maxnorm
    straight = np.tile(np.clip((ep.goal_pos - ep.start_pos) / H, -bound, bound), (H, 1))
    plan, _ = cem_plan(planner.top_wm, z2, state, planner.goal2, planner.top, planner.gen)
    routes = {"oracle": np.asarray(oracle), "straight": straight, "plan": plan.numpy()}
    summed_KHA = torch.as_tensor(np.stack(list(routes.values())), dtype=torch.float32)
    pred = energy(planner.top_wm.rollout(z2, state, summed_KHA), planner.goal2, planner.top.energy)
    row = {"episode": ep.index}
    for (name, summed), e in zip(routes.items(), pred.tolist()):
        if name == "oracle":
            true = true_oracle
        else:
            maze.place(ep.start_pos)
            true = float(energy(execute_summed(planner, maze, summed), planner.goal2, planner.top.energy)[0])
        row.update({f"pred_{name}": e, f"true_{name}": true})
    row["plan_final_m"] = float(np.linalg.norm(maze.position() - ep.goal_pos))   # where the plan took the ball
    maze.place(ep.start_pos)
    return row


class OracleSubgoals(HierarchicalPlanner):
    """The hierarchical planner whose top level is the oracle: the subgoal is the level-2 latent of the
    window the oracle's next `stride` actions show from the ball's pose (the ball is put back)."""

    def __init__(self, hj, crop_size: int, pc, maze, generator: torch.Generator | None = None):
        super().__init__(hj, crop_size, pc, generator)
        self.maze, self.goal_pos = maze, None

    @torch.no_grad()
    def plan_subgoal(self, state_S) -> torch.Tensor:
        from engine.planning.maze import oracle_action
        pos, frames = self.maze.position(), []
        for _ in range(self.stride):
            self.maze.act(oracle_action(self.maze.position(), self.goal_pos))
            frames.append(self.frame_wm.encode_frame(self.maze.render()))
        self.maze.place(pos)
        return self.level2(frames)


class SimulatorWindows:
    """The top level's world model replaced by the simulator (what a perfect level-2 predictor would give):
    each sequence of summed displacements is executed from the ball's pose, each split evenly over its
    `stride` actions, and the level-2 latent of the last window its frames show is returned; the ball is
    put back. For the top CEM (engine.planning.cem.cem_plan) in place of the level-2 predictor."""

    action_dim = 2

    def __init__(self, planner, maze):
        self.planner, self.maze = planner, maze

    @torch.no_grad()
    def rollout(self, z0_1ND, state_S, actions_KHA) -> torch.Tensor:
        pos = self.maze.position()
        out = []
        for summed_HA in actions_KHA.numpy():
            self.maze.place(pos)
            out.append(execute_summed(self.planner, self.maze, summed_HA))
        self.maze.place(pos)
        return torch.cat(out)


def run_hierarchical(planner, task, ep) -> dict:
    """One closed-loop episode of a hierarchical planner (the plan's controller): reached, steps, final distance."""
    if isinstance(planner, OracleSubgoals):
        planner.goal_pos = ep.goal_pos
    planner.reset(ep.goal_image)
    r = task.run(ep, lambda frame, state, ep, maze: planner.act(frame, state))
    return {"episode": ep.index, "reached": float(r.success), "steps": r.steps, "final_m": r.final_distance}


CHECKS = ("compass", "landscape", "routes", "plan")


def main(argv=None) -> list[dict]:
    from engine.planning.maze import MazeTask
    from engine.planning.world_model import load_world_model

    def options(p):
        p.add_argument("--check", choices=CHECKS, default="compass")
        p.add_argument("--subgoals", choices=("planner", "oracle"), default="planner",
                       help="plan: the top level's subgoals, or the oracle's (OracleSubgoals)")
        p.add_argument("--top-model", choices=("predictor", "simulator"), default="predictor",
                       help="the top level's world model: its predictor, or the simulator (SimulatorWindows)")
        p.add_argument("--spacing", type=float, default=0.2, help="landscape: the grid's spacing (m)")

    args, cfg = diagnosis_args("python -m engine.planning.subgoals", __doc__.split("\n")[0], argv, "an hjepa run",
                               "re-planning poses per episode (every stride actions)", checkpoint_required=True,
                               extra=options)
    hj, train_cfg = load_world_model(args.checkpoint, hierarchical=True)
    pc = cfg.planning
    task = MazeTask(size=train_cfg.data.crop_size, tolerance=pc.tolerance, max_steps=pc.max_steps, seed=pc.goal_seed)
    gen = torch.Generator().manual_seed(cfg.meta.seed)
    if args.subgoals == "oracle":
        planner = OracleSubgoals(hj, train_cfg.data.crop_size, pc, task.maze, gen)
    else:
        from engine.planning.latent_graph import hierarchical_planner
        try:
            planner = hierarchical_planner(hj, train_cfg.data.crop_size, pc, gen)
        except (FileNotFoundError, ValueError) as e:
            print(f"graph error: {e}", file=sys.stderr)
            raise SystemExit(2)
    if args.top_model == "simulator":
        planner.top_wm = SimulatorWindows(planner, task.maze)
    checks = {"compass": lambda ep: check_episode(planner, task, ep, args.poses, pc.maxnorm),
              "landscape": lambda ep: [check_landscape(planner, task, ep, args.spacing)],
              "routes": lambda ep: [check_routes(planner, task, ep)],
              "plan": lambda ep: [run_hierarchical(planner, task, ep)]}[args.check]
    rows = []
    try:
        for i in range(args.episodes):
            for r in checks(task.episode(i)):
                rows.append(r)
                print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()),
                      flush=True)
    finally:
        task.close()
    keys = [k for k in rows[0] if k not in ("episode", "step")]
    print(f"{args.check}, mean over {len(rows)} rows: "
          + " ".join(f"{k} {np.nanmean([r[k] for r in rows]):.3f}" for k in keys))
    return rows


if __name__ == "__main__":
    main()
