"""Fixed sin-cos position embeddings in the reference layouts (float64 math, returned as float32).

    pe_ND = sincos_3d(D, grid_depth=T', grid_size=H')   # video: [T'*H'*W', D], token order (t, h, w)
    pe_ND = sincos_2d(D, grid_size=H')                  # images: [H'*W', D], token order (h, w)

Video layout: `[depth | height | width]` blocks of D/2, D/4, D/4 dims, or three equal blocks of
ceil(D/6)*2 dims with `uniform_power` (then cut to D). Each block is [sin | cos] of the position times
1/10000^(i/(d/2)).
"""
from __future__ import annotations

import math

import torch


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[M, dim] = [sin(pos * omega) | cos(pos * omega)], omega_i = 1 / 10000^(i / (dim/2))."""
    if dim % 2:
        raise ValueError(f"sincos_1d: dim must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_3d(dim: int, grid_depth: int, grid_size: int, uniform_power: bool = False) -> torch.Tensor:
    d, h, w = torch.meshgrid(torch.arange(grid_depth), torch.arange(grid_size), torch.arange(grid_size),
                             indexing="ij")
    if uniform_power:
        dd = hd = wd = int(math.ceil(dim / 6) * 2)
    else:
        dd, hd, wd = dim // 2, dim // 4, dim // 4
    if dd % 2 or hd % 2:
        raise ValueError(f"sincos_3d: embed_dim {dim} splits into odd blocks ({dd}, {hd}, {wd}); sin-cos "
                         f"positions need embed_dim % 8 == 0 (or uniform_power)")
    pe = torch.cat([sincos_1d(dd, d), sincos_1d(hd, h), sincos_1d(wd, w)], dim=1)
    return pe[:, :dim].float()


def sincos_2d(dim: int, grid_size: int) -> torch.Tensor:
    h, w = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, h), sincos_1d(dim // 2, w)], dim=1).float()
