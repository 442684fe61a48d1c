"""The LeWorldModel step (`app: lewm`; Maes et al., arXiv 2603.19312): end to end from pixels, with no
EMA and no stop-gradient; SIGReg alone keeps the embeddings from collapsing.

    model = LeWorldModel(encoder, predictor, sigreg=SIGReg(1024, 17), sigreg_coeff=0.09, action_scale=33.0)
    loss, info = model(clips_B3THW, {"actions": a_BT1A, "states": s_BTS})   # info: loss_tf, loss_sigreg
    loss.backward(); optimizer.step()          # encoder and predictor train together

    e = encoder(frame t) for each of the T frames            [B, T, D] (engine.models.lewm.FrameEncoder)
    p = predictor(e of frames 0..T-2, actions 0..T-2)        [B, T-1, D], p_t ~ e_{t+1}
    loss = mean (p - e[:, 1:])^2 + sigreg_coeff * SIGReg(e)
SIGReg (engine.sigreg) is taken over the batch at each time step with one draw of directions, then
averaged over time steps, as the paper. States are read by nothing: the model sees pixels and actions.

The planner (engine.planning.cem.LatentWorldModel) sees the same interface as engine.ac_jepa.ACJEPA:
encode(clips) -> [B, T * tokens_per_frame, D] (one token per frame) and step_predictor(z, actions,
states) -> next embeddings at every position (the last `history` frames of z are read).
"""
from __future__ import annotations

import torch
from torch import nn

from engine.sigreg import SIGReg, epps_pulley_ref, random_directions


class LeWorldModel(nn.Module):
    def __init__(self, encoder: nn.Module, predictor: nn.Module, sigreg: SIGReg, sigreg_coeff: float,
                 action_scale: float = 1.0):
        super().__init__()
        self.encoder = encoder
        self.predictor = predictor
        self.target_encoder = encoder   # no target: the trainer's checkpoint keeps the same entries
        self.sigreg = sigreg
        self.sigreg_coeff = float(sigreg_coeff)
        # Actions are multiplied by this before the predictor sees them (as ACJEPA's action_scale).
        self.action_scale = float(action_scale)

    @property
    def tokens_per_frame(self) -> int:
        return 1

    def encode(self, frames_B3THW: torch.Tensor) -> torch.Tensor:
        """Each frame's embedding: [B, T, D]."""
        B, C, T, H, W = frames_B3THW.shape
        e = self.encoder(frames_B3THW.transpose(1, 2).reshape(B * T, C, H, W))
        return e.view(B, T, -1)

    def step_predictor(self, z_BTD, actions_BTA, states=None, extrinsics=None) -> torch.Tensor:
        """Next embeddings [B, T', D] from the last T' = min(T, history) frames and their actions."""
        n = min(z_BTD.shape[1], self.predictor.history)
        return self.predictor(z_BTD[:, -n:], actions_BTA[:, -n:] * self.action_scale)

    def sigreg_loss(self, e_BTD: torch.Tensor) -> torch.Tensor:
        A_DM = random_directions(e_BTD.shape[-1], self.sigreg.num_projections, e_BTD.device)
        x_TBM = e_BTD.float().transpose(0, 1) @ A_DM
        return torch.stack([epps_pulley_ref(x, self.sigreg.t_max, self.sigreg.knots).mean() for x in x_TBM]).mean()

    def forward(self, clips, traj: dict):
        if not isinstance(traj, dict) or "actions" not in traj:
            raise ValueError("LeWorldModel: each batch needs {'actions'} (trajectory data: engine.data.trajectories), "
                             "got " + type(traj).__name__)
        e = self.encode(clips)
        actions = traj["actions"].to(clips.device).float()
        p = self.step_predictor(e[:, :-1], actions)
        loss_pred = (p.float() - e[:, 1:].float()).square().mean()
        loss_sigreg = self.sigreg_loss(e)
        loss = loss_pred + self.sigreg_coeff * loss_sigreg
        return loss, {"loss_tf": loss_pred.detach(), "loss_sigreg": loss_sigreg.detach()}

    def update_target(self, momentum) -> None:
        """No target to move: the encoder is trained through the prediction loss itself."""


def build_lewm(cfg, encoder: nn.Module, predictor: nn.Module) -> LeWorldModel:
    """The LeWorldModel an `app: lewm` config asks for around these models (engine.builders.build_models)."""
    lc = cfg.loss
    return LeWorldModel(encoder, predictor, SIGReg(lc.sigreg_projections, lc.sigreg_knots, lc.sigreg_t_max),
                        lc.sigreg_coeff, cfg.model.action_scale)
