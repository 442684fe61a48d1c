"""engine.planning.latent_graph: the graph of exploration latents, its shortest paths round an obstacle,
the nearest-node lookup, the lookahead subgoal, and the hierarchical planner with `top_planner: graph`."""
import csv
from collections import deque

import numpy as np
import pytest
import torch

from engine.builders import build_jepa
from engine.config import load_config
from engine.planning.latent_graph import (GraphSubgoals, build_graph, load_graph, node_ahead, read_episodes,
                                          shortest_paths, window_latents)

from tests.tiny_runs import HJEPA_SMALL, HJEPA_TINY as TINY

# A U-shaped world on the integer grid [-3, 3]^2: a wall along x = 0 from the top down to y = -1, so the
# two rooms meet only through the rows y = -3 and -2 below it.
CELLS = [(x, y) for x in range(-3, 4) for y in range(-3, 4) if not (x == 0 and y >= -1)]
SEGMENT = 3          # each "episode" walks 3 free cells in a straight line (its window positions)


def segments():
    free, out = set(CELLS), []
    for x, y in CELLS:
        for dx, dy in ((1, 0), (0, 1)):
            walk = [(x + dx * i, y + dy * i) for i in range(SEGMENT)]
            if all(c in free for c in walk):
                out.append(walk)
    return np.array(out, dtype=np.float32)                              # [E, SEGMENT, 2]


def grid_distances(target) -> dict:
    """Shortest 4-connected path lengths over the free cells (breadth first), the known answer."""
    free, dist, todo = set(CELLS), {target: 0}, deque([target])
    while todo:
        x, y = todo.popleft()
        for c in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
            if c in free and c not in dist:
                dist[c] = dist[(x, y)] + 1
                todo.append(c)
    return dist


@pytest.fixture(scope="module")
def grid_graph():
    """Each node's latent is its cell's position (one token of 2 channels): consecutive windows of an episode
    are one step apart, and the one nearest node of another episode is the same cell (weight 0)."""
    pos_EM2 = segments()
    return build_graph(torch.from_numpy(pos_EM2)[:, :, None], pos_EM2, neighbours=1), pos_EM2.reshape(-1, 2)


def test_shortest_paths_go_round_the_wall_as_the_grid_does(grid_graph):
    g, pos = grid_graph
    target = int(np.flatnonzero((pos == (2, 2)).all(1))[0])
    dist, nxt = shortest_paths(g, target)
    truth = grid_distances((2, 2))
    np.testing.assert_allclose(dist, [truth[tuple(map(int, p))] for p in pos], atol=1e-3)
    start = int(np.flatnonzero((pos == (-2, 2)).all(1))[0])
    assert dist[start] == pytest.approx(12, abs=1e-3)       # down 4, across 4, up 4; the straight line is 4
    path = [start]
    while nxt[path[-1]] >= 0:
        path.append(int(nxt[path[-1]]))
    cells = pos[path]
    assert tuple(cells[-1]) == (2, 2)
    assert all(tuple(map(int, c)) in set(CELLS) for c in cells)
    assert cells[:, 1].min() <= -2                           # under the wall
    assert np.abs(np.diff(cells, axis=0)).sum(1).max() <= 1  # every hop a step or a stitch, never a jump


def test_nearest_node_and_the_lookahead_subgoal(grid_graph):
    g, pos = grid_graph
    near = g.nearest(torch.tensor([[[1.9, -2.1]], [[-3.2, 3.0]]]))
    np.testing.assert_array_equal(pos[near], [[2, -2], [-3, 3]])
    target = int(np.flatnonzero((pos == (2, 2)).all(1))[0])
    dist, nxt = shortest_paths(g, target)
    start = int(np.flatnonzero((pos == (-2, 2)).all(1))[0])
    ahead = node_ahead(dist, nxt, start, 4)
    assert dist[start] - dist[ahead] == pytest.approx(4, abs=1e-3)      # 4 steps along the way round,
    assert np.abs(pos[ahead] - pos[start]).sum() == 4 and pos[ahead][1] < 2   # heading down, not at the wall
    near_goal = int(np.flatnonzero((pos == (2, 0)).all(1))[0])
    assert node_ahead(dist, nxt, near_goal, 4) is None       # within 4 of the goal: the goal is the subgoal


def test_without_links_the_episodes_stay_apart(grid_graph):
    g, pos = grid_graph
    lone = build_graph(g.latents_MNC.view(-1, SEGMENT, 1, 2), pos.reshape(-1, SEGMENT, 2), neighbours=0)
    dist, _ = shortest_paths(lone, 0)
    assert np.isfinite(dist).sum() == SEGMENT


SMALL = HJEPA_SMALL + ["planning.samples=8", "planning.topk=2", "planning.iterations=2", "planning.max_steps=3"]


@pytest.fixture(scope="module")
def stack():
    cfg = load_config(TINY, SMALL)
    torch.manual_seed(0)
    return build_jepa(cfg).eval(), cfg


