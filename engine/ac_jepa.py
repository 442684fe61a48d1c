"""The V-JEPA 2-AC step: a frozen encoder turns each frame into latents, the action-conditioned
predictor learns to predict the next frame's latents from the past ones, the actions and the states.

    model = ACJEPA(encoder, predictor, auto_steps=2)
    loss, info = model(clips_B3THW, {"actions": a_BT1A, "states": s_BTS})   # info: loss_tf, loss_rollout
    loss.backward(); optimizer.step()          # only the predictor trains; update_target is a no-op

As the reference's vjepa_droid trainer:
    targets h: each frame encoded alone (repeated tubelet_size times to fill one tubelet), then
        layer-normed (loss.normalize_reps): [B, T*H'*W', D], frame-major
    teacher forcing: predictor(h of frames 0..T-2, actions, states 0..T-2) -> frames 1..T-1
    rollout (loss.auto_steps): start from frame 0 and the teacher-forced frame 1, feed the predictor's
        own outputs back for auto_steps-1 more frames -> frames 1..auto_steps
    loss = mean |z - h|^p / p over the teacher-forced frames + the same over the rolled-out frames
The predictor's outputs are layer-normed too when normalize_reps is on.

An unconditioned predictor (action_dim 0, engine.models.ac_predictor) trains the same way on plain
clips: `model(clips_B3THW, None)`, every actions / states argument None.
"""
from __future__ import annotations

import pickle

import torch
import torch.nn.functional as F
from torch import nn

from engine.core.checkpoint import checkpoint_file
from engine.core.state import ReferenceCheckpointError, match_state


class ACJEPA(nn.Module):
    def __init__(self, encoder: nn.Module, predictor: nn.Module, auto_steps: int = 1, loss_exp: float = 1.0,
                 normalize_reps: bool = True, action_scale: float = 1.0, residual: bool = False):
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor
        # The encoder is frozen and is its own target: no EMA, no gradient (the reference trains the
        # predictor alone on the pretrained target encoder's latents).
        self.target_encoder = encoder
        for p in encoder.parameters():
            p.requires_grad_(False)
        self.auto_steps = int(auto_steps)
        self.loss_exp = float(loss_exp)
        self.normalize_reps = normalize_reps
        # Actions are multiplied by this before the predictor sees them (ours; 1 = the reference): the
        # arm's actions are a few cm, and at that scale the action embedding starts out all bias.
        self.action_scale = float(action_scale)
        # residual (model.pred_residual; H-JEPA's hierarchy.residual): the prediction of step t+1 at
        # step t's tokens is z_t + predictor(...)_t. In the maze a step moves the ball across one or two of the 16 tokens; a
        # plain predictor must first learn to copy the other tokens through its bottleneck, and its loss is
        # dominated by that copy, not by the actions.
        self.residual = bool(residual)

    @property
    def tokens_per_frame(self) -> int:
        return self.predictor.tokens_per_frame

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()   # frozen: whatever the loop asks, the encoder stays in eval mode
        return self

    @torch.no_grad()
    def encode(self, frames_B3THW) -> torch.Tensor:
        """Latents of each frame on its own: [B, T*H'*W', D] (layer-normed when normalize_reps)."""
        B, C, T, H, W = frames_B3THW.shape
        tub = getattr(self.encoder, "tubelet_size", 2)
        x = frames_B3THW.permute(0, 2, 1, 3, 4).reshape(B * T, C, 1, H, W).expand(-1, -1, tub, -1, -1)
        h = self.encoder.forward_dense(self.encoder.embed(x.contiguous()))
        h = h.reshape(B, T * h.shape[1], h.shape[2])
        return F.layer_norm(h, (h.size(-1),)) if self.normalize_reps else h

    @property
    def conditioned(self) -> bool:
        """The predictor takes actions and states (action_dim > 0)."""
        return self.predictor.action_dim > 0

    def step_predictor(self, z, actions=None, states=None, extrinsics=None) -> torch.Tensor:
        if actions is not None and self.action_scale != 1.0:
            actions = actions * self.action_scale
        out = self.predictor(z, actions, states, extrinsics)
        z = z + out if self.residual else out
        return F.layer_norm(z, (z.size(-1),)) if self.normalize_reps else z

    def predictions(self, h, actions=None, states=None, extrinsics=None):
        """(teacher-forced predictions of frames 1..T-1, rolled-out predictions of frames 1..auto_steps);
        actions / states None for an unconditioned predictor."""
        n = self.tokens_per_frame
        T = h.shape[1] // n
        upto = lambda v, b: None if v is None else v[:, :b]     # noqa: E731  the first b frames' inputs
        z_tf = self.step_predictor(h[:, :-n], actions, upto(states, T - 1), upto(extrinsics, T - 1))
        # T frames hold T-1 actions: a rollout can reach frame T-1 at most.
        steps = max(1, min(self.auto_steps, T - 1))
        z = torch.cat([h[:, :n], z_tf[:, :n]], dim=1)
        for k in range(1, steps):
            z_next = self.step_predictor(z, upto(actions, k + 1), upto(states, k + 1), upto(extrinsics, k + 1))[:, -n:]
            z = torch.cat([z, z_next], dim=1)
        return z_tf, z[:, n:]

    def loss_fn(self, z, h) -> torch.Tensor:
        n = self.tokens_per_frame
        target = h[:, n:z.size(1) + n]
        return torch.mean(torch.abs(z.float() - target.float()) ** self.loss_exp) / self.loss_exp

    def forward(self, clips, traj: dict | None):
        """clips: frames [B, 3, T, H, W], or their latents [B, T, N, D] from a latent cache
        (engine.data.latents: what `encode` returns for those frames), which skip the frozen encoder."""
        dev = clips.device
        if not self.conditioned:
            if traj is not None:
                raise ValueError("ACJEPA: an unconditioned predictor (action_dim 0) takes plain clips, got a batch "
                                 "with " + type(traj).__name__)
            actions = states = ext = None
        elif not isinstance(traj, dict) or "actions" not in traj or "states" not in traj:
            raise ValueError("ACJEPA: each batch needs {'actions', 'states'} (trajectory data: "
                             "engine.data.trajectories), got " + type(traj).__name__)
        else:
            actions, states = traj["actions"].to(dev).float(), traj["states"].to(dev).float()
            ext = traj.get("extrinsics")
            ext = ext.to(dev).float() if ext is not None else None
        h = clips.flatten(1, 2) if clips.dim() == 4 else self.encode(clips)
        z_tf, z_ar = self.predictions(h, actions, states, ext)
        loss_tf, loss_ar = self.loss_fn(z_tf, h), self.loss_fn(z_ar, h)
        return loss_tf + loss_ar, {"loss_tf": loss_tf.detach(), "loss_rollout": loss_ar.detach()}

    def update_target(self, momentum) -> None:
        """No target to move: the encoder is frozen."""


