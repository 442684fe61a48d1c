"""The top level as a search over a graph of level-2 latents of the exploration data (planning.top_planner: graph).

    graph = build_graph(*encode_episodes(hj, read_episodes("data/maze/maze.csv")), neighbours=4)
    planner = GraphSubgoals(hj, crop_size, pc, graph, generator)        # a HierarchicalPlanner
    planner.reset(goal_image_HW3)
    action_A = planner.act(frame_HW3, state_S)

Why a graph: level 2's energy (the distance to the goal's level-2 latent) only tells "at the goal or not"
(its rank correlation with the distance round the wall is 0.33 over the maze, -0.28 in the start room),
so CEM over level-2 rollouts cannot find the gap. The exploration episodes the model was trained on hold
the way round: their consecutive windows are one action apart in the world, whatever their latents say.

Nodes: the level-2 latent of every window position (hierarchy.window frames) of every exploration episode.
Edges (undirected; the maze's moves are reversible):
    within an episode, window t to t+1: weight 1 (one action);
    across episodes, each node to its `neighbours` nearest nodes of other episodes (Euclidean distance of
    the flattened latents, the matmul form, so all pairs take seconds): weight the distance over the
    median distance of one action's step within episodes, so a link costs what moving that far costs.
Planning: once per goal, Dijkstra from the node nearest the goal's level-2 latent gives every node's
path length to it (in actions) and its next node on the way. Every `stride` actions the node nearest the
observed window's level-2 latent is looked up, and the subgoal is the latent of the node `lookahead`
level-2 steps (lookahead x stride actions) along its path; within that of the goal, the goal's own
latent. The frame level plans to the subgoal as in HierarchicalPlanner. The graph costs no predictor
steps: nearest-node lookups and one Dijkstra per goal.
"""
from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.planning.hierarchical import HierarchicalPlanner


@dataclass
class Episodes:
    """Exploration episodes: uint8 frames [E, T, S, S, 3] and the ball's positions [E, T, 2] (m; diagnosis only)."""
    frames: np.ndarray
    states: np.ndarray


def read_episodes(index_csv, limit: int | None = None) -> Episodes:
    """The episodes of a maze dataset's index CSV (engine.datagen maze: NNNNNN.mp4 + NNNNNN.states.npy)."""
    from engine.data.datasets import read_index_csv
    from engine.data.trajectories import arrays_path
    from engine.data.video import decode_clip
    paths, _ = read_index_csv(index_csv)
    frames, states = [], []
    for p in paths[:limit]:
        s = np.load(arrays_path(p, "states"), allow_pickle=False)       # one row per frame
        frames.append(decode_clip(p, np.arange(len(s))))
        states.append(s)
    if len({len(s) for s in states}) > 1:
        raise ValueError(f"{index_csv}: episodes of different lengths {sorted({len(s) for s in states})}; the graph "
                         f"wants one length")
    return Episodes(np.stack(frames), np.stack(states))


@torch.no_grad()
def window_latents(hj, frames_ETHW3: np.ndarray, batch: int = 16) -> torch.Tensor:
    """Level-2 latents of every window position of each episode: [E, M = T-W+1, N, C]."""
    from engine.data.transforms import Normalize
    norm, W = Normalize(), hj.window_of(2)[0]
    out = []
    for i in range(0, len(frames_ETHW3), batch):
        clips = torch.stack([norm(torch.from_numpy(f).permute(3, 0, 1, 2)) for f in frames_ETHW3[i:i + batch]])
        h_BTND = hj.encode_frames(clips)
        B, T = h_BTND.shape[:2]
        windows = torch.stack([h_BTND[:, t:t + W] for t in range(T - W + 1)], 1)       # [B, M, W, N, D]
        z = hj.encode_level(2, windows.flatten(0, 1))[:, 0]
        out.append(z.view(B, T - W + 1, *z.shape[1:]))
    return torch.cat(out)


@dataclass
class LatentGraph:
    latents_MNC: torch.Tensor          # node latents
    episode_M: np.ndarray              # the exploration episode each node comes from
    positions_M2: np.ndarray           # the ball's mean position over the node's window (diagnosis only)
    indptr: np.ndarray                 # CSR adjacency (undirected: both directions stored)
    indices: np.ndarray
    weights: np.ndarray                # in actions

    @property
    def num_nodes(self) -> int:
        return len(self.episode_M)

    def nearest(self, z_KNC: torch.Tensor) -> np.ndarray:
        """The node nearest each latent (Euclidean over the flattened latent): [K]."""
        return sq_distances(z_KNC.flatten(1), self.latents_MNC.flatten(1)).argmin(1).numpy()

    def neighbours_of(self, i: int):
        lo, hi = self.indptr[i], self.indptr[i + 1]
        return zip(self.indices[lo:hi], self.weights[lo:hi])


