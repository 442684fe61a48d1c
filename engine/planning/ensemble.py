"""Several world models, or one model seeing several cameras, planned with as one: their latents side by
side, their energies averaged.

    wm = EnsembleWorldModel([load_world_model(run)[0] for run in ("runs/ac_s0", "runs/ac_s1", "runs/ac_s2")])
    wm = EnsembleWorldModel([load_world_model("runs/ac_arm2")[0]], views=2)   # frames [2, S, S, 3]: two cameras
    actions_HA, e = cem_plan(wm, wm.encode_frame(frame), state, wm.encode_frame(goal), cfg.planning)

Why: CEM ranks a step's candidate actions by the energy its predictor gives them, and a single tiny
predictor ranks them with errors of its own (engine.planning.diagnose: rank correlation ~0.6 with the
true frames' energies). Models trained from other seeds (their own encoder and predictor) err otherwise;
the mean of their energies averages part of those errors out. One camera sees a move along its ray
barely (the arm's depth: engine.planning.diagnose's camera-axis check); a second camera at 90 degrees of
yaw sees that move across its image, so the mean over views has no minimum where one view is fooled.

An ensemble latent is the latents of every (member, view) pair concatenated along the feature axis
([1, N, M*V*D], member-major); every member has the same tokens N and width D, so the planning energy (L1
averaged over tokens and features, engine.planning.cem.energy; likewise l2, pooled_l1, and cosine on
layer-normed tokens of equal norm) of an ensemble latent IS the mean of the pairs' energies, and cem_plan
and the diagnosis take an ensemble unchanged. Each pair's member rolls out its own slice, from the arm's
state and actions, turned into the view's camera frame for models trained so (data.camera_frame: `frames`).
"""
from __future__ import annotations

import numpy as np
import torch

from engine.planning.cem import LatentWorldModel


class EnsembleWorldModel:
    """members x views. `frames` (set per episode by a planner of camera-frame models): per view, a function
    (state_S, actions_KHA) -> the same in that camera's frame, applied before the view's rollouts."""

    def __init__(self, members: list[LatentWorldModel], views: int = 1):
        if views < 1 or not members:
            raise ValueError(f"an ensemble needs world models and views, got {len(members)} model(s) x {views} view(s)")
        for what in ("crop_size", "action_dim"):
            values = [getattr(m, what) for m in members]
            if len(set(values)) > 1:
                raise ValueError(f"the ensemble's world models differ in {what}: {values}; they must see the "
                                 f"same frames and take the same actions")
        self.members, self.views = list(members), int(views)
        self.crop_size = members[0].crop_size
        self.frames = None

    @property
    def action_dim(self) -> int:
        return self.members[0].action_dim

    @torch.no_grad()
    def encode_frame(self, frame, what: str = "frame") -> torch.Tensor:
        """The latents of every (member, view) pair side by side: [1, N, M*V*D]. frame: [S, S, 3], or with
        several views one image per camera, [V, S, S, 3]."""
        frame = np.asarray(frame)
        if self.views > 1 and (frame.ndim != 4 or frame.shape[0] != self.views):
            raise ValueError(f"{what}: expected one image per camera, [{self.views}, S, S, 3] (planning.views), got "
                             f"shape {frame.shape}")
        per_view = list(frame) if self.views > 1 else [frame]
        zs = [m.encode_frame(f, what if self.views == 1 else f"{what}, view {k}") for m in self.members
              for k, f in enumerate(per_view)]
        shapes = [tuple(z.shape) for z in zs]
        if len(set(shapes)) > 1:
            raise ValueError(f"the ensemble's world models give latents of different shapes {shapes}: the "
                             f"mean energy needs the same tokens and width in every member")
        return torch.cat(zs, dim=-1)

    def _pairs(self, z_1ND, state_S, actions_KHA):
        """(member, its slice, state, actions) for every (member, view) slice of an ensemble latent, the state
        and actions in that view's camera frame where `frames` is set."""
        chunks = z_1ND.chunk(len(self.members) * self.views, dim=-1)
        per_view = [(state_S, actions_KHA) if self.frames is None else self.frames[k](state_S, actions_KHA)
                    for k in range(self.views)]
        return [(self.members[j // self.views], z, *per_view[j % self.views]) for j, z in enumerate(chunks)]

    @torch.no_grad()
    def rollout(self, z0_1ND, state_S, actions_KHA) -> torch.Tensor:
        """Each pair's latents after each action sequence, side by side: [K, N, M*V*D]."""
        return torch.cat([m.rollout(z, s, a) for m, z, s, a in self._pairs(z0_1ND, state_S, actions_KHA)], dim=-1)

    @torch.no_grad()
    def rollout_steps(self, z0_1ND, state_S, actions_KHA) -> torch.Tensor:
        """Each pair's latents after each action of each sequence, side by side: [K, H, N, M*V*D]."""
        return torch.cat([m.rollout_steps(z, s, a) for m, z, s, a in self._pairs(z0_1ND, state_S, actions_KHA)],
                         dim=-1)


__all__ = ["EnsembleWorldModel"]
