"""A stand-in with the real models' interface, so engine.jepa.JEPA itself (packing, kernels.gather_tokens,
the per-pair loss) runs under DeepSpeed before engine.models lands.

    model = JEPA(PackedEncoder(), PackedPredictor(), loss="l1")
    masks = PackedMaskSampler()(batch_size, rng)     # .ctx/.tgt per mask config, .pairs, .mask_index

Encoder: embed(x_BNC) -> [B, N, D]; forward_dense(h_BND) -> [B, N, D]; forward_packed(h_BND, packed) -> [T, D]
(tokens mix within their own sequence through a per-sequence mean, like block-diagonal attention).
Predictor: forward_packed(z_TD, ctx_pairs, tgt, mask_index_S) -> [T_tgt, D].
Masks have the same number of tokens in every sample, so the loss of a global batch is the mean of
the per-rank losses and a one-process run is an exact reference.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

import kernels

N, C, D, M = 16, 12, 24, 2   # tokens, input channels, width, mask configs


def _seq_mean(x_TD, packed):
    sid = packed.seq_id_T()
    sums = torch.zeros(packed.num_seqs, x_TD.shape[1], dtype=x_TD.dtype, device=x_TD.device).index_add_(0, sid, x_TD)
    return (sums / packed.seqlens_S.clamp_min(1)[:, None].to(x_TD.dtype))[sid]


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm, self.fc, self.mix = nn.LayerNorm(d), nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x, ctx_mean):
        return x + torch.tanh(self.fc(self.norm(x))) + self.mix(ctx_mean)


class PackedEncoder(nn.Module):
    num_patches = N

    def __init__(self, depth=2):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, N, D) * 0.1)   # a container-level parameter, as in ViTs
        self.patch = nn.Linear(C, D)
        self.blocks = nn.ModuleList(_Block(D) for _ in range(depth))
        self.norm = nn.LayerNorm(D)

    def embed(self, x_BNC):
        return self.patch(x_BNC) + self.pos_embed

    def forward_dense(self, h_BND):
        for b in self.blocks:
            h_BND = b(h_BND, h_BND.mean(1, keepdim=True).expand_as(h_BND))
        return self.norm(h_BND)

    def forward_packed(self, h_BND, packed):
        x_TD = kernels.gather_tokens(h_BND, packed.rows_T)
        for b in self.blocks:
            x_TD = b(x_TD, _seq_mean(x_TD, packed))
        return self.norm(x_TD)


class PackedPredictor(nn.Module):
    def __init__(self):
        super().__init__()
        self.mask_tokens = nn.Parameter(torch.randn(M, D) * 0.1)
        self.pos = nn.Parameter(torch.randn(N, D) * 0.1)
        self.inp, self.out = nn.Linear(D, D), nn.Linear(D, D)

    def forward_packed(self, z_TD, ctx_pairs, tgt, mask_index_S):
        sid_c, sid_t = ctx_pairs.seq_id_T(), tgt.seq_id_T()
        sums = torch.zeros(ctx_pairs.num_seqs, D, dtype=z_TD.dtype).index_add_(0, sid_c, self.inp(z_TD))
        ctx_S = sums / ctx_pairs.seqlens_S.clamp_min(1)[:, None].to(z_TD.dtype)
        q_TD = self.mask_tokens[mask_index_S[sid_t]] + self.pos[tgt.pos_T] + ctx_S[sid_t]
        return self.out(torch.tanh(q_TD))


class PackedMaskSampler:
    """M (context, target) pairs; 6 context and 4 target tokens per sample, disjoint."""

    def __call__(self, batch_size, rng):
        ctx, tgt = [], []
        for _ in range(M):
            perms = [torch.as_tensor(rng.permutation(N)) for _ in range(batch_size)]
            ctx.append([p[:6].sort().values for p in perms])
            tgt.append([p[6:10].sort().values for p in perms])
        return SimpleNamespace(ctx=ctx, tgt=tgt, pairs=[(i, i) for i in range(M)], mask_index=list(range(M)))


def cat_masks(ms):
    return SimpleNamespace(ctx=[sum((m.ctx[i] for m in ms), []) for i in range(M)],
                           tgt=[sum((m.tgt[i] for m in ms), []) for i in range(M)],
                           pairs=ms[0].pairs, mask_index=ms[0].mask_index)


class PackedDataset(torch.utils.data.Dataset):
    def __init__(self, n=64):
        self.x = torch.randn(n, N, C, generator=torch.Generator().manual_seed(7))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, key):
        return self.x[key[0]], 0


def build():
    from engine.jepa import JEPA
    return JEPA(PackedEncoder(), PackedPredictor(), loss="l1")


_ = np  # numpy rngs come from the loader