def load_encoder_weights(encoder: nn.Module, checkpoint, key: str = "target_encoder", *,
                         option: str = "meta.pretrain_checkpoint", key_option: str = "meta.target_encoder_key",
                         trusted: bool = False, keep_own: tuple = ()) -> None:
    """Load the encoder entry `key` (else "encoder", as the reference's load_pretrained) of a checkpoint
    into `encoder`, strictly: a reference checkpoint (its `module.` / `backbone.` prefixes dropped, as the
    reference does), a training checkpoint of this engine, or a run folder (its latest). The entries named
    in keep_own keep the encoder's own values (an evaluation's fixed sin-cos table, built for its clip size).
    A file that needs full unpickling (a run's RNG states) is read when `trusted` or written by a run
    (checkpoints/), as that run's resume reads it. `option` / `key_option` name the config keys that point
    here in the messages; one error lists every mismatch."""
    path = checkpoint_file(checkpoint, option, "python -m engine.train --config ...")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not (trusted or path.parent.name == "checkpoints"):
            raise ReferenceCheckpointError(str(path), [
                f"it holds objects that weights_only loading refuses ({str(e).splitlines()[0]}); if you trust "
                "the file, pass trusted=True"]) from None
        state = torch.load(path, map_location="cpu", weights_only=False)
    sd = state.get(key, state.get("encoder")) if isinstance(state, dict) else None
    if sd is None:
        entries = ", ".join(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise ReferenceCheckpointError(str(path), [f"no {key!r} entry, nor 'encoder' (entries: {entries}); "
                                                   f"set {key_option}"])
    sd = {k.replace("module.", "").replace("backbone.", ""): v for k, v in sd.items()}
    own = encoder.state_dict()
    for k in keep_own:
        sd.pop(k, None)
        if k in own:
            sd[k] = own[k]
    problems: list[str] = []
    sd = match_state(encoder, sd, key, problems)
    if problems:
        raise ReferenceCheckpointError(str(path), problems)
    encoder.load_state_dict(sd, strict=True)
