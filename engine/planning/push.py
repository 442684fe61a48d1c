"""The pybullet push task: push the cube to where a goal image shows it (contact, not just a pose).

    task = PushTask(size=64, fps=10, tolerance=0.04, max_steps=60, seed=1000[, views=2])
    ep = task.episode(i)                    # scene i, the cube's goal position and the goal image
    result = task.run(ep, controller)       # controller(frame_HW3, state_S, ep, arm) -> action [3]

Episode i: the reach task's scene i (the arm source's scene: plane, arm, cube, cameras), and a horizontal
direction drawn from (seed, i, 1); the oracle pusher (`push_action`: behind the cube, down, along the
direction) drives the cube PUSH_DISTANCE that way, and the goal image is rendered where it stops (the arm
beside the pushed cube). A direction whose goal leaves the cube's area or that the oracle cannot complete
is redrawn. Success: the cube's centre comes within `tolerance` of its goal (on the table plane) within
`max_steps` actions; the end effector's position alone does not count.
"""
from __future__ import annotations

import numpy as np

from engine.datagen.sources.pybullet_arm import MAX_STEP
from engine.planning.reach import GOAL_DRAWS, Episode, ReachTask, UnreachableGoal

PUSH_DISTANCE = 0.10                     # m the cube travels from its start to its goal
CUBE_LO, CUBE_HI = np.array([0.38, -0.28]), np.array([0.72, 0.28])   # goals stay in the cameras' view
PUSH_HEIGHT, TRAVEL_HEIGHT = 0.05, 0.13  # end-effector heights while pushing / moving over the cube
BEHIND = 0.09                            # the push starts this far behind the cube's centre
CORRIDOR = 0.015                         # lateral slack of the end effector behind the cube while pushing
ORACLE_PUSH_STEPS = 120


def push_action(target: np.ndarray, cube: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """The oracle pusher's next displacement (at most MAX_STEP per axis), from where the end effector's
    target, the cube and its goal are; it holds no state, so it re-aligns when the cube turns or slides:
    in the corridor behind the cube (low, aligned) it pushes along cube -> goal; behind it but high, it
    lowers; elsewhere it rises to TRAVEL_HEIGHT first, then moves over to the point behind the cube."""
    d = goal[:2] - cube[:2]
    dist = float(np.linalg.norm(d))
    if dist < 1e-3:
        return np.zeros(3)
    u = d / dist
    rel = target[:2] - cube[:2]
    along, across = float(rel @ u), float(rel @ np.array([-u[1], u[0]]))
    behind = cube[:2] - BEHIND * u
    if along < -0.03 and abs(across) < CORRIDOR and target[2] < PUSH_HEIGHT + 0.02:
        step = np.append(u * min(MAX_STEP, dist), PUSH_HEIGHT - target[2])
        step[:2] -= across * np.array([-u[1], u[0]])   # steer back onto the line through the cube
    elif np.linalg.norm(target[:2] - behind) < CORRIDOR:
        step = np.array([*(behind - target[:2]), PUSH_HEIGHT - target[2]])
    elif target[2] < TRAVEL_HEIGHT - 0.01:
        step = np.array([0.0, 0.0, TRAVEL_HEIGHT - target[2]])
    else:
        step = np.array([*(behind - target[:2]), TRAVEL_HEIGHT - target[2]])
    return np.clip(step, -MAX_STEP, MAX_STEP)


class PushTask(ReachTask):
    def __init__(self, size: int = 64, fps: int = 10, tolerance: float = 0.04, max_steps: int = 60, seed: int = 1000,
                 views: int = 1, subgoals: int = 1):
        super().__init__(size, fps, tolerance, max_steps, seed, views, subgoals)

    def tracked(self) -> np.ndarray:
        """The position a goal is about: the cube's."""
        return self.arm.cube_pos()

    def oracle_step(self, goal: np.ndarray) -> np.ndarray:
        return push_action(self.arm.target, self.arm.cube_pos(), goal)

    def distance_to(self, goal: np.ndarray) -> float:
        """On the table plane: the cube's height is the table's, unless it tips."""
        return float(np.linalg.norm(self.tracked()[:2] - goal[:2]))

    def episode(self, i: int, goal_pos=None) -> Episode:
        """Scene i, the cube pushed PUSH_DISTANCE along a drawn direction (redrawn while the goal leaves the
        cube's area or the oracle cannot get it there); goal_pos (xy or xyz, m) gives the cube's goal instead."""
        if goal_pos is not None:
            goal = np.asarray(goal_pos, dtype=np.float64).reshape(-1)[:2]
            if np.any(goal < CUBE_LO) or np.any(goal > CUBE_HI):
                raise UnreachableGoal(f"cube goal {np.round(goal, 3).tolist()} lies outside the cube's area "
                                      f"{CUBE_LO.tolist()}..{CUBE_HI.tolist()} (m)")
            return self._episode_to(i, self._on_table(i, goal), ORACLE_PUSH_STEPS)
        rng = np.random.default_rng([self.seed, i, 1])
        for _ in range(GOAL_DRAWS):
            self._reset(i)
            u = rng.normal(size=2)
            goal = self.arm.cube_pos()[:2] + PUSH_DISTANCE * u / np.linalg.norm(u)
            if np.any(goal < CUBE_LO) or np.any(goal > CUBE_HI):
                continue
            try:
                return self._episode_to(i, self._on_table(i, goal), ORACLE_PUSH_STEPS)
            except UnreachableGoal:
                continue
        raise UnreachableGoal(f"episode {i}: none of {GOAL_DRAWS} drawn push directions could be completed")

    def _on_table(self, i: int, goal_xy: np.ndarray) -> np.ndarray:
        self._reset(i)
        return np.array([*goal_xy, self.arm.cube_pos()[2]])
