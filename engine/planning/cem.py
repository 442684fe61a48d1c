"""Planning in latent space with the cross-entropy method (CEM), as the V-JEPA 2-AC planning utilities.

    wm = LatentWorldModel(ac_model, crop_size=64)           # ac_model: engine.ac_jepa.ACJEPA
    z0, goal = wm.encode_frame(frame_HW3), wm.encode_frame(goal_HW3)
    actions_HA, energy = cem_plan(wm, z0, state_S, goal, cfg.planning, generator)
    execute(actions_HA[0])                                   # MPC: first action, then plan again

Energy (the reference's, planning.energy l1): the L1 distance, averaged over tokens and features, between
the latent the predictor reaches after the H planned actions and the goal image's latent; ENERGIES holds
the alternatives on the same latents, and planning.energy_steps sum scores every predicted step.
Per iteration, `samples` action sequences are drawn from a diagonal Gaussian (clipped to +-maxnorm),
rolled out, and the `topk` lowest-energy ones refit the Gaussian: new = (1 - momentum) * top-k statistic + momentum * old.
The rollout is batched: ONE predictor call on all samples per horizon step (context: the current
frame, then the predicted ones). States are rolled out as the reference does for poses: the next
state is the last one with the action added to its first action_dim entries (the end-effector
position, which the arm's actions displace); the other entries are held. A model trained without
states (`zero_states`, H-JEPA's hierarchy.use_states: false) sees zero states throughout.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

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


def _l1(z, goal):
    return (z - goal).abs().mean(dim=(-2, -1))


def _l2(z, goal):
    return (z - goal).square().mean(dim=(-2, -1))


def _cosine(z, goal):
    return (1.0 - F.cosine_similarity(z, goal.expand_as(z), dim=-1)).mean(dim=-1)


def _pooled_l1(z, goal):
    return (z.mean(dim=-2) - goal.mean(dim=-2)).abs().mean(dim=-1)


# planning.energy -> the distance between latents [..., N, D] and the goal's [1, N, D], one value per leading
# index. l1: the reference's, every feature of every token. l2: squares weigh the tokens that differ most
# (where the arm is in one image and not the other). cosine: each token's direction only, 1 - cos, mean over
# tokens. pooled_l1: L1 between the token means, blind to where in the frame a feature is. A per-token
# normalised energy is not listed: with loss.normalize_reps the latents are already layer-normed per token.
ENERGIES = {"l1": _l1, "l2": _l2, "cosine": _cosine, "pooled_l1": _pooled_l1}


def energy(z_KND, goal_1ND, kind: str = "l1") -> torch.Tensor:
    """The planning energy of each of the K latents against the goal (planning.energy; l1 = the reference's:
    mean |z - goal|), [K]; any leading shape [..., N, D] gives [...]."""
    if kind not in ENERGIES:
        raise ValueError(f"unknown planning energy {kind!r}; expected one of {sorted(ENERGIES)}")
    return ENERGIES[kind](z_KND, goal_1ND)


def sequence_energy(world_model, z0_1ND, state_S, actions_KHA, goal_1ND, pc) -> torch.Tensor:
    """The energy CEM ranks the K action sequences by, [K]: of the last predicted latent (planning.energy_steps
    last, the reference's) or summed over every predicted step (sum: a sequence that gets close early scores
    better than one that gets there only at its end)."""
    if pc.energy_steps == "last":
        return energy(world_model.rollout(z0_1ND, state_S, actions_KHA), goal_1ND, pc.energy)
    if not hasattr(world_model, "rollout_steps"):
        raise ValueError(f"planning.energy_steps: 'sum' needs each step's latents, and {type(world_model).__name__} "
                         f"rolls out only the last; use 'last'")
    steps_KHND = world_model.rollout_steps(z0_1ND, state_S, actions_KHA)
    return energy(steps_KHND, goal_1ND[:, None], pc.energy).sum(dim=1)


@torch.no_grad()
def cem_plan(world_model: LatentWorldModel, z0_1ND, state_S, goal_1ND, pc, generator: torch.Generator | None = None):
    """(mean action sequence [H, A], its rollout's energy) after pc.iterations CEM iterations.
    pc: the `planning` config section (samples, topk, iterations, horizon, momenta, maxnorm, energy,
    energy_steps)."""
    H, A = pc.horizon, world_model.action_dim
    mean = torch.zeros(H, A)
    std = torch.full((H, A), float(pc.maxnorm))
    for _ in range(pc.iterations):
        noise = torch.randn(pc.samples, H, A, generator=generator)
        acts = (noise * std + mean).clamp(-pc.maxnorm, pc.maxnorm)
        e = sequence_energy(world_model, z0_1ND, state_S, acts, goal_1ND, pc)
        top = acts[e.topk(pc.topk, largest=False).indices]
        mean = (1.0 - pc.momentum_mean) * top.mean(0) + pc.momentum_mean * mean
        std = (1.0 - pc.momentum_std) * top.std(0) + pc.momentum_std * std
    final = sequence_energy(world_model, z0_1ND, state_S, mean[None], goal_1ND, pc)
    return mean, float(final)


__all__ = ["ENERGIES", "LatentWorldModel", "cem_plan", "energy", "sequence_energy"]
