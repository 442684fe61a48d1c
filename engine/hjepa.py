"""H-JEPA: a stack of action-conditioned JEPAs at coarser and coarser time steps, trained by the same loop.

    model = build_hjepa(cfg, frame_level)                  # frame_level: engine.ac_jepa.ACJEPA (level 1)
    loss, info = model(clips_B3THW, {"actions": a_BT1A, "states": s_BTS})   # info: loss_tf, loss_rollout
    model.level_losses                     # {"loss_level1": ..., "loss_level2": ..., "std_level2": ...} of that step
    loss.backward(); optimizer.step(); model.update_target(m)             # EMA of every trained upper level

Level 1 is V-JEPA 2-AC over frames (a frozen encoder, the action-conditioned predictor, teacher-forced +
rollout loss). Level k+1 encodes windows of level k's latents (engine.models.hierarchy.WindowEncoder: a
step every `stride` steps below, pooling `window` of them) and has its own action-conditioned predictor
at that step, conditioned on the summed actions of the `stride` steps below it spans (the sources'
actions are displacements, which add up) and the state at the window's last step. Its loss is level 1's
(teacher-forced + rollout over hierarchy.auto_steps of its steps, L1 to the power loss_exp) between the predictor fed with the online
encoder's latents and the EMA target encoder's latents of the next windows. Each level's targets are
the input of the level above (no gradient crosses levels).

The loop's contract: `encoder`, `predictor` and `target_encoder` are ModuleDicts holding every level
("level1", "level2", ...; level 1's frozen encoder is its own target), so the optimizer, the EMA pairs
and the checkpoints cover all levels under both backends. hierarchy.train: joint trains every level;
level_by_level trains hierarchy.level only, the others frozen (loaded from hierarchy.init_checkpoint).
"""
from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from engine.ac_jepa import ACJEPA
from engine.core.checkpoint import read_run_checkpoint
from engine.core.ema import TargetEMA
from engine.models.ac_predictor import ACPredictor
from engine.models.hierarchy import WindowEncoder, window_starts


def level_key(k: int) -> str:
    return f"level{k}"


def abstract_actions(actions_BTA, states_BTS, window: int, stride: int):
    """The actions and states of the level above: step j ends at step e_j = j * stride + window - 1 below;
    its action is the sum of the actions e_j .. e_j + stride - 1 below (the displacement to e_{j+1}),
    its state the state at e_j. actions [B, T-1, A], states [B, T, S] -> [B, M-1, A], [B, M, S]."""
    T = states_BTS.shape[1]
    ends = [s + window - 1 for s in window_starts(T, window, stride)]
    csum = F.pad(torch.cumsum(actions_BTA, 1), (0, 0, 1, 0))          # csum[:, i] = sum of actions < i
    e = torch.tensor(ends, device=actions_BTA.device)
    return csum[:, e[1:]] - csum[:, e[:-1]], states_BTS[:, e]


