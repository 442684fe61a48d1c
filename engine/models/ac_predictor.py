"""The V-JEPA 2-AC action-conditioned predictor: given the latents of frames 0..t and the actions and
states at those frames, predict the latents of frames 1..t+1.

    pred = ACPredictor(grid=(H', W'), embed_dim=D, predictor_embed_dim=P, depth=24, num_heads=16)
    p_BND = pred(z_BND, actions_BTA, states_BTS)            # the reference call (N = T * H' * W')
    p_BND = pred(z_BND, actions_BTA, states_BTS, extrinsics_BTE)   # use_extrinsics=True

Per frame t the sequence holds [action_t, state_t, (extrinsics_t,) patch tokens of frame t]: the
conditioning tokens are linear embeddings, interleaved before that frame's patches. Attention is
frame-causal (`is_frame_causal`): every token of frame t sees the tokens of frames <= t only, run
packed (one sequence per sample) through `kernels.block_attention(..., block_causal=frame ids)`, so
no dense mask exists. 3D RoPE: patch tokens rotate by (frame, row, column); conditioning tokens by
their frame only, which is the same rotation as a patch at row 0, column 0 (angle 0 leaves a pair
unrotated), so one RoPE table serves both.

With action_dim 0 the predictor is unconditioned: no conditioning tokens (nor their encoders), a frame
is its patches alone, and forward takes no actions or states; it learns the videos' own dynamics.

Parameter names are the reference's (predictor_embed, action_encoder, state_encoder,
extrinsics_encoder, predictor_blocks, predictor_norm, predictor_proj), so its checkpoints load
strictly. The extrinsics encoder exists whether or not it is used, as there.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from engine.models.layers import PredictorTrunk, Tokens
from engine.models.rope import Rope3D


class ACPredictor(PredictorTrunk):
    def __init__(self, grid: tuple[int, int], embed_dim: int, predictor_embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, mlp_ratio: float = 4.0, qkv_bias: bool = True, norm_eps: float = 1e-6,
                 init_std: float = 0.02, is_frame_causal: bool = True, use_rope: bool = True,
                 rope_reference_layout: bool = True, use_silu: bool = False, wide_silu: bool = True,
                 action_dim: int = 7, state_dim: Optional[int] = None, use_extrinsics: bool = False,
                 use_activation_checkpointing: bool = False):
        super().__init__()
        if not use_rope:
            # The reference's AC predictor has no other position code: without RoPE its tokens carry
            # no position at all, which no released model uses.
            raise ValueError("ACPredictor: use_rope=False is not supported (the AC predictor's only positions are RoPE)")
        self.grid_height, self.grid_width = int(grid[0]), int(grid[1])
        self.tokens_per_frame = self.grid_height * self.grid_width
        self.embed_dim = embed_dim
        self.is_frame_causal = is_frame_causal
        self.use_extrinsics = use_extrinsics
        self.action_dim = action_dim
        self.state_dim = action_dim if state_dim is None else state_dim
        if action_dim == 0 and (self.state_dim or use_extrinsics):
            raise ValueError(f"ACPredictor: action_dim 0 (unconditioned) takes no states or extrinsics, got "
                             f"state_dim {state_dim}, use_extrinsics {use_extrinsics}")
        self.cond_tokens = 0 if action_dim == 0 else 3 if use_extrinsics else 2
        P = predictor_embed_dim
        self.predictor_embed = nn.Linear(embed_dim, P, bias=True)
        if action_dim:
            self.action_encoder = nn.Linear(action_dim, P, bias=True)
            self.state_encoder = nn.Linear(self.state_dim, P, bias=True)
            self.extrinsics_encoder = nn.Linear(action_dim - 1, P, bias=True)
        # The frame axis is unbounded (RoPE): the grid's depth only matters for splitting ids.
        self.rope = Rope3D(P // num_heads, (1 << 20, self.grid_height, self.grid_width), rope_reference_layout)
        self.add_trunk(P, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, norm_eps, use_silu, wide_silu, self.rope,
                       init_std, use_activation_checkpointing)

    def _layout(self, B: int, T: int, device):
        """Grid ids (for RoPE), frame ids and cu_seqlens of B samples of T frames, token order
        [cond tokens | H'*W' patches] per frame."""
        K, HW = self.cond_tokens, self.tokens_per_frame
        t_F = torch.arange(T, device=device)
        within = torch.cat([torch.zeros(K, dtype=torch.long, device=device), torch.arange(HW, device=device)])
        ids_L = (t_F[:, None] * HW + within[None, :]).reshape(-1)          # [T * (K + HW)]
        frames_L = t_F.repeat_interleave(K + HW)
        L = ids_L.numel()
        cu = torch.arange(0, (B + 1) * L, L, dtype=torch.int32, device=device)
        return ids_L.repeat(B), frames_L.repeat(B), cu, L

    def forward(self, x, actions=None, states=None, extrinsics=None):
        """x: context latents [B, T*H'*W', D] (frame-major); actions [B, T, action_dim]; states
        [B, T, state_dim]; extrinsics [B, T, action_dim - 1] when use_extrinsics (none of the three when
        action_dim is 0). Returns [B, T*H'*W', D]: at frame t's positions, the prediction of frame t+1."""
        B, N, _ = x.shape
        HW, K = self.tokens_per_frame, self.cond_tokens
        if N % HW:
            raise ValueError(f"ACPredictor: {N} tokens is not a whole number of frames of {HW} tokens")
        T = N // HW
        z = self.predictor_embed(x).view(B, T, HW, -1)
        if self.action_dim:
            seq = torch.cat([self._conditioning(B, T, actions, states, extrinsics).to(z.dtype), z], dim=2)
        elif actions is not None or states is not None or extrinsics is not None:
            raise ValueError("ACPredictor: action_dim 0 (unconditioned) takes no actions, states or extrinsics")
        else:
            seq = z                                                         # [B, T, K + HW, P], K = 0
        x_TD = seq.reshape(B * T * (K + HW), -1)
        ids, frames, cu, L = self._layout(B, T, x.device)
        tok = Tokens(ids, cu, L, self.rope.tables(ids), frames if self.is_frame_causal else None)
        x_TD = self.run_trunk(x_TD, tok)
        return self.project(x_TD.view(B, T, K + HW, -1)[:, :, K:].reshape(B, T * HW, -1))

    def _conditioning(self, B: int, T: int, actions, states, extrinsics):
        """The K conditioning tokens of each frame [B, T, K, P], their inputs' shapes checked."""
        for name, v, dim in (("actions", actions, self.action_dim), ("states", states, self.state_dim)):
            if v is None or v.dim() != 3 or v.shape[0] != B or v.shape[1] != T or v.shape[2] != dim:
                got = None if v is None else tuple(v.shape)
                raise ValueError(f"ACPredictor: {name} must be [{B}, {T}, {dim}] for {T} frames, got {got}")
        if self.use_extrinsics and (extrinsics is None or tuple(extrinsics.shape) != (B, T, self.action_dim - 1)):
            got = None if extrinsics is None else tuple(extrinsics.shape)
            raise ValueError(f"ACPredictor: use_extrinsics needs extrinsics [{B}, {T}, {self.action_dim - 1}], got {got}")
        cond = [self.action_encoder(actions), self.state_encoder(states)]
        if self.use_extrinsics:
            cond.append(self.extrinsics_encoder(extrinsics))
        return torch.stack(cond, 2)


def build_ac_predictor(cfg, encoder) -> ACPredictor:
    """The AC predictor a `vjepa_droid` / `lewm`-style config asks for, sized against its encoder."""
    md = cfg.model
    g = cfg.data.crop_size // cfg.patch_size
    # RoPE is the predictor's only position code, whatever the encoder's (model.use_rope picks the encoder's:
    # a sin-cos encoder's latents carry their positions in, the predictor rotates by frame, row and column).
    return ACPredictor((g, g), encoder.embed_dim, md.pred_embed_dim, md.pred_depth,
                       md.pred_num_heads or encoder.num_heads, is_frame_causal=md.pred_is_frame_causal,
                       use_rope=True, rope_reference_layout=md.rope_reference_layout,
                       use_silu=md.use_pred_silu, wide_silu=md.wide_silu, action_dim=md.action_dim,
                       state_dim=md.state_dim, use_extrinsics=md.use_extrinsics,
                       use_activation_checkpointing=md.use_activation_checkpointing)
