"""3D rotary position embedding (V-JEPA 2): depth, height and width each rotate their own slice of
every head, `2 * ((head_dim // 3) // 2)` dims each; what is left of the head is not rotated.

    rope = Rope3D(head_dim, grid=(T', H', W'))
    cos, sin = rope.tables(ids)          # ids: token positions in the grid, any shape [...]
    q, k = kernels.rope_qk(q, k, cos, sin)   # q, k: [..., H, head_dim], ids' shape + [H, head_dim]
    q = rope.apply(q, cos, sin)          # one tensor, the plain-torch way (kernels.rope_ref)

Within a slice, pairs (2i, 2i+1) are rotated. `reference_layout=True` (the default) reproduces the
released V-JEPA 2 weights' frequency layout, where the cos/sin tables are the D/2 frequencies repeated
as [f_0..f_{n-1}, f_0..f_{n-1}] rather than interleaved, so pair i does not get one frequency; the
released checkpoints were trained that way, so loading them needs it. `reference_layout=False` gives
the textbook interleaved layout (each pair one frequency).
"""
from __future__ import annotations

import torch

import kernels


class Rope3D:
    def __init__(self, head_dim: int, grid: tuple[int, int, int], reference_layout: bool = True):
        self.head_dim = head_dim
        self.axis_dim = 2 * ((head_dim // 3) // 2)
        if self.axis_dim == 0:
            raise ValueError(f"Rope3D: head_dim {head_dim} is too small for 3 rotary axes")
        self.rotated = 3 * self.axis_dim
        self.grid = tuple(int(g) for g in grid)
        self.reference_layout = reference_layout
        n = self.axis_dim // 2
        self.omega = 1.0 / 10000 ** (torch.arange(n, dtype=torch.float32) / n)

    def axes(self, ids: torch.Tensor):
        """Grid ids -> (frame, row, column), as the token order (t, h, w)."""
        _, gh, gw = self.grid
        ids = ids.long()
        return ids // (gh * gw), (ids % (gh * gw)) // gw, ids % gw

    def tables(self, ids: torch.Tensor):
        """fp32 cos/sin of shape ids.shape + [1, 3*axis_dim] (the 1 broadcasts over heads)."""
        omega = self.omega.to(ids.device)
        parts = []
        for a in self.axes(ids):
            f = a.float()[..., None] * omega                        # [..., n]
            f = torch.cat([f, f], -1) if self.reference_layout else f.repeat_interleave(2, -1)
            parts.append(f)
        f = torch.cat(parts, -1).unsqueeze(-2)
        return f.cos(), f.sin()

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return kernels.rope_ref(x, cos, sin)
