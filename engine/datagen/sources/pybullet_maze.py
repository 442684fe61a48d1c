"""A pybullet point mass in a two-room maze seen from above: the long-horizon task of H-JEPA.

Usage:
    from engine.datagen.sources import generate_maze
    csv = generate_maze("data/generated/maze", 300, num_frames=32, size=32, seed=0)
    # data/generated/maze/maze/000007.mp4 + 000007.actions.npy (float32 [T, 2]) + 000007.states.npy (float32 [T, 2])
    python -m engine.datagen maze --output data/generated/maze --num 300 [--frames 32 --size 32]

The world: a 2 m x 2 m floor closed by walls, split by a wall along x = 0 that runs from the top wall
down to y = WALL_END, leaving a gap at the bottom (a U-shaped way from the left room to the right one).
A red ball (radius BALL_RADIUS) slides on the floor: an action is a 2-D displacement (m, |a| <= MAX_STEP
per axis), executed as a constant velocity over 240/fps physics steps of 1/240 s; the walls stop it
(contacts), so a displacement into a wall moves the ball along it or not at all. The camera looks
straight down with the floor filling the frame. Row t of the arrays belongs to frame t: the ball's
position (the state) and the displacement commanded after it (the action).
Frames are written lossless by default (codec h264rgb), as the arm's: the planner sees the renderer's
frames, and H.264 4:2:0 moves a 32-px maze frame's pixels by 6.3/255 on average, 2.6x what one step of the
ball moves them (2.4/255).
Exploration data: from a random free start the ball heads for a random waypoint (with noise) and takes
a new one when it gets there or stops making progress (stuck on a wall). Episode i depends only on
(seed, i).
"""
from __future__ import annotations

import numpy as np

from .common import write_episodes

HALF = 1.0                 # the floor spans [-HALF, HALF]^2 (m)
WALL_T = 0.12              # wall thickness (m)
WALL_END = -0.35           # the middle wall runs from the top wall down to this y; the gap is below
BALL_RADIUS = 0.15
MAX_STEP = 0.15            # largest displacement per action and axis (m): 2.4 px of a 32-px frame, so a step shows
FREE = HALF - WALL_T / 2 - BALL_RADIUS - 0.01   # the ball's centre stays within [-FREE, FREE]^2


def blocked(xy) -> bool:
    """Whether the ball cannot stand at xy (overlaps a wall)."""
    x, y = float(xy[0]), float(xy[1])
    if abs(x) > FREE or abs(y) > FREE:
        return True
    return abs(x) < WALL_T / 2 + BALL_RADIUS and y > WALL_END - BALL_RADIUS


