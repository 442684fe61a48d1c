"""The two-room maze task: bring the ball to where a goal image shows it, in the other room.

    task = MazeTask(size=32, tolerance=0.15, max_steps=60, seed=1000)
    ep = task.episode(i)                    # start in the left room, goal in the right one (held out: any seed)
    result = task.run(ep, controller)       # controller(frame_HW3, state_S, ep, maze) -> action [2]

Episode i: the ball starts at a point drawn from (seed, i) in the upper part of the left room and the goal
is drawn in the upper part of the right room, so the straight line between them crosses the middle wall:
the ball must go down to the gap, through it and up again (about 3 m: the oracle needs 16-22 actions of
at most 0.15 m per axis on the first 20 held-out episodes). A planner that greedily reduces its distance to the goal in latent space presses the ball against
the wall. The goal image is rendered with the ball placed at the goal. Success: the ball comes within
`tolerance` of the goal within `max_steps` actions (engine.datagen.sources.pybullet_maze holds the world).
"""
from __future__ import annotations

import time

import numpy as np

from engine.datagen.sources.pybullet_maze import BALL_RADIUS, FREE, MAX_STEP, WALL_END, WALL_T, Maze, blocked
from engine.planning.reach import Episode, Result

START_LO, START_HI = np.array([-0.75, 0.25]), np.array([-0.35, 0.75])
GOAL_LO, GOAL_HI = np.array([0.35, 0.25]), np.array([0.75, 0.75])
GAP_Y = (WALL_END - BALL_RADIUS - FREE) / 2     # the middle of the way under the wall
SIDE_X = 0.5                                    # where the oracle goes down and up in each room


# The middle wall seen by the ball's centre: a segment along x = 0 down to WALL_CORNER_Y, with the two
# corners a shortest way bends round at (+-WALL_CORNER_X, WALL_CORNER_Y).
WALL_CORNER_X, WALL_CORNER_Y = WALL_T / 2 + BALL_RADIUS, WALL_END - BALL_RADIUS


def sees(p, q) -> bool:
    """Whether the straight way from p to q passes under the middle wall (or stays on one side of it)."""
    if p[0] * q[0] >= 0:
        return True
    y0 = p[1] + (q[1] - p[1]) * (-p[0]) / (q[0] - p[0])    # where the segment crosses x = 0
    return y0 <= WALL_CORNER_Y


def geodesic_distance(p, q) -> float:
    """The shortest way (m) from p to q for the ball's centre: straight, or bent round the wall's corner(s)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if sees(p, q):
        return float(np.linalg.norm(q - p))
    near = np.array([np.sign(p[0]) * WALL_CORNER_X, WALL_CORNER_Y])   # p's corner, then q's
    far = np.array([np.sign(q[0]) * WALL_CORNER_X, WALL_CORNER_Y])
    ways = [np.linalg.norm(near - p) + np.linalg.norm(far - near) + np.linalg.norm(q - far)]
    for c in (near, far):        # one corner is enough where the other is in sight
        if sees(p, c) and sees(c, q):
            ways.append(np.linalg.norm(c - p) + np.linalg.norm(q - c))
    return float(min(ways))


def oracle_action(pos, goal) -> np.ndarray:
    """The privileged controller: down its room to the gap, across, up to the goal (at most MAX_STEP per axis)."""
    pos, goal = np.asarray(pos, dtype=np.float64), np.asarray(goal, dtype=np.float64)
    if np.sign(pos[0]) == np.sign(goal[0]):
        target = goal
    elif pos[1] > GAP_Y + MAX_STEP / 2:
        target = [pos[0], GAP_Y]                          # down its own room
    else:
        target = [np.sign(goal[0]) * SIDE_X, GAP_Y]       # across, under the wall
    return np.clip(np.asarray(target) - pos, -MAX_STEP, MAX_STEP)


class MazeTask:
    def __init__(self, size: int = 32, tolerance: float = 0.15, max_steps: int = 60, seed: int = 1000, fps: int = 10):
        self.size, self.tolerance, self.max_steps, self.seed = int(size), float(tolerance), int(max_steps), int(seed)
        self.maze = Maze(size, fps)

    def close(self):
        self.maze.close()

    def episode(self, i: int) -> Episode:
        rng = np.random.default_rng([self.seed, i])
        start, goal = rng.uniform(START_LO, START_HI), rng.uniform(GOAL_LO, GOAL_HI)
        for name, p in (("start", start), ("goal", goal)):
            if blocked(p):
                raise ValueError(f"episode {i}: the {name} {np.round(p, 3).tolist()} lies in a wall")
        self.maze.place(goal)
        image = self.maze.render()
        self.maze.place(start)
        return Episode(i, goal, image, start)

    def run(self, ep: Episode, controller) -> Result:
        """Closed loop from episode ep's start: observe, act, until success or max_steps."""
        self.maze.place(ep.start_pos)
        dists, spent, steps = [], 0.0, 0
        d = float(np.linalg.norm(self.maze.position() - ep.goal_pos))
        while d > self.tolerance and steps < self.max_steps:
            frame, state = self.maze.render(), self.maze.state()
            t0 = time.perf_counter()
            a = np.asarray(controller(frame, state, ep, self.maze), dtype=np.float64).reshape(2)
            spent += time.perf_counter() - t0
            self.maze.act(a)
            steps += 1
            d = float(np.linalg.norm(self.maze.position() - ep.goal_pos))
            dists.append(d)
        return Result(d <= self.tolerance, steps, d, min(dists or [d]), spent / max(steps, 1), dists)


def random_controller(rng: np.random.Generator, maxnorm: float):
    return lambda frame, state, ep, maze: rng.uniform(-maxnorm, maxnorm, 2)


def oracle_controller(frame, state, ep, maze):
    return oracle_action(maze.position(), ep.goal_pos)
