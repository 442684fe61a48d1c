"""Vision Transformer encoder for images (2D patches) and videos (3D tubelets), with sin-cos positions
(the reference layouts, `uniform_power` included) or 3D RoPE.

    enc = VisionTransformer(img_size=224, patch_size=16, num_frames=16, tubelet_size=2, **VIT_SIZES["vit_large"])
    x_BND = enc.embed(clips_B3THW)                 # patchify + positions
    h_BND = enc.forward_dense(x_BND)               # all tokens (the target encoder)
    z_TD  = enc.forward_packed(x_BND, packed)      # ragged visible-token sets (engine.packing.Packed)
    z     = enc(clips, masks=[idx_BK, ...])        # the reference call: [len(masks)*B, K, D]

Names of parameters and buffers are the reference's, so its checkpoints load key for key.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

import kernels
from engine.models.layers import Block, PatchEmbed, Tokens, init_reference_weights, run_blocks
from engine.models.pos_embed import sincos_2d, sincos_3d
from engine.models.rope import Rope3D
from engine.packing import Packed, pack_index_sets, pad_rows

# The reference presets. vit_gigantic's mlp_ratio is 4: the reference passes `mpl_ratio=64/13`,
# a misspelt keyword its constructor swallows, so released gigantic models have 4x MLPs.
VIT_SIZES = {
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4.0),
    "vit_giant": dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11),
    "vit_giant_xformers": dict(embed_dim=1408, depth=40, num_heads=22, mlp_ratio=48 / 11),
    "vit_gigantic": dict(embed_dim=1664, depth=48, num_heads=16, mlp_ratio=4.0),
    "vit_gigantic_xformers": dict(embed_dim=1664, depth=48, num_heads=26, mlp_ratio=4.0),
}
for _name in ("vit_large", "vit_huge", "vit_giant", "vit_giant_xformers"):
    VIT_SIZES[_name + "_rope"] = dict(VIT_SIZES[_name], use_rope=True)


class VisionTransformer(nn.Module):
    def __init__(self, img_size: int = 224, patch_size: int = 16, num_frames: int = 1, tubelet_size: int = 2,
                 in_chans: int = 3, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 norm_eps: float = 1e-6, init_std: float = 0.02, uniform_power: bool = False,
                 use_rope: bool = False, rope_reference_layout: bool = True, use_silu: bool = False,
                 wide_silu: bool = True, use_sdpa: bool = True, use_activation_checkpointing: bool = False):
        super().__init__()
        if isinstance(img_size, (tuple, list)):
            if len(set(img_size)) != 1:
                raise ValueError(f"VisionTransformer: only square inputs are supported, got img_size {img_size}")
            img_size = img_size[0]
        if img_size % patch_size:
            raise ValueError(f"VisionTransformer: patch_size {patch_size} does not divide img_size {img_size}")
        self.is_video = num_frames > 1
        if self.is_video and num_frames % tubelet_size:
            raise ValueError(f"VisionTransformer: tubelet_size {tubelet_size} does not divide num_frames {num_frames}")
        self.img_size, self.patch_size = img_size, patch_size
        self.num_frames, self.tubelet_size = num_frames, tubelet_size
        self.embed_dim = self.num_features = embed_dim
        self.num_heads = num_heads
        g = img_size // patch_size
        self.grid = (num_frames // tubelet_size, g, g) if self.is_video else (1, g, g)
        self.num_patches = self.grid[0] * g * g
        self.use_activation_checkpointing = use_activation_checkpointing

        self.patch_embed = PatchEmbed(patch_size, embed_dim, in_chans, tubelet_size if self.is_video else None)
        self.use_rope = use_rope
        self.rope = Rope3D(embed_dim // num_heads, self.grid, rope_reference_layout) if use_rope else None
        if use_rope:
            self.pos_embed = None
        else:
            # A frozen parameter (not a buffer) so that checkpoints carry it under the reference key.
            pe = sincos_3d(embed_dim, self.grid[0], g, uniform_power) if self.is_video else sincos_2d(embed_dim, g)
            self.pos_embed = nn.Parameter(pe.unsqueeze(0), requires_grad=False)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, qk_scale, norm_eps, use_silu, wide_silu, self.rope)
            for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        init_reference_weights(self, self.blocks, init_std)

    # -- tokens ------------------------------------------------------------------------------------
    def embed(self, x) -> torch.Tensor:
        """Pixels -> tokens with positions added: [B, N, D]."""
        x_BND = self.patch_embed(x)
        if self.pos_embed is not None:
            n = x_BND.shape[1]
            if n > self.num_patches:
                raise ValueError(f"VisionTransformer: input gives {n} tokens, the model holds {self.num_patches}")
            # Fewer frames than the model's clip length: the first n positions (the reference does the same).
            x_BND = x_BND + self.pos_embed[:, :n].to(x_BND.dtype)
        return x_BND

    def _tokens(self, ids, cu_seqlens=None, max_seqlen: int = 0) -> Tokens:
        rope = self.rope.tables(ids) if self.rope is not None else None
        return Tokens(ids, cu_seqlens, max_seqlen, rope)

    # -- passes --------------------------------------------------------------------------------------
    def forward_dense(self, x_BND) -> torch.Tensor:
        ids = torch.arange(x_BND.shape[1], device=x_BND.device)
        x_BND = run_blocks(self.blocks, x_BND, self._tokens(ids), self.use_activation_checkpointing)
        return self.norm(x_BND)

    def forward_packed(self, x_BND, packed: Packed) -> torch.Tensor:
        """Encode each packed sequence on its own tokens only: [T, D] in packed order."""
        if packed.tokens_per_sample != x_BND.shape[1]:
            raise ValueError(f"forward_packed: packed for {packed.tokens_per_sample} tokens per sample, "
                             f"x has {x_BND.shape[1]}")
        if packed.rows_unique():
            x_TD = kernels.gather_tokens(x_BND, packed.rows_T)
        else:   # a row feeds several sequences: a gather whose backward accumulates
            x_TD = x_BND.reshape(-1, x_BND.shape[-1]).index_select(0, packed.rows_T)
        T = x_TD.shape[0]
        x_TD, ids_T, cu, max_len = pad_rows(x_TD, packed.pos_T, packed.cu_seqlens, packed.max_seqlen)
        x_TD = run_blocks(self.blocks, x_TD, self._tokens(ids_T, cu, max_len), self.use_activation_checkpointing)
        return self.norm(x_TD[:T])

    def forward(self, x, masks=None):
        """The reference call: all tokens, or for each [B, K] index mask the kept tokens, the masks'
        outputs concatenated along the batch: [len(masks) * B, K, D]."""
        x_BND = self.embed(x)
        if masks is None:
            return self.forward_dense(x_BND)
        if not isinstance(masks, (list, tuple)):
            masks = [masks]
        B, N, _ = x_BND.shape
        packed = pack_index_sets([m[b] for m in masks for b in range(B)], list(range(B)) * len(masks), N)
        z_TD = self.forward_packed(x_BND, packed)
        return z_TD.view(len(masks) * B, -1, z_TD.shape[-1])
