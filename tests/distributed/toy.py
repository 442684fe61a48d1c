"""A tiny stand-in JEPA for the distributed tests (same interface as engine.jepa.JEPA, 1/1000 the cost).

    model = ToyJEPA()                        # .encoder, .predictor, .target_encoder (fp32, frozen)
    loss, info = model(x_BNC, masks)         # masks: ToyMasks (ctx_BK, tgt_BK): rectangular index sets
    dataset, sampler = ToyDataset(64), ToyMaskSampler(fixed=False)

Like the real models, the encoder's step calls embed()/encode() rather than forward(), and holds
parameters directly on container modules (pos, mask_token): the ZeRO-3 external-parameter path.
Rectangular masks make the loss a mean of per-sample means, so the loss of a global batch equals
the mean of its per-rank losses: a one-process run on the global batch is an exact reference.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

N_TOK, D_IN, D = 8, 16, 32


class ToyEncoder(nn.Module):
    def __init__(self, depth=2):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(N_TOK, D) * 0.1)
        self.proj = nn.Linear(D_IN, D)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(D), nn.Linear(D, D), nn.GELU()) for _ in range(depth))

    def embed(self, x_BNC):
        return self.proj(x_BNC) + self.pos

    def encode(self, h_BND):
        for blk in self.blocks:
            h_BND = h_BND + blk(h_BND)
        return h_BND


class ToyPredictor(nn.Module):
    def __init__(self):
        super().__init__()
        self.mask_token = nn.Parameter(torch.randn(D) * 0.1)
        self.pos = nn.Parameter(torch.randn(N_TOK, D) * 0.1)
        self.mlp = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, D))

    def predict(self, z_BKD, tgt_BK):
        q_BMD = self.mask_token + self.pos[tgt_BK] + z_BKD.mean(1, keepdim=True)
        return self.mlp(q_BMD)


@dataclass
class ToyMasks:
    ctx_BK: torch.Tensor
    tgt_BK: torch.Tensor


def cat_masks(ms):
    return ToyMasks(torch.cat([m.ctx_BK for m in ms]), torch.cat([m.tgt_BK for m in ms]))


class ToyJEPA(nn.Module):
    def __init__(self, depth=2):
        super().__init__()
        self.encoder = ToyEncoder(depth)
        self.predictor = ToyPredictor()
        self.target_encoder = copy.deepcopy(self.encoder).float()
        for p in self.target_encoder.parameters():
            p.requires_grad_(False)

    def forward(self, x_BNC, masks: ToyMasks):
        D_ = D
        with torch.no_grad():
            h_BND = self.target_encoder.encode(self.target_encoder.embed(x_BNC))
            h_BND = F.layer_norm(h_BND, (D_,))
            h_BMD = torch.gather(h_BND, 1, masks.tgt_BK[..., None].expand(-1, -1, D_))
        e_BND = self.encoder.embed(x_BNC)
        z_BKD = self.encoder.encode(torch.gather(e_BND, 1, masks.ctx_BK[..., None].expand(-1, -1, D_)))
        p_BMD = self.predictor.predict(z_BKD, masks.tgt_BK)
        loss = (p_BMD.float() - h_BMD).abs().mean()
        return loss, {"ctx_tokens": int(masks.ctx_BK.numel()), "tgt_tokens": int(masks.tgt_BK.numel())}

    @torch.no_grad()
    def update_target(self, momentum):
        for t, s in zip(self.target_encoder.parameters(), self.encoder.parameters()):
            t.mul_(momentum).add_(s, alpha=1 - momentum)


class ToyDataset(torch.utils.data.Dataset):
    """Sample i: a fixed random [N_TOK, D_IN] tensor (a function of i only)."""

    def __init__(self, n=64):
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, N_TOK, D_IN, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, key):
        index, _seed = key
        return self.x[index], 0


class ToyMaskSampler:
    """(batch_size, rng) -> ToyMasks with 5 context and 3 target tokens per sample (disjoint)."""

    def __init__(self, fixed=False):
        self.fixed = fixed

    def __call__(self, batch_size, rng):
        if self.fixed:
            perm = np.tile(np.arange(N_TOK), (batch_size, 1))
        else:
            perm = np.stack([rng.permutation(N_TOK) for _ in range(batch_size)])
        perm = torch.as_tensor(perm, dtype=torch.long)
        return ToyMasks(perm[:, :5].sort(1).values, perm[:, 5:].sort(1).values)


TINY_OVERRIDES = ["data.batch_size=4", "optimization.ipe=8", "optimization.epochs=2", "optimization.warmup=1",
                  "logging.tensorboard=false", "data.num_workers=0", "meta.checkpoint_every=1000"]