def test_graph_nodes_are_the_planners_level2_latents_of_the_episodes_windows(stack, maze_csv):
    """The nodes live where the planner looks them up: the level-2 latent of a window of frames, as
    HierarchicalPlanner.level2 encodes the frames it observed."""
    hj, cfg = stack
    pc = load_config(TINY, SMALL + ["planning.top_planner=graph", f"planning.graph_data={maze_csv}"]).planning
    eps = read_episodes(maze_csv)
    assert eps.frames.shape == (4, 14, 32, 32, 3) and eps.states.shape == (4, 14, 2)
    z = window_latents(hj, eps.frames)
    assert z.shape[:2] == (4, 14 - 4 + 1)
    planner = GraphSubgoals(hj, 32, pc, load_graph(hj, pc), torch.Generator().manual_seed(0))
    window = [planner.frame_wm.encode_frame(f) for f in eps.frames[2, 5:9]]
    torch.testing.assert_close(planner.level2(window)[0], z[2, 5], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(planner.graph.latents_MNC[2 * 11 + 5], z[2, 5])
    near = planner.graph.nearest(planner.level2(window))[0]
    torch.testing.assert_close(planner.graph.latents_MNC[near], z[2, 5], atol=1e-5, rtol=1e-4)


def test_graph_subgoal_is_the_node_a_stride_along_the_path_or_the_goal(stack, maze_csv):
    hj, cfg = stack
    pc = load_config(TINY, SMALL + ["planning.top_planner=graph", f"planning.graph_data={maze_csv}"]).planning
    eps = read_episodes(maze_csv)
    planner = GraphSubgoals(hj, 32, pc, load_graph(hj, pc), torch.Generator().manual_seed(0))
    planner.reset(eps.frames[0, 13])                         # the goal: episode 0's last frame
    planner.history = [planner.frame_wm.encode_frame(f) for f in eps.frames[0, :4]]
    assert planner.lookahead == planner.stride == 4          # planning.graph_lookahead 1: one level-2 step
    here = int(planner.graph.nearest(planner.level2(planner.history))[0])
    assert 0 < planner.dist[here] < np.inf
    planner.lookahead = planner.dist[here] / 2               # a subgoal half way, wherever the untrained model puts it
    ahead = node_ahead(planner.dist, planner.nxt, here, planner.lookahead)
    assert planner.dist[here] - planner.dist[ahead] >= planner.lookahead
    torch.testing.assert_close(planner.plan_subgoal(np.zeros(2, np.float32))[0], planner.graph.latents_MNC[ahead])
    planner.history = [planner.frame_wm.encode_frame(eps.frames[0, 13])]      # at the goal already
    torch.testing.assert_close(planner.plan_subgoal(np.zeros(2, np.float32)), planner.goal2)


def test_plan_cli_with_the_graph_top_level_gives_flat_the_frame_levels_steps(stack, maze_csv, tmp_path):
    from engine.core.checkpoint import save_checkpoint
    from engine.plan import main
    hj, cfg = stack
    save_checkpoint(tmp_path / "run", 1, {"encoder": hj.encoder.state_dict(), "predictor": hj.predictor.state_dict(),
                                          "target_encoder": hj.target_encoder.state_dict(), "config": cfg.to_dict()})
    sets = [o for o in SMALL if o.startswith("planning.")] + ["planning.top_planner=graph",
                                                              f"planning.graph_data={maze_csv}"]
    out = tmp_path / "plan.csv"
    rows = main(["--hierarchical", "--config", TINY, "--checkpoint", str(tmp_path / "run"), "--episodes", "1",
                 "--csv", str(out)] + [a for o in sets for a in ("--set", o)])
    assert [r["controller"] for r in rows] == ["hierarchical", "flat", "random", "oracle"]
    # the graph spends no predictor steps: the frame level's CEM over horizons 4..1 is all, 8 x 2 + 1 each
    assert rows[0]["predictor_steps_per_action"] == pytest.approx(np.mean([17 * h for h in (1, 2, 3, 4)]))
    with open(out) as f:
        got = list(csv.DictReader(f))
    assert float(got[1]["predictor_steps_per_action"]) == pytest.approx(rows[0]["predictor_steps_per_action"], rel=0.1)


@pytest.mark.parametrize("command", ["plan", "subgoals"])
def test_clis_name_a_missing_graph_data_file(stack, tmp_path, capsys, command):
    from engine.core.checkpoint import save_checkpoint
    from engine.plan import main as plan_main
    from engine.planning.subgoals import main as subgoals_main
    hj, cfg = stack
    save_checkpoint(tmp_path / "run", 1, {"encoder": hj.encoder.state_dict(), "predictor": hj.predictor.state_dict(),
                                          "target_encoder": hj.target_encoder.state_dict(), "config": cfg.to_dict()})
    args = ["--config", TINY, "--checkpoint", str(tmp_path / "run"), "--episodes", "1",
            "--set", "planning.top_planner=graph", "--set", f"planning.graph_data={tmp_path / 'none.csv'}"]
    with pytest.raises(SystemExit) as e:
        plan_main(["--hierarchical", *args]) if command == "plan" else subgoals_main(args)
    assert e.value.code == 2
    assert "planning.graph_data: no index CSV at" in capsys.readouterr().err


def test_landscape_check_scores_the_graphs_path_lengths(stack, maze_csv):
    """engine.planning.subgoals --check landscape with the graph top level: its path lengths ranked against the
    geodesic distance beside the energies."""
    from engine.planning.maze import MazeTask
    from engine.planning.subgoals import check_landscape
    hj, _ = stack
    pc = load_config(TINY, SMALL + ["planning.top_planner=graph", f"planning.graph_data={maze_csv}"]).planning
    planner = GraphSubgoals(hj, 32, pc, load_graph(hj, pc), torch.Generator().manual_seed(0))
    task = MazeTask(size=32, tolerance=pc.tolerance, max_steps=30, seed=pc.goal_seed)
    try:
        r = check_landscape(planner, task, task.episode(0), spacing=0.4)
    finally:
        task.close()
    graph = [r[f"graph_{k}"] for k in ("geo", "straight", "geo_start", "straight_start")]
    assert all(-1 <= v <= 1 for v in graph if np.isfinite(v))
    assert np.isfinite(r["graph_geo"])