def sq_distances(a_KF: torch.Tensor, b_MF: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances [K, M] (the matmul form, clamped at 0 against its rounding)."""
    return ((a_KF * a_KF).sum(1, keepdim=True) - 2 * a_KF @ b_MF.T + (b_MF * b_MF).sum(1)).clamp_min(0)


def build_graph(latents_EMNC: torch.Tensor, positions_ET2: np.ndarray, neighbours: int, chunk: int = 1024) -> LatentGraph:
    """The graph of the module's docstring from every window's latent [E, M, N, C] (window_latents) and the
    ball's positions per frame [E, T, 2] (only kept beside the nodes, for diagnosis)."""
    E, M = latents_EMNC.shape[:2]
    W = positions_ET2.shape[1] - M + 1
    z_MF = latents_EMNC.flatten(2).flatten(0, 1).float()
    episode = np.repeat(np.arange(E), M)
    pos = np.stack([positions_ET2[:, t:t + W].mean(1) for t in range(M)], 1).reshape(-1, 2)
    nodes = np.arange(E * M).reshape(E, M)
    src, dst, w = [nodes[:, :-1].ravel()], [nodes[:, 1:].ravel()], [np.ones((M - 1) * E)]
    step = float(torch.median((latents_EMNC[:, 1:] - latents_EMNC[:, :-1]).flatten(2).norm(dim=2)))
    if neighbours > 0:
        ep = torch.from_numpy(episode)
        for i in range(0, len(z_MF), chunk):
            d2 = sq_distances(z_MF[i:i + chunk], z_MF)
            d2[ep[i:i + chunk, None] == ep[None]] = float("inf")        # links join different episodes
            d2_K, j_K = d2.topk(neighbours, dim=1, largest=False)
            src.append(np.repeat(np.arange(i, i + len(d2)), neighbours))
            dst.append(j_K.ravel().numpy())
            w.append(d2_K.sqrt().ravel().numpy() / step)
    src, dst, w = np.concatenate(src), np.concatenate(dst), np.concatenate(w)
    src, dst, w = np.concatenate([src, dst]), np.concatenate([dst, src]), np.concatenate([w, w])
    order = np.argsort(src, kind="stable")
    indptr = np.searchsorted(src[order], np.arange(E * M + 1))
    return LatentGraph(latents_EMNC.flatten(0, 1), episode, pos, indptr, dst[order], w[order])


def shortest_paths(graph: LatentGraph, target: int) -> tuple[np.ndarray, np.ndarray]:
    """(path length to `target` [M] (inf: unreachable), the next node on the way there [M] (-1: none))."""
    dist = np.full(graph.num_nodes, np.inf)
    nxt = np.full(graph.num_nodes, -1)
    dist[target] = 0.0
    heap = [(0.0, target)]
    while heap:
        d, i = heapq.heappop(heap)
        if d > dist[i]:
            continue
        for j, w in graph.neighbours_of(i):
            if d + w < dist[j]:
                dist[j], nxt[j] = d + w, i
                heapq.heappush(heap, (d + w, j))
    return dist, nxt


def node_ahead(dist: np.ndarray, nxt: np.ndarray, node: int, actions: float) -> int | None:
    """The first node on `node`'s way to the target at least `actions` along it; None when the target
    is nearer than that (or unreachable): then the goal itself is the subgoal."""
    if not np.isfinite(dist[node]) or dist[node] <= actions:
        return None
    i = node
    while dist[node] - dist[i] < actions:
        i = nxt[i]
    return int(i)


class GraphSubgoals(HierarchicalPlanner):
    """The hierarchical planner whose top level is the latent graph (the frame level unchanged)."""

    def __init__(self, hj, crop_size: int, pc, graph: LatentGraph, generator: torch.Generator | None = None):
        super().__init__(hj, crop_size, pc, generator)
        self.graph, self.lookahead = graph, pc.graph_lookahead * self.stride
        self.dist = self.nxt = None

    @torch.no_grad()
    def reset(self, goal_HW3: np.ndarray) -> None:
        super().reset(goal_HW3)
        self.dist, self.nxt = shortest_paths(self.graph, int(self.graph.nearest(self.goal2)[0]))

    @torch.no_grad()
    def plan_subgoal(self, state_S) -> torch.Tensor:
        here = int(self.graph.nearest(self.level2(self.history))[0])
        ahead = node_ahead(self.dist, self.nxt, here, self.lookahead)
        return self.goal2 if ahead is None else self.graph.latents_MNC[ahead][None]


def load_graph(hj, pc) -> LatentGraph:
    """The graph of planning.graph_data's episodes with planning.graph_neighbours links per node."""
    if not Path(pc.graph_data).is_file():
        raise FileNotFoundError(f"planning.graph_data: no index CSV at {pc.graph_data}")
    eps = read_episodes(pc.graph_data)
    return build_graph(window_latents(hj, eps.frames), eps.states, pc.graph_neighbours)


def hierarchical_planner(hj, crop_size: int, pc, generator: torch.Generator | None = None) -> HierarchicalPlanner:
    """The HierarchicalPlanner of planning.top_planner: level-2 CEM, or the graph of the exploration data's
    level-2 latents (built here, once; its size and build time printed). A missing or unreadable
    planning.graph_data raises FileNotFoundError / ValueError naming it."""
    if pc.top_planner == "cem":
        return HierarchicalPlanner(hj, crop_size, pc, generator)
    t0 = time.perf_counter()
    graph = load_graph(hj, pc)
    print(f"graph of {pc.graph_data}: {graph.num_nodes} nodes, {len(graph.indices) // 2} edges, built in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    return GraphSubgoals(hj, crop_size, pc, graph, generator)
