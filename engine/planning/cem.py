"""Planning in latent space with the cross-entropy method (CEM), as the V-JEPA 2-AC planning utilities.

    wm = LatentWorldModel(ac_model, crop_size=64)           # ac_model: engine.ac_jepa.ACJEPA
    z0, goal = wm.encode_frame(frame_HW3), wm.encode_frame(goal_HW3)
    actions_HA, energy = cem_plan(wm, z0, state_S, goal, cfg.planning, generator)
    execute(actions_HA[0])                                   # MPC: first action, then plan again

Energy (the reference's): the L1 distance, averaged over tokens and features, between the latent the
predictor reaches after the H planned actions and the goal image's latent. Per iteration, `samples`
action sequences are drawn from a diagonal Gaussian (clipped to +-maxnorm), rolled out, and the
`topk` lowest-energy ones refit the Gaussian: new = (1 - momentum) * top-k statistic + momentum * old.
The rollout is batched: ONE predictor call on all samples per horizon step (context: the current
frame, then the predicted ones). States are rolled out as the reference does for poses: the next
state is the last one with the action added to its first action_dim entries (the end-effector
position, which the arm's actions displace); the other entries are held. A model trained without
states (`zero_states`, H-JEPA's hierarchy.use_states: false) sees zero states throughout.
"""
from __future__ import annotations

import numpy as np
import torch

from engine.data.transforms import Normalize


class LatentWorldModel:
    """An ACJEPA seen as a world model: frames -> latents, (latents, states, actions) -> next latents."""

    def __init__(self, model, crop_size: int, zero_states: bool = False):
        self.model = model.eval()
        self.crop_size = int(crop_size)
        self.zero_states = zero_states
        self.normalize = Normalize()   # the training transform's normalisation of uint8 clips

    @property
    def action_dim(self) -> int:
        return self.model.predictor.action_dim

    @torch.no_grad()
    def encode_frame(self, frame_HW3: np.ndarray, what: str = "frame") -> torch.Tensor:
        """uint8 RGB frame [S, S, 3] -> latents [1, H'*W', D], as training saw frames (whole, normalised)."""
        frame = np.asarray(frame_HW3)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[:2] != (self.crop_size, self.crop_size):
            raise ValueError(f"{what}: expected an RGB image of {self.crop_size}x{self.crop_size} (data.crop_size), "
                             f"got shape {frame.shape}; render or resize it to the model's frame size")
        x_3THW = self.normalize(torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[:, None])
        return self.model.encode(x_3THW[None])

    @torch.no_grad()
    def rollout(self, z0_1ND, state_S, actions_KHA) -> torch.Tensor:
        """Latents [K, H'*W', D] after each of the K action sequences [K, H, A] from (z0, state)."""
        return self.rollout_steps(z0_1ND, state_S, actions_KHA)[:, -1]

    @torch.no_grad()
    def rollout_steps(self, z0_1ND, state_S, actions_KHA) -> torch.Tensor:
        """Latents after each action of each sequence: [K, H, H'*W', D]."""
        K, H, A = actions_KHA.shape
        z = z0_1ND.expand(K, -1, -1)
        states = torch.as_tensor(state_S, dtype=torch.float32).view(1, 1, -1).expand(K, 1, -1)
        if self.zero_states:
            states = torch.zeros_like(states)
        n = self.model.tokens_per_frame
        for h in range(H):
            z_next = self.model.step_predictor(z, actions_KHA[:, :h + 1], states)[:, -n:]
            z = torch.cat([z, z_next], dim=1)
            nxt = states[:, -1:].clone()
            if not self.zero_states:
                nxt[..., :A] += actions_KHA[:, h:h + 1]
            states = torch.cat([states, nxt], dim=1)
        return z[:, n:].reshape(K, H, n, -1)


def energy(z_KND, goal_1ND) -> torch.Tensor:
    """The reference's planning energy: mean |z - goal| per sample, [K]."""
    return (z_KND - goal_1ND).abs().mean(dim=(1, 2))


@torch.no_grad()
def cem_plan(world_model: LatentWorldModel, z0_1ND, state_S, goal_1ND, pc, generator: torch.Generator | None = None):
    """(mean action sequence [H, A], its rollout's energy) after pc.iterations CEM iterations.
    pc: the `planning` config section (samples, topk, iterations, horizon, momenta, maxnorm)."""
    H, A = pc.horizon, world_model.action_dim
    mean = torch.zeros(H, A)
    std = torch.full((H, A), float(pc.maxnorm))
    for _ in range(pc.iterations):
        noise = torch.randn(pc.samples, H, A, generator=generator)
        acts = (noise * std + mean).clamp(-pc.maxnorm, pc.maxnorm)
        e = energy(world_model.rollout(z0_1ND, state_S, acts), goal_1ND)
        top = acts[e.topk(pc.topk, largest=False).indices]
        mean = (1.0 - pc.momentum_mean) * top.mean(0) + pc.momentum_mean * mean
        std = (1.0 - pc.momentum_std) * top.std(0) + pc.momentum_std * std
    final = energy(world_model.rollout(z0_1ND, state_S, mean[None]), goal_1ND)
    return mean, float(final)


__all__ = ["LatentWorldModel", "cem_plan", "energy"]
