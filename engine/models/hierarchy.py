"""The encoder of an upper H-JEPA level: windows of the level below's latents -> one coarser latent each.

    enc = WindowEncoder(tokens=16, in_dim=192, embed_dim=128, depth=2, num_heads=4, window=4, stride=4)
    z_BMNE = enc(h_BTND)       # M = (T - window) // stride + 1 windows; N tokens per step kept

Step j of the upper level pools steps j*stride .. j*stride + window - 1 of the level below: a mean over
time per token (a window of a steady scene and the scene itself pool alike, which is what lets a
single goal image stand for a goal window), a linear map to embed_dim, a learned embedding per token
position, then a small transformer over the N tokens of the window and a final LayerNorm.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.models.layers import Block, Tokens, init_reference_weights, run_blocks


def window_starts(steps: int, window: int, stride: int) -> range:
    """First step of each window that fits in `steps` steps."""
    return range(0, steps - window + 1, stride)


def pool_windows(h_BTND: torch.Tensor, window: int, stride: int) -> torch.Tensor:
    """Mean over each window's steps: [B, M, N, D]."""
    T = h_BTND.shape[1]
    if T < window:
        raise ValueError(f"pool_windows: {T} steps hold no window of {window}")
    return h_BTND.unfold(1, window, stride).mean(-1)     # unfold: [B, M, N, D, window]


class WindowEncoder(nn.Module):
    def __init__(self, tokens: int, in_dim: int, embed_dim: int = 128, depth: int = 2, num_heads: int = 4,
                 window: int = 4, stride: int = 4, mlp_ratio: float = 4.0, norm_eps: float = 1e-6,
                 init_std: float = 0.02):
        super().__init__()
        self.tokens, self.in_dim, self.embed_dim = int(tokens), int(in_dim), int(embed_dim)
        self.window, self.stride = int(window), int(stride)
        self.num_heads = num_heads
        self.embed = nn.Linear(in_dim, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, embed_dim))
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, norm_eps=norm_eps) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        init_reference_weights(self, self.blocks, init_std)
        nn.init.trunc_normal_(self.pos_embed, std=init_std, a=-2.0, b=2.0)

    def encode_pooled(self, p_BND: torch.Tensor) -> torch.Tensor:
        """Already pooled windows [B, N, in_dim] -> latents [B, N, embed_dim]."""
        B, N, D = p_BND.shape
        if N != self.tokens or D != self.in_dim:
            raise ValueError(f"WindowEncoder: expected [B, {self.tokens}, {self.in_dim}] per window, got {tuple(p_BND.shape)}")
        x = self.embed(p_BND) + self.pos_embed
        tok = Tokens(torch.arange(N, device=x.device))
        return self.norm(run_blocks(self.blocks, x, tok, False))

    def forward(self, h_BTND: torch.Tensor) -> torch.Tensor:
        """Steps of the level below [B, T, N, in_dim] -> one latent per window [B, M, N, embed_dim]."""
        B = h_BTND.shape[0]
        p = pool_windows(h_BTND, self.window, self.stride)
        M = p.shape[1]
        return self.encode_pooled(p.reshape(B * M, *p.shape[2:])).view(B, M, self.tokens, self.embed_dim)
