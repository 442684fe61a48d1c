"""LeWorldModel's networks (Maes et al., arXiv 2603.19312): a frame encoder to one embedding per frame,
and a predictor of the next frame's embedding conditioned on actions by AdaLN-zero.

    enc = FrameEncoder(vit, proj_hidden=2048)              # vit: an image VisionTransformer (num_frames=1)
    e_BD = enc(frames_B3HW)                                 # CLS token -> BatchNorm MLP projector
    pred = ActionPredictor(dim=192, depth=6, num_heads=16, history=3, action_dim=3)
    p_BTD = pred(e_BTD, actions_BTA)                        # at frame t: the embedding of frame t+1

FrameEncoder: a learned CLS token before the patch tokens; the CLS output goes through the projector
Linear -> BatchNorm1d -> GELU -> Linear (the paper's; BatchNorm, not LayerNorm, so that the embeddings'
batch statistics, which SIGReg shapes, are not normalised away per sample).
ActionPredictor: each frame is one token (its embedding plus a learned position per history slot);
attention is causal over frames; every block is modulated by that frame's action embedding through
AdaLN-zero (shift, scale and gate of both sub-layers from SiLU -> Linear, zero-initialised: at init
every block is the identity and the predictor outputs its input's projection); a final LayerNorm and
the same BatchNorm MLP projector as the encoder's. The action embedder is Linear -> SiLU -> Linear.
Ours: attention heads split the width (the paper's heads are 64 wide each) and there is no dropout.
"""
from __future__ import annotations

import torch
from torch import nn

import kernels

PROJ_HIDDEN = 2048   # the paper's projector width


def projector(dim: int, hidden: int = PROJ_HIDDEN) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.GELU(), nn.Linear(hidden, dim))


def project(proj: nn.Module, x_BTD: torch.Tensor) -> torch.Tensor:
    """A BatchNorm projector over every frame of every sample: [B, T, D] -> [B, T, D]."""
    return proj(x_BTD.reshape(-1, x_BTD.shape[-1])).view(x_BTD.shape)


class FrameEncoder(nn.Module):
    def __init__(self, vit: nn.Module, proj_hidden: int = PROJ_HIDDEN):
        super().__init__()
        if vit.is_video:
            raise ValueError("FrameEncoder: needs an image VisionTransformer (num_frames=1), got a video one")
        self.vit = vit
        self.embed_dim = vit.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, vit.embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02, a=-2.0, b=2.0)
        self.projector = projector(vit.embed_dim, proj_hidden)

    def forward(self, frames_B3HW: torch.Tensor) -> torch.Tensor:
        x_BND = self.vit.embed(frames_B3HW)
        x_BND = torch.cat([self.cls_token.expand(x_BND.shape[0], -1, -1).to(x_BND.dtype), x_BND], dim=1)
        return self.projector(self.vit.forward_dense(x_BND)[:, 0])


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block whose norms are modulated by a condition c (AdaLN-zero)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"AdaLNBlock: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.modulation[-1].weight)
        nn.init.zeros_(self.modulation[-1].bias)

    def attention(self, x_BTD: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        q, k, v = self.qkv(x_BTD).view(B, T, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        o = kernels.sdpa(q, k, v, is_causal=True)   # frame t sees frames <= t
        return self.proj(o.transpose(1, 2).reshape(B, T, D))

    def forward(self, x_BTD: torch.Tensor, c_BTD: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(c_BTD).chunk(6, dim=-1)
        x_BTD = x_BTD + gate1 * self.attention(self.norm1(x_BTD) * (1 + scale1) + shift1)
        return x_BTD + gate2 * self.mlp(self.norm2(x_BTD) * (1 + scale2) + shift2)


class ActionPredictor(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, history: int, action_dim: int,
                 mlp_ratio: float = 4.0, proj_hidden: int = PROJ_HIDDEN):
        super().__init__()
        self.embed_dim, self.history, self.action_dim = dim, int(history), int(action_dim)
        self.tokens_per_frame = 1
        self.pos_embed = nn.Parameter(torch.zeros(1, self.history, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-2.0, b=2.0)
        self.action_encoder = nn.Sequential(nn.Linear(action_dim, 4 * dim), nn.SiLU(), nn.Linear(4 * dim, dim))
        self.blocks = nn.ModuleList([AdaLNBlock(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.projector = projector(dim, proj_hidden)

    def forward(self, e_BTD: torch.Tensor, actions_BTA: torch.Tensor) -> torch.Tensor:
        """Embeddings of frames [B, T, D] (T <= history) and the actions taken after each [B, T, A] ->
        the predicted embeddings of frames 1..T [B, T, D]."""
        B, T, D = e_BTD.shape
        if T > self.history or T < 1:
            raise ValueError(f"ActionPredictor: 1..{self.history} frames of history (data.dataset_fpcs - 1), got {T}")
        if actions_BTA.shape != (B, T, self.action_dim):
            raise ValueError(f"ActionPredictor: actions must be [{B}, {T}, {self.action_dim}], got "
                             f"{tuple(actions_BTA.shape)}")
        c_BTD = self.action_encoder(actions_BTA.to(e_BTD.dtype))
        x_BTD = e_BTD + self.pos_embed[:, :T].to(e_BTD.dtype)
        for blk in self.blocks:
            x_BTD = blk(x_BTD, c_BTD)
        return project(self.projector, self.norm(x_BTD))