class HJEPA(nn.Module):
    def __init__(self, frame_level: ACJEPA, encoders: list[WindowEncoder], predictors: list[ACPredictor],
                 trained_levels, use_states: bool = True, residual: bool = False, freeze_encoders: bool = False,
                 upper_auto_steps: int | None = None):
        super().__init__()
        if residual:
            frame_level = ACJEPA(frame_level.encoder, frame_level.predictor, auto_steps=frame_level.auto_steps,
                                 loss_exp=frame_level.loss_exp, normalize_reps=frame_level.normalize_reps,
                                 action_scale=frame_level.action_scale, residual=True)
        L = 1 + len(encoders)
        if len(predictors) != len(encoders):
            raise ValueError(f"HJEPA: {len(encoders)} upper encoders but {len(predictors)} upper predictors")
        self.num_levels = L
        self.trained = sorted(set(int(k) for k in trained_levels))
        self.use_states = use_states
        self.encoder = nn.ModuleDict({level_key(1): frame_level.encoder})
        self.target_encoder = nn.ModuleDict({level_key(1): frame_level.encoder})
        self.predictor = nn.ModuleDict({level_key(1): frame_level.predictor})
        # One ACJEPA per level holds the predictor step and the loss; the upper ones wrap the level's EMA
        # target (frozen by ACJEPA, as it must be). A plain list: the modules are registered above.
        self.levels = [frame_level]
        for k, (enc, pred) in enumerate(zip(encoders, predictors), start=2):
            tgt = copy.deepcopy(enc).float()
            self.encoder[level_key(k)], self.target_encoder[level_key(k)] = enc, tgt
            self.predictor[level_key(k)] = pred
            # Summed actions grow with the steps they span: scale them back to level 1's units.
            scale = frame_level.action_scale / (enc.stride ** (k - 1))
            self.levels.append(ACJEPA(tgt, pred, auto_steps=upper_auto_steps or frame_level.auto_steps,
                                      loss_exp=frame_level.loss_exp,
                                      normalize_reps=frame_level.normalize_reps, action_scale=scale, residual=residual))
        for k in range(1, L + 1):
            if k not in self.trained:
                self.freeze_level(k)
            elif k > 1 and freeze_encoders:
                self.encoder[level_key(k)].requires_grad_(False)
        self._ema = None
        self.level_losses: dict = {}

    def freeze_level(self, k: int) -> None:
        for p in self.predictor[level_key(k)].parameters():
            p.requires_grad_(False)
        if k > 1:
            for p in self.encoder[level_key(k)].parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder[level_key(1)].eval()   # frozen, as in ACJEPA
        return self

    # -- latents ---------------------------------------------------------------------------------------
    def normalize(self, z):
        return F.layer_norm(z, (z.size(-1),)) if self.levels[0].normalize_reps else z

    @torch.no_grad()
    def encode_frames(self, frames_B3THW) -> torch.Tensor:
        """Level-1 latents, one step per frame: [B, T, N, D]."""
        h = self.levels[0].encode(frames_B3THW)
        B, T = frames_B3THW.shape[0], frames_B3THW.shape[2]
        return h.view(B, T, -1, h.shape[-1])

    def encode_level(self, k: int, h_BTND, target: bool = True) -> torch.Tensor:
        """Level-k latents [B, M, N, E] of level k-1's steps [B, T, N, D] (k >= 2): by the EMA target
        (the representation the level above and the planner read) or by the online encoder."""
        enc = (self.target_encoder if target else self.encoder)[level_key(k)]
        return self.normalize(enc(h_BTND))

    # -- the training step -----------------------------------------------------------------------------
    def level_loss(self, k: int, inputs_BND, targets_BND, actions, states):
        """(teacher-forced loss, rollout loss) of level k."""
        lv = self.levels[k - 1]
        z_tf, z_ar = lv.predictions(inputs_BND, actions, states)
        return lv.loss_fn(z_tf, targets_BND), lv.loss_fn(z_ar, targets_BND)

    def forward(self, clips, traj: dict):
        if not isinstance(traj, dict) or "actions" not in traj or "states" not in traj:
            raise ValueError("HJEPA: each batch needs {'actions', 'states'} (trajectory data: "
                             "engine.data.trajectories), got " + type(traj).__name__)
        dev = clips.device
        actions, states = traj["actions"].to(dev).float(), traj["states"].to(dev).float()
        if not self.use_states:
            states = torch.zeros_like(states)
        top = max(self.trained)   # levels above the highest trained one are not needed for the loss
        # clips: frames [B, 3, T, H, W], or level 1's latents [B, T, N, D] from a latent cache (engine.data.latents)
        h = clips if clips.dim() == 4 else self.encode_frames(clips)    # [B, T, N, D]
        B = h.shape[0]
        total, tf, ar, levels = 0.0, 0.0, 0.0, {}
        for k in range(1, top + 1):
            if k > 1:
                with torch.no_grad():
                    tgt = self.encode_level(k, h)                       # next level's steps, [B, M, N, E]
                actions, states = abstract_actions(actions, states, *self.window_of(k))
            train_k = k in self.trained
            with torch.set_grad_enabled(train_k and torch.is_grad_enabled()):
                if k == 1:
                    flat = h.reshape(B, -1, h.shape[-1])
                    l_tf, l_ar = self.level_loss(1, flat, flat, actions, states)
                else:
                    online = self.encode_level(k, h, target=False) if train_k else tgt
                    l_tf, l_ar = self.level_loss(k, online.reshape(B, -1, online.shape[-1]),
                                                 tgt.reshape(B, -1, tgt.shape[-1]), actions, states)
                    # the spread of the targets over the batch: near 0 means the level collapsed
                    levels[f"std_level{k}"] = float(tgt.float().std(dim=0).mean())
            if k > 1:
                h = tgt
            levels[f"loss_level{k}"] = float((l_tf + l_ar).detach())
            if train_k:
                total, tf, ar = total + l_tf + l_ar, tf + l_tf.detach(), ar + l_ar.detach()
        # The loop's metrics have fixed columns: the trained levels' sums go there, each level's own
        # losses stay readable on the model.
        self.level_losses = levels
        return total, {"loss_tf": tf, "loss_rollout": ar}

    def window_of(self, k: int) -> tuple[int, int]:
        enc = self.encoder[level_key(k)]
        return enc.window, enc.stride

    @torch.no_grad()
    def update_target(self, momentum) -> None:
        """EMA of the trained upper levels' encoders into their targets, in one pass (level 1's encoder is
        frozen; a frozen upper level's encoder holds its target's weights)."""
        keys = [level_key(k) for k in self.trained if k > 1]
        if not keys:
            return
        if self._ema is None:
            self._ema = TargetEMA(SimpleNamespace(encoder=nn.ModuleDict({k: self.encoder[k] for k in keys}),
                                                  target_encoder=nn.ModuleDict({k: self.target_encoder[k] for k in keys})))
        self._ema(momentum)


