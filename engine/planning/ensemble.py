"""Several world models planned with as one: their latents side by side, their energies averaged.

    wm = EnsembleWorldModel([load_world_model(run)[0] for run in ("runs/ac_s0", "runs/ac_s1", "runs/ac_s2")])
    actions_HA, e = cem_plan(wm, wm.encode_frame(frame), state, wm.encode_frame(goal), cfg.planning)

Why: CEM ranks a step's candidate actions by the energy its predictor gives them, and a single tiny
predictor ranks them with errors of its own (engine.planning.diagnose: rank correlation ~0.6 with the
true frames' energies). Models trained from other seeds (their own encoder and predictor) err otherwise;
the mean of their energies averages part of those errors out.

An ensemble latent is the members' latents concatenated along the feature axis ([1, N, M*D]); every
member has the same tokens N and width D, so the planning energy (L1 averaged over tokens and features,
engine.planning.cem.energy; likewise l2, pooled_l1, and cosine on layer-normed tokens of equal norm) of an
ensemble latent IS the mean of the members' energies, and cem_plan and the diagnosis take an ensemble
unchanged. Each member rolls out its own slice.
"""
from __future__ import annotations

import torch

from engine.planning.cem import LatentWorldModel


class EnsembleWorldModel:
    def __init__(self, members: list[LatentWorldModel]):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 world models, got {len(members)}")
        for what in ("crop_size", "action_dim"):
            values = [getattr(m, what) for m in members]
            if len(set(values)) > 1:
                raise ValueError(f"the ensemble's world models differ in {what}: {values}; they must see the "
                                 f"same frames and take the same actions")
        self.members = list(members)
        self.crop_size = members[0].crop_size

    @property
    def action_dim(self) -> int:
        return self.members[0].action_dim

    @torch.no_grad()
    def encode_frame(self, frame_HW3, what: str = "frame") -> torch.Tensor:
        """The members' latents of the frame side by side: [1, N, M*D]."""
        zs = [m.encode_frame(frame_HW3, what) for m in self.members]
        shapes = [tuple(z.shape) for z in zs]
        if len(set(shapes)) > 1:
            raise ValueError(f"the ensemble's world models give latents of different shapes {shapes}: the "
                             f"mean energy needs the same tokens and width in every member")
        return torch.cat(zs, dim=-1)

    def _split(self, z_1ND):
        return z_1ND.chunk(len(self.members), dim=-1)

    @torch.no_grad()
    def rollout(self, z0_1ND, state_S, actions_KHA) -> torch.Tensor:
        """Each member's latents after each action sequence, side by side: [K, N, M*D]."""
        return torch.cat([m.rollout(z, state_S, actions_KHA) for m, z in zip(self.members, self._split(z0_1ND))],
                         dim=-1)

    @torch.no_grad()
    def rollout_steps(self, z0_1ND, state_S, actions_KHA) -> torch.Tensor:
        """Each member's latents after each action of each sequence, side by side: [K, H, N, M*D]."""
        return torch.cat([m.rollout_steps(z, state_S, actions_KHA)
                          for m, z in zip(self.members, self._split(z0_1ND))], dim=-1)


__all__ = ["EnsembleWorldModel"]
