"""Hierarchical planning with an H-JEPA: the upper level plans subgoals, the frame level plans actions.

    hj, cfg = load_world_model("runs/hjepa_tiny", hierarchical=True)
    planner = HierarchicalPlanner(hj, cfg.data.crop_size, cfg.planning, generator)
    planner.reset(goal_image_HW3)
    action_A = planner.act(frame_HW3, state_S)          # MPC: call once per executed action

Every `stride` actions (level 2's time step) the top level re-plans: CEM (engine.planning.cem.cem_plan)
over top_horizon summed displacements at its own time step, from the level-2 latent of the last
`window` observed frames towards the goal image's level-2 latent (the goal frame held for a window);
the level-2 latent its predictor reaches after the plan's first step is the subgoal. Every action, the
frame level re-plans: CEM over the actions left until the subgoal's time, scored by the distance
(planning.energy, L1 by default) between the subgoal and the level-2 encoding of the window those actions
end in (observed frames, then the frame level's predictions). The first action is executed.

Compute is counted in predictor steps (one sample advanced by one step of one level's predictor):
`predictor_steps_per_action` gives what a planner spends, so a flat planner can be given the same.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.planning.cem import LatentWorldModel, cem_plan


@dataclass
class CEMSettings:
    """What cem_plan reads (the `planning` section's CEM keys)."""
    samples: int
    topk: int
    iterations: int
    horizon: int
    momentum_mean: float
    momentum_std: float
    maxnorm: float
    energy: str = "l1"                # planning.energy
    energy_steps: str = "last"        # the window its actions end in is scored: always the last step


def frame_settings(pc, horizon: int | None = None, samples: int | None = None) -> CEMSettings:
    return CEMSettings(samples or pc.samples, pc.topk, pc.iterations, horizon or pc.horizon, pc.momentum_mean,
                       pc.momentum_std, pc.maxnorm, pc.energy)


def top_settings(pc, stride: int) -> CEMSettings:
    """The top level's CEM: its summed displacements span `stride` actions, so their bound is stride x maxnorm."""
    return CEMSettings(pc.top_samples, pc.top_topk, pc.top_iterations, pc.top_horizon, pc.momentum_mean,
                       pc.momentum_std, pc.maxnorm * stride, pc.energy)


def cem_predictor_steps(s: CEMSettings) -> int:
    """Predictor steps of one cem_plan call: each iteration's samples, then the mean, over the horizon."""
    return (s.iterations * s.samples + 1) * s.horizon


def hierarchical_steps_per_action(pc, stride: int) -> float:
    """Mean predictor steps per action of HierarchicalPlanner: the frame level's horizons run stride..1,
    the top level plans (and rolls out its subgoal) once per stride actions; a graph top level
    (engine.planning.latent_graph) searches without the predictor."""
    low = np.mean([cem_predictor_steps(frame_settings(pc, horizon=h)) for h in range(1, stride + 1)])
    if pc.top_planner == "graph":
        return float(low)
    return float(low + (cem_predictor_steps(top_settings(pc, stride)) + 1) / stride)


def flat_samples_for(steps_per_action: float, pc) -> int:
    """The samples that give a flat CEM (pc.iterations, pc.horizon) `steps_per_action` predictor steps."""
    return max(pc.topk, round((steps_per_action / pc.horizon - 1) / pc.iterations))


class WindowRollout:
    """The frame level seen from level 2: action sequences -> level-2 latents of the window they end in."""

    def __init__(self, hj, frame_wm: LatentWorldModel, history_1WND: torch.Tensor):
        self.hj, self.frame_wm, self.history = hj, frame_wm, history_1WND
        self.window = hj.window_of(2)[0]

    @property
    def action_dim(self) -> int:
        return self.frame_wm.action_dim

    @torch.no_grad()
    def rollout(self, z0_1ND, state_S, actions_KHA) -> torch.Tensor:
        steps_KHND = self.frame_wm.rollout_steps(z0_1ND, state_S, actions_KHA)
        K = steps_KHND.shape[0]
        past = self.history.expand(K, -1, -1, -1)
        window = torch.cat([past, steps_KHND], dim=1)[:, -self.window:]
        return self.hj.encode_level(2, window)[:, 0]


class HierarchicalPlanner:
    def __init__(self, hj, crop_size: int, pc, generator: torch.Generator | None = None):
        if hj.num_levels < 2:
            raise ValueError("HierarchicalPlanner: the model has one level; plan with engine.planning.cem")
        zero = not hj.use_states
        self.hj, self.pc, self.gen = hj, pc, generator
        self.frame_wm = LatentWorldModel(hj.levels[0], crop_size, zero_states=zero)
        self.top_wm = LatentWorldModel(hj.levels[1], crop_size, zero_states=zero)
        self.window, self.stride = hj.window_of(2)
        self.top = top_settings(pc, self.stride)
        self.history: list[torch.Tensor] = []
        self.goal2 = self.subgoal = None
        self.left = 0

    def padded(self, latents: list) -> torch.Tensor:
        """The last `window` frame latents [1, W, N, D], the first repeated to fill a short history."""
        h = latents[-self.window:]
        return torch.stack([h[0]] * (self.window - len(h)) + h, 1)

    def level2(self, latents: list) -> torch.Tensor:
        """Level-2 latent [1, N, E] of the window the frame latents end in."""
        return self.hj.encode_level(2, self.padded(latents))[:, 0]

    @torch.no_grad()
    def reset(self, goal_HW3: np.ndarray) -> None:
        self.goal2 = self.level2([self.frame_wm.encode_frame(goal_HW3, "goal image")])
        self.history, self.left = [], 0

    @torch.no_grad()
    def plan_subgoal(self, state_S) -> torch.Tensor:
        """The top level's subgoal [1, N, E] from the observed window: its CEM plan's first step, rolled out."""
        z2 = self.level2(self.history)
        plan, _ = cem_plan(self.top_wm, z2, state_S, self.goal2, self.top, self.gen)
        return self.top_wm.rollout(z2, state_S, plan[None, :1])

    @torch.no_grad()
    def act(self, frame_HW3: np.ndarray, state_S) -> np.ndarray:
        if self.goal2 is None:
            raise RuntimeError("HierarchicalPlanner.act before reset(goal image)")
        z1 = self.frame_wm.encode_frame(frame_HW3)
        self.history = (self.history + [z1])[-self.window:]
        if self.left == 0:   # the top level re-plans once per its own time step
            self.subgoal = self.plan_subgoal(state_S)
            self.left = self.stride
        sub = WindowRollout(self.hj, self.frame_wm, self.padded(self.history))
        actions, _ = cem_plan(sub, z1, state_S, self.subgoal, frame_settings(self.pc, horizon=self.left), self.gen)
        self.left -= 1
        return actions[0].numpy()