def trained_levels(cfg) -> list[int]:
    h = cfg.hierarchy
    return list(range(1, h.levels + 1)) if h.train == "joint" else [h.level]


def build_upper_levels(cfg, frame_level: ACJEPA):
    """(window encoders, predictors) of levels 2..hierarchy.levels, sized against the frame level."""
    h, md = cfg.hierarchy, cfg.model
    tokens = frame_level.tokens_per_frame
    pred1 = frame_level.predictor
    encoders, predictors = [], []
    in_dim = frame_level.encoder.embed_dim
    for _ in range(2, h.levels + 1):
        encoders.append(WindowEncoder(tokens, in_dim, h.embed_dim, h.depth, h.num_heads, h.window, h.stride))
        predictors.append(ACPredictor((pred1.grid_height, pred1.grid_width), h.embed_dim, h.pred_embed_dim,
                                      h.pred_depth, h.pred_num_heads, is_frame_causal=md.pred_is_frame_causal,
                                      rope_reference_layout=md.rope_reference_layout, use_silu=md.use_pred_silu,
                                      wide_silu=md.wide_silu, action_dim=md.action_dim, state_dim=md.state_dim))
        in_dim = h.embed_dim
    return encoders, predictors


def build_hjepa(cfg, frame_level: ACJEPA) -> HJEPA:
    """The stack an `app: hjepa` config asks for; with hierarchy.train: level_by_level the levels
    hierarchy.init_checkpoint holds are loaded, and the frozen upper levels' online encoders take their
    EMA targets' weights (so an EMA pass, whichever backend runs it, leaves a frozen level unchanged)."""
    encoders, predictors = build_upper_levels(cfg, frame_level)
    model = HJEPA(frame_level, encoders, predictors, trained_levels(cfg), cfg.hierarchy.use_states,
                  cfg.hierarchy.residual, cfg.hierarchy.freeze_encoders, cfg.hierarchy.auto_steps)
    if cfg.hierarchy.init_checkpoint:
        load_levels(model, cfg.hierarchy.init_checkpoint, below=cfg.hierarchy.level)
    for k in range(2, model.num_levels + 1):
        if k not in model.trained:
            model.encoder[level_key(k)].load_state_dict(model.target_encoder[level_key(k)].state_dict())
    return model


# -- checkpoints -------------------------------------------------------------------------------------
def level_state(state: dict, part: str, k: int) -> dict:
    prefix = level_key(k) + "."
    return {n[len(prefix):]: v for n, v in state[part].items() if n.startswith(prefix)}


def load_levels(model: HJEPA, checkpoint, below: int) -> None:
    """Load levels 1..below-1 (encoder, target, predictor) of an hjepa checkpoint into `model`, strictly."""
    state, path = read_run_checkpoint(checkpoint, "hjepa", "hierarchy.init_checkpoint",
                                      "python -m engine.train --config configs/hjepa_tiny_cpu.yaml")
    for k in range(1, below):
        for part in ("encoder", "target_encoder", "predictor"):
            sd = level_state(state, part, k)
            if not sd:
                raise ValueError(f"hierarchy.init_checkpoint: {path} holds no level {k} ({part}); it has "
                                 f"{sorted({n.split('.')[0] for n in state[part]})}")
            getattr(model, part)[level_key(k)].load_state_dict(sd)
