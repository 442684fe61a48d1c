"""The pybullet reach task: move the arm's end effector to where a goal image shows it.

    task = ReachTask(size=64, fps=10, tolerance=0.05, max_steps=30, seed=1000[, views=2])
    ep = task.episode(i)                    # scene i, its goal position and goal image (held out: any seed)
    result = task.run(ep, controller)       # controller(frame_HW3, state_S, ep) -> action [3]

Episode i: the arm source's scene (plane, KUKA arm from a jittered home pose, a cube, a random camera
yaw) drawn from (seed, i, 0); a goal end-effector position drawn from (seed, i, 1) inside GOAL_LO..GOAL_HI,
at least MIN_TRAVEL from the start. The goal image is rendered after driving the arm there with the
oracle controller in the same scene; then the scene is reset to its start. A goal the oracle cannot
bring within tolerance / 2 is unreachable: a drawn one is redrawn, a given one is an error naming it. Success: the end effector comes within
`tolerance` of the goal within `max_steps` actions; the final distance is reported too. With several
views (the arm source's cameras, 90 degrees of yaw apart) the goal image and every frame the controller
sees are one image per camera, [V, size, size, 3].
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from engine.datagen.sources.pybullet_arm import MAX_STEP, WORKSPACE_HI, WORKSPACE_LO, Arm, camera_matrix, to_camera

GOAL_LO = np.array([0.35, -0.30, 0.15])   # inside the workspace and above the cube: the goal needs no contact
GOAL_HI = np.array([0.70, 0.30, 0.50])
MIN_TRAVEL = 0.10
ORACLE_STEPS = 60
GOAL_DRAWS = 20


class UnreachableGoal(ValueError):
    """The oracle controller could not bring the end effector to the goal."""


@dataclass
class Episode:
    index: int
    goal_pos: np.ndarray
    goal_image: np.ndarray
    start_pos: np.ndarray
    subgoal_images: list = field(default_factory=list)   # frames of the oracle's way there, in order (subgoals > 1)


@dataclass
class Result:
    success: bool
    steps: int
    final_distance: float
    min_distance: float
    seconds_per_action: float
    distances: list = field(default_factory=list)


def oracle_action(target: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """The privileged controller: straight at the goal, at most MAX_STEP per axis."""
    return np.clip(goal - target, -MAX_STEP, MAX_STEP)


class ReachTask:
    def __init__(self, size: int = 64, fps: int = 10, tolerance: float = 0.05, max_steps: int = 30, seed: int = 1000,
                 views: int = 1, subgoals: int = 1):
        self.size, self.substeps = int(size), max(1, round(240 / fps))
        self.tolerance, self.max_steps, self.seed = float(tolerance), int(max_steps), int(seed)
        self.subgoals = int(subgoals)
        self.arm = Arm(views)

    def close(self):
        self.arm.close()

    def _reset(self, i: int):
        self.arm.reset(np.random.default_rng([self.seed, i, 0]))

    def tracked(self) -> np.ndarray:
        """The position a goal is about: the end effector's."""
        return self.arm.ee()[0]

    def oracle_step(self, goal: np.ndarray) -> np.ndarray:
        """The privileged controller's action towards `goal` (it knows the goal position)."""
        return oracle_action(self.arm.target, goal)

    def distance_to(self, goal: np.ndarray) -> float:
        return float(np.linalg.norm(self.tracked() - goal))

    def drive_to(self, goal: np.ndarray, steps: int = ORACLE_STEPS, frames: list | None = None) -> float:
        """Oracle-drive the tracked position to `goal`; the distance left. frames: each step's image is
        appended to it."""
        for _ in range(steps):
            if self.distance_to(goal) < self.tolerance / 4:
                break
            self.arm.act(self.oracle_step(goal), self.substeps)
            if frames is not None:
                frames.append(self.arm.render(self.size))
        return self.distance_to(goal)

    def episode(self, i: int, goal_pos=None) -> Episode:
        """Scene i with a drawn goal (redrawn while the oracle cannot reach it), or with `goal_pos` (xyz, m)."""
        if goal_pos is not None:
            goal = np.asarray(goal_pos, dtype=np.float64).reshape(3)
            if np.any(goal < WORKSPACE_LO) or np.any(goal > WORKSPACE_HI):
                raise UnreachableGoal(f"goal {np.round(goal, 3).tolist()} lies outside the arm's workspace "
                                      f"{WORKSPACE_LO.tolist()}..{WORKSPACE_HI.tolist()} (m)")
            return self._episode_to(i, goal)
        rng = np.random.default_rng([self.seed, i, 1])
        for _ in range(GOAL_DRAWS):
            self._reset(i)
            start = self.arm.ee()[0]
            goal = rng.uniform(GOAL_LO, GOAL_HI)
            if np.linalg.norm(goal - start) < MIN_TRAVEL:
                continue
            try:
                return self._episode_to(i, goal)
            except UnreachableGoal:
                continue
        raise UnreachableGoal(f"episode {i}: none of {GOAL_DRAWS} drawn goals was reachable")

    def _episode_to(self, i: int, goal: np.ndarray, steps: int = ORACLE_STEPS) -> Episode:
        self._reset(i)
        start = self.tracked().copy()
        way = [] if self.subgoals > 1 else None
        left = self.drive_to(goal, steps, way)
        if left > self.tolerance / 2:
            raise UnreachableGoal(f"goal {np.round(goal, 3).tolist()} of episode {i} is not reachable: the oracle "
                                  f"controller ended {left:.3f} m away after {steps} steps")
        reached = self.tracked().copy()     # where the goal image shows it
        image = self.arm.render(self.size)
        self._reset(i)
        # subgoals - 1 images evenly spaced in time along the oracle's way (the last subgoal is the goal)
        n = len(way or [])
        subgoal_images = [way[round(j * n / self.subgoals) - 1] for j in range(1, self.subgoals)] if n else []
        return Episode(i, reached, image, start, subgoal_images)

    def distance(self, ep: Episode) -> float:
        """What success is judged by: the tracked position's distance (m) to the goal."""
        return self.distance_to(ep.goal_pos)

    def oracle(self, ep: Episode) -> np.ndarray:
        return self.oracle_step(ep.goal_pos)

    def run(self, ep: Episode, controller) -> Result:
        """Closed loop from episode ep's start: observe, act, until success or max_steps."""
        self._reset(ep.index)
        dists, spent = [], 0.0
        d = self.distance(ep)
        steps = 0
        while d > self.tolerance and steps < self.max_steps:
            frame, state = self.arm.render(self.size), self.arm.state()
            t0 = time.perf_counter()
            a = np.asarray(controller(frame, state, ep, self.arm), dtype=np.float64).reshape(3)
            spent += time.perf_counter() - t0
            self.arm.act(np.clip(a, -MAX_STEP, MAX_STEP), self.substeps)
            steps += 1
            d = self.distance(ep)
            dists.append(d)
        return Result(d <= self.tolerance, steps, d, min(dists or [d]), spent / max(steps, 1), dists)


def camera_frames(arm: Arm) -> list:
    """Per camera of the current scene: (state_S, actions_KHA) -> the same in that camera's frame, as the arm
    source wrote them for data.camera_frame (EnsembleWorldModel.frames)."""
    def frame(M):
        def to_frame(state_S, actions_KHA):
            a = torch.as_tensor(actions_KHA, dtype=torch.float32)
            R = torch.as_tensor(M[:3, :3], dtype=torch.float32)
            return to_camera(M, np.zeros((1, 3)), np.asarray(state_S)[None])[1][0], a @ R.T
        return to_frame
    return [frame(camera_matrix(view)) for view in arm.cameras]


# -- baseline controllers: (frame, state, episode, arm) -> action --------------------------------------

def zero_controller(frame, state, ep, arm):
    return np.zeros(3)


def random_controller(rng: np.random.Generator, maxnorm: float):
    return lambda frame, state, ep, arm: rng.uniform(-maxnorm, maxnorm, 3)