class Maze:
    """One pybullet client (DIRECT) holding the maze and the ball."""

    def __init__(self, size: int = 32, fps: int = 10):
        import pybullet as pb
        self.pb, self.size = pb, int(size)
        self.substeps = max(1, round(240 / fps))
        self.cid = c = pb.connect(pb.DIRECT)
        pb.setGravity(0, 0, 0, physicsClientId=c)
        floor = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=[HALF, HALF, 0.01], physicsClientId=c)
        floor_v = pb.createVisualShape(pb.GEOM_BOX, halfExtents=[HALF, HALF, 0.01], rgbaColor=[0.85, 0.85, 0.8, 1],
                                       physicsClientId=c)
        pb.createMultiBody(0, floor, floor_v, [0, 0, -0.01], physicsClientId=c)
        h = WALL_T / 2
        mid_len = (HALF - WALL_END) / 2
        for center, half in (([0, HALF, 0.1], [HALF, h, 0.1]), ([0, -HALF, 0.1], [HALF, h, 0.1]),
                             ([HALF, 0, 0.1], [h, HALF, 0.1]), ([-HALF, 0, 0.1], [h, HALF, 0.1]),
                             ([0, WALL_END + mid_len, 0.1], [h, mid_len, 0.1])):
            col = pb.createCollisionShape(pb.GEOM_BOX, halfExtents=half, physicsClientId=c)
            vis = pb.createVisualShape(pb.GEOM_BOX, halfExtents=half, rgbaColor=[0.15, 0.25, 0.7, 1], physicsClientId=c)
            pb.createMultiBody(0, col, vis, center, physicsClientId=c)
        col = pb.createCollisionShape(pb.GEOM_SPHERE, radius=BALL_RADIUS, physicsClientId=c)
        vis = pb.createVisualShape(pb.GEOM_SPHERE, radius=BALL_RADIUS, rgbaColor=[0.9, 0.1, 0.1, 1], physicsClientId=c)
        self.ball = pb.createMultiBody(1.0, col, vis, [0, 0, BALL_RADIUS], physicsClientId=c)
        pb.changeDynamics(self.ball, -1, lateralFriction=0.0, restitution=0.0, physicsClientId=c)
        self.view = pb.computeViewMatrix([0, 0, 4.0], [0, 0, 0], [0, 1, 0], physicsClientId=c)
        fov = float(np.degrees(2 * np.arctan(HALF / (4.0 - 0.2))))   # the floor (top of the walls) fills the frame
        self.proj = pb.computeProjectionMatrixFOV(fov, 1.0, 0.5, 5.0, physicsClientId=c)

    def place(self, xy) -> None:
        self.pb.resetBasePositionAndOrientation(self.ball, [float(xy[0]), float(xy[1]), BALL_RADIUS], [0, 0, 0, 1],
                                                physicsClientId=self.cid)
        self.pb.resetBaseVelocity(self.ball, [0, 0, 0], [0, 0, 0], physicsClientId=self.cid)

    def position(self) -> np.ndarray:
        return np.asarray(self.pb.getBasePositionAndOrientation(self.ball, physicsClientId=self.cid)[0][:2])

    def state(self) -> np.ndarray:
        """float32 [2]: the ball's xy (the episodes' `states` rows)."""
        return self.position().astype(np.float32)

    def act(self, delta) -> None:
        pb, c = self.pb, self.cid
        d = np.clip(np.asarray(delta, dtype=np.float64).reshape(2), -MAX_STEP, MAX_STEP)
        v = [float(d[0]) * 240 / self.substeps, float(d[1]) * 240 / self.substeps, 0.0]
        for _ in range(self.substeps):
            pb.resetBaseVelocity(self.ball, v, [0, 0, 0], physicsClientId=c)
            pb.stepSimulation(physicsClientId=c)
        x, y = self.position()   # contacts can nudge the ball off the floor plane: keep it on it, at rest
        self.place([x, y])

    def render(self) -> np.ndarray:
        w, h, rgba, _, _ = self.pb.getCameraImage(self.size, self.size, self.view, self.proj,
                                                  renderer=self.pb.ER_TINY_RENDERER, physicsClientId=self.cid)
        return np.asarray(rgba, np.uint8).reshape(h, w, 4)[..., :3]

    def close(self):
        self.pb.disconnect(physicsClientId=self.cid)


def free_point(rng: np.random.Generator, lo=(-FREE, -FREE), hi=(FREE, FREE)) -> np.ndarray:
    while True:
        p = rng.uniform(lo, hi)
        if not blocked(p):
            return p


def explore_episode(maze: Maze, rng: np.random.Generator, num_frames: int = 32):
    """(uint8 frames [T, S, S, 3], float32 actions [T, 2], float32 states [T, 2]) of one exploration run."""
    maze.place(free_point(rng))
    waypoint, best, since = free_point(rng), np.inf, 0
    frames, actions, states = [], [], []
    for _ in range(num_frames):
        pos = maze.position()
        frames.append(maze.render())
        states.append(maze.state())
        dist = float(np.linalg.norm(waypoint - pos))
        since = 0 if dist < best - 0.02 else since + 1
        best = min(best, dist)
        if dist < 0.1 or since > 3:
            waypoint, best, since = free_point(rng), np.inf, 0
        a = np.clip(waypoint - pos + rng.normal(0, 0.05, 2), -MAX_STEP, MAX_STEP)
        actions.append(a)
        maze.act(a)
    return np.stack(frames), np.asarray(actions, np.float32), np.asarray(states, np.float32)


def generate_maze(out_dir, num_videos: int, *, num_frames: int = 32, size: int = 32, fps: int = 10,
                  codec: str = "h264rgb", seed: int = 0, name: str = "maze", progress: bool = False):
    """Write num_videos exploration episodes; return the index CSV path."""
    meta = {"source": "pybullet two-room maze", "classes": ["explore"], "num_frames": num_frames, "size": size,
            "seed": seed, "arrays": {"actions": "float32 [T, 2] ball displacement (m)",
                                     "states": "float32 [T, 2] ball xy (m)"}}
    maze = Maze(size, fps)

    def episode(i):
        frames, actions, states = explore_episode(maze, np.random.default_rng([seed, i]), num_frames)
        return frames, 0, actions, states

    return write_episodes(out_dir, name, num_videos, episode, size=size, codec=codec, fps=fps, meta=meta,
                          progress=progress, close=maze.close)
