"""Masked-token gather and scatter.

    y_BKD = kernels.gather_tokens(x_BND, idx_BK)        # padded form
    y_TD  = kernels.gather_tokens(x_BND, rows_T)        # packed form: flat row ids into B*N
    x_BND = kernels.scatter_tokens(y_TD, rows_T, B, N)  # inverse: rows placed into zeros

Indices are unique per sample (mask generators guarantee it), so the backward of the gather is a
scatter without atomics.
"""
from __future__ import annotations

import torch


def _check_x(x_BND):
    if x_BND.dim() != 3:
        raise ValueError(f"gather_tokens: x must be [B, N, D], got shape {tuple(x_BND.shape)}")


def gather_tokens_ref(x_BND: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Plain-torch definition.

    Equivalent pytorch code::

        if idx.dim() == 2:   # idx_BK -> [B, K, D]
            return torch.gather(x_BND, 1, idx[..., None].expand(-1, -1, D))
        return x_BND.reshape(B * N, D)[idx]   # rows_T -> [T, D]
    """
    _check_x(x_BND)
    B, N, D = x_BND.shape
    if idx.dim() == 2:
        if idx.shape[0] != B:
            raise ValueError(f"gather_tokens: idx_BK has batch {idx.shape[0]}, x has {B}")
        return torch.gather(x_BND, 1, idx[..., None].expand(-1, -1, D))
    if idx.dim() != 1:
        raise ValueError(f"gather_tokens: idx must be [B, K] or flat rows [T], got shape {tuple(idx.shape)}")
    return x_BND.reshape(B * N, D)[idx]


def scatter_tokens_ref(y_TD: torch.Tensor, rows_T: torch.Tensor, B: int, N: int) -> torch.Tensor:
    """Plain-torch definition: place packed rows into a zero [B, N, D] buffer.

    Equivalent pytorch code::

        out = y_TD.new_zeros(B * N, D); out[rows_T] = y_TD; return out.view(B, N, D)
    """
    out = y_TD.new_zeros(B * N, y_TD.shape[-1])
    out = out.index_copy(0, rows_T, y_TD)
    return out.view(B, N, -1)


def gather_tokens(x_BND, idx, cu_seqlens=None):
    return gather_tokens_ref(x_BND, idx)


def scatter_tokens(y_TD, rows_T, B, N):
    return scatter_tokens_ref(y_TD, rows_T, B, N)
