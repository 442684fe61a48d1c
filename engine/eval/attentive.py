"""The reference's frozen-evaluation classifier: an attentive pooler (learned query tokens cross-attending
to the frozen token features) and a linear head.

    clf = AttentiveClassifier(embed_dim=192, num_heads=3, depth=1, num_classes=6, layout="vjepa")
    logits_BK = clf(feats_BND)

Two layouts of `depth` blocks, as the two reference code bases build them (parameter names are theirs,
so their probe checkpoints load key for key):
- "vjepa" (V-JEPA, depth 1 in its configs): the cross-attention block first, then depth-1 self-attention
  blocks over the query tokens only. Its cross-attention keeps an output projection `xattn.proj` that its
  forward never applies; it is kept (and unused) so that checkpoints match.
- "vjepa2" (V-JEPA 2, depth 4 in its configs): depth-1 self-attention blocks over the frozen tokens
  first, then the cross-attention block; no `xattn.proj`.
Both use LayerNorm with torch's default eps (the reference passes nn.LayerNorm), qkv biases, and the
reference init: truncated normal (std 0.02) weights, zero biases, each block's output projections
divided by sqrt(2 * layer id) in the reference's numbering for its layout.
"""
from __future__ import annotations

import math

import torch
from torch import nn

import kernels
from engine.models.layers import MLP, Block, Tokens, init_reference_weights

LAYOUTS = ("vjepa", "vjepa2")
REFERENCE_LN_EPS = 1e-5  # nn.LayerNorm's default, which the reference pooler uses


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, with_unused_proj: bool):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"AttentiveClassifier: embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        if with_unused_proj:
            self.proj = nn.Linear(dim, dim)

    def forward(self, q_BnD, x_BND):
        B, n, D = q_BnD.shape
        H = self.num_heads
        q = self.q(q_BnD).view(B, n, H, D // H).transpose(1, 2)
        k, v = self.kv(x_BND).view(B, x_BND.shape[1], 2, H, D // H).permute(2, 0, 3, 1, 4)
        return kernels.sdpa(q, k, v).transpose(1, 2).reshape(B, n, D)


class CrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, with_unused_proj: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=REFERENCE_LN_EPS)
        self.xattn = CrossAttention(dim, num_heads, with_unused_proj)
        self.norm2 = nn.LayerNorm(dim, eps=REFERENCE_LN_EPS)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, q_BnD, x_BND):
        q_BnD = q_BnD + self.xattn(q_BnD, self.norm1(x_BND))
        return q_BnD + self.mlp(self.norm2(q_BnD))


class AttentivePooler(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, depth: int = 1, mlp_ratio: float = 4.0,
                 num_queries: int = 1, layout: str = "vjepa2", init_std: float = 0.02):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"AttentivePooler: layout must be one of {LAYOUTS}, got {layout!r}")
        if depth < 1:
            raise ValueError(f"AttentivePooler: depth must be >= 1, got {depth}")
        self.layout = layout
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, embed_dim))
        self.cross_attention_block = CrossAttentionBlock(embed_dim, num_heads, mlp_ratio, layout == "vjepa")
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_eps=REFERENCE_LN_EPS)
                                     for _ in range(depth - 1)]) if depth > 1 else None
        init_reference_weights(self, nn.ModuleList(), init_std)
        nn.init.trunc_normal_(self.query_tokens, std=init_std, a=-2.0, b=2.0)
        self._rescale()

    @torch.no_grad()
    def _rescale(self):
        def rescale(w, layer_id):
            w.div_(math.sqrt(2.0 * layer_id))

        blocks = list(self.blocks) if self.blocks is not None else []
        xblock = self.cross_attention_block
        if self.layout == "vjepa":     # the cross block is layer 1, the query blocks 2, 3, ...
            rescale(xblock.xattn.proj.weight, 1)
            rescale(xblock.mlp.fc2.weight, 1)
            for layer_id, blk in enumerate(blocks, start=2):
                rescale(blk.attn.proj.weight, layer_id)
                rescale(blk.mlp.fc2.weight, layer_id)
        else:                          # token blocks 1..n, then the cross block's MLP as the last of them
            for layer_id, blk in enumerate(blocks, start=1):
                rescale(blk.attn.proj.weight, layer_id)
                rescale(blk.mlp.fc2.weight, layer_id)
            rescale(xblock.mlp.fc2.weight, max(1, len(blocks)))

    def forward(self, x_BND):
        blocks = self.blocks if self.blocks is not None else []
        tok = Tokens(torch.arange(x_BND.shape[1], device=x_BND.device))
        if self.layout == "vjepa2":
            for blk in blocks:
                x_BND = blk(x_BND, tok)
        q_BnD = self.cross_attention_block(self.query_tokens.expand(len(x_BND), -1, -1), x_BND)
        if self.layout == "vjepa":
            qtok = Tokens(torch.arange(q_BnD.shape[1], device=x_BND.device))
            for blk in blocks:
                q_BnD = blk(q_BnD, qtok)
        return q_BnD


class AttentiveClassifier(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, num_classes: int, depth: int = 1, mlp_ratio: float = 4.0,
                 layout: str = "vjepa2", init_std: float = 0.02):
        super().__init__()
        self.pooler = AttentivePooler(embed_dim, num_heads, depth, mlp_ratio, 1, layout, init_std)
        self.linear = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=init_std, a=-2.0, b=2.0)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x_BND):
        return self.linear(self.pooler(x_BND)[:, 0])
