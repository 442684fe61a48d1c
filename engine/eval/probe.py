"""Frozen probes: how much a (frozen) encoder's features tell about a clip's label.

    result = probe_encoder(encoder, train_ds, val_ds, num_classes=6)
    result["linear"]["val_acc"], result["attentive"]["val_acc"]

    result = probe_pixels(train_ds, val_ds, patch_size=16, tubelet_size=2)   # the no-encoder baseline

The encoder runs once over every clip (center crop, no augmentation) and its token features are
cached; caching is what makes the probes cheap enough to run in CI (the encoder is frozen, so its
features never change). Two probes read them:
- "linear": a linear classifier on the features averaged over all tokens (I-JEPA's linear
  evaluation; train_linear_probe). Averaging drops where each token is, so it credits what the
  features themselves say: the probe that separates a trained encoder from a random one here.
- "attentive": the features standardised per channel (train-set mean and std), then a small attentive
  pooler (one learned query cross-attending to all tokens, as the reference's attentive probe) plus a
  linear classifier (train_probe). Its pooling can pick tokens by position, so on simple generated
  videos it reads motion from raw pixels as well as from any encoder.

probe_pixels gives the same probe the raw pixels of each patch (tubelet) as tokens, in the encoder's
token order, each with a one-hot code of its (time, row, column) appended (the probe's pooling is
blind to token order, so without it "where" would be lost): the accuracy an encoder has to beat to
have added anything. On the generated motion videos a random-init encoder scores close to it
(attentive: within a few points; linear, demo videos: 0.34 vs 0.25), so "trained vs random init" and
"trained vs pixels" tell nearly the same story.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm


class AttentiveProbe(nn.Module):
    def __init__(self, dim: int, num_classes: int, num_heads: int = 4):
        super().__init__()
        while dim % num_heads:
            num_heads -= 1
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm_in = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, feats_BND):
        kv = self.norm_in(feats_BND)
        pooled, _ = self.attn(self.query.expand(feats_BND.shape[0], -1, -1), kv, kv, need_weights=False)
        return self.head(self.norm_out(pooled[:, 0]))


@torch.no_grad()
def extract_features(encoder, dataset, batch_size: int = 16, num_workers: int = 0, seed: int = 0,
                     progress: bool = False):
    """Token features [M, N, D] (fp32) and labels [M] of every item of `dataset` (progress: a tqdm bar)."""
    encoder.eval()
    loader = torch.utils.data.DataLoader(_Indexed(dataset, seed), batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    feats, labels = [], []
    for clips, y in tqdm(loader, desc="  features", unit="batch", leave=False, disable=not progress):
        feats.append(encoder.forward_dense(encoder.embed(clips)).float())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels).long()


def pixel_tokens(clips_BCTHW: torch.Tensor, patch_size: int, tubelet_size: int = 1) -> torch.Tensor:
    """Clips [B, C, T, H, W] (or images [B, C, H, W]) -> raw patch pixels as tokens [B, N, C*t*p*p].

    Token order is the patch embedding's (time, row, column), each token's values in the order of a
    Conv3d kernel's (channel, t, y, x): the same tokens a patch embedding projects, unprojected.
    """
    if clips_BCTHW.dim() == 4:
        clips_BCTHW, tubelet_size = clips_BCTHW.unsqueeze(2), 1
    if clips_BCTHW.dim() != 5:
        raise ValueError(f"pixel_tokens: expected [B, C, T, H, W] or [B, C, H, W], got {tuple(clips_BCTHW.shape)}")
    B, C, T, H, W = clips_BCTHW.shape
    p, t = int(patch_size), int(tubelet_size)
    if T % t or H % p or W % p:
        raise ValueError(f"pixel_tokens: a clip of {T}x{H}x{W} does not split into {t}x{p}x{p} tubelets")
    x = clips_BCTHW.reshape(B, C, T // t, t, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, (T // t) * (H // p) * (W // p), C * t * p * p)


def grid_positions(grid_THW) -> torch.Tensor:
    """One-hot codes [T*H*W, T+H+W] of each token's time, row and column, in token order.

    One-hot rather than sin-cos: a few hundred tokens need no interpolation between positions, and a
    sin-cos channel of low frequency is nearly constant over so few positions, which the probe's
    per-channel standardisation would blow up into rounding noise.
    """
    t, h, w = torch.meshgrid(*(torch.arange(n) for n in grid_THW), indexing="ij")
    return torch.cat([F.one_hot(a.reshape(-1), n) for a, n in zip((t, h, w), grid_THW)], dim=1).float()


@torch.no_grad()
def extract_pixels(dataset, patch_size: int, tubelet_size: int = 1, batch_size: int = 16, num_workers: int = 0,
                   seed: int = 0, positions: bool = True, progress: bool = False):
    """Raw patch pixels as tokens [M, N, C*t*p*p (+ T'+H'+W' position channels)] (fp32) and labels [M]:
    extract_features without an encoder."""
    loader = torch.utils.data.DataLoader(_Indexed(dataset, seed), batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    feats, labels = [], []
    for clips, y in tqdm(loader, desc="  pixels", unit="batch", leave=False, disable=not progress):
        tok_BNK = pixel_tokens(clips.float(), patch_size, tubelet_size)
        if positions:
            t = tubelet_size if clips.dim() == 5 else 1
            T = clips.shape[2] // t if clips.dim() == 5 else 1
            pos_NP = grid_positions((T, clips.shape[-2] // patch_size, clips.shape[-1] // patch_size))
            tok_BNK = torch.cat([tok_BNK, pos_NP.expand(len(tok_BNK), -1, -1)], dim=-1)
        feats.append(tok_BNK)
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels).long()


class _Indexed(torch.utils.data.Dataset):
    """The engine's datasets take (index, seed) keys; a plain DataLoader passes ints."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        clip, label = self.dataset[(i, self.seed)]
        return clip, label


def _standardise(train, val, dims):
    """Both sets shifted and scaled per channel by the train set's mean and std over `dims`."""
    mu_D, sd_D = train.mean(dims), train.std(dims).clamp_min(1e-6)
    return (train - mu_D) / sd_D, (val - mu_D) / sd_D


def train_probe(train_feats, train_labels, val_feats, val_labels, num_classes: int, *, epochs: int = 60,
                batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.05, seed: int = 0,
                progress: bool = False) -> dict:
    # per-channel standardisation with train-set statistics (the frozen-feature BatchNorm of MAE's linear
    # probe): an encoder whose informative channels are small next to a few large ones is not penalised
    # for their scale, which the probe's per-token LayerNorm cannot undo
    train_feats, val_feats = _standardise(train_feats, val_feats, dims=(0, 1))
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = AttentiveProbe(train_feats.shape[-1], num_classes)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(train_feats) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    for _ in tqdm(range(epochs), desc="  attentive probe", unit="epoch", leave=False, disable=not progress):
        probe.train()
        perm = torch.randperm(len(train_feats), generator=g)
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(probe(train_feats[idx]), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    probe.eval()
    with torch.no_grad():
        train_acc = _accuracy(probe, train_feats, train_labels)
        val_acc = _accuracy(probe, val_feats, val_labels)
    return {"train_acc": train_acc, "val_acc": val_acc, "epochs": epochs}


def train_linear_probe(train_feats, train_labels, val_feats, val_labels, num_classes: int, *,
                       weight_decay: float = 1e-3, max_iter: int = 300) -> dict:
    """Linear classifier on the token features averaged over the clip (I-JEPA's linear evaluation).

    Averaging is blind to where a token sits, so a feature counts only if it says something about the
    clip wherever it appears: raw pixels (and a random-init encoder, a random mix of them) carry motion
    only in *where* the object is at each time, which an average throws away, while an encoder that
    learnt motion carries it in the token itself. Pooled features are standardised with train-set
    statistics; multinomial logistic regression with an L2 penalty, fitted full-batch by L-BFGS
    (deterministic: no seed, no learning rate).
    """
    x_tr, x_va = train_feats.float().mean(1), val_feats.float().mean(1)
    x_tr, x_va = _standardise(x_tr, x_va, dims=0)
    W_DK = torch.zeros(x_tr.shape[1], num_classes, requires_grad=True)
    b_K = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W_DK, b_K], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x_tr @ W_DK + b_K, train_labels) + weight_decay * W_DK.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        train_acc = float(((x_tr @ W_DK + b_K).argmax(-1) == train_labels).float().mean())
        val_acc = float(((x_va @ W_DK + b_K).argmax(-1) == val_labels).float().mean())
    return {"train_acc": train_acc, "val_acc": val_acc}


def _accuracy(probe, feats, labels, batch_size: int = 256) -> float:
    correct = 0
    for i in range(0, len(feats), batch_size):
        correct += int((probe(feats[i:i + batch_size]).argmax(-1) == labels[i:i + batch_size]).sum())
    return correct / max(1, len(feats))


PROBES = ("linear", "attentive")


def probe_encoder(encoder, train_ds, val_ds, num_classes: int | None = None, *, epochs: int = 60,
                  num_workers: int = 0, seed: int = 0, kinds=PROBES, progress: bool = False) -> dict:
    """{kind: {"train_acc", "val_acc", "chance", ...}} for each probe kind, on one feature extraction."""
    tr_x, tr_y = extract_features(encoder, train_ds, num_workers=num_workers, seed=seed, progress=progress)
    va_x, va_y = extract_features(encoder, val_ds, num_workers=num_workers, seed=seed, progress=progress)
    return _probe(tr_x, tr_y, va_x, va_y, num_classes, epochs=epochs, seed=seed, kinds=kinds, progress=progress)


def probe_pixels(train_ds, val_ds, patch_size: int, tubelet_size: int = 1, num_classes: int | None = None, *,
                 epochs: int = 60, num_workers: int = 0, seed: int = 0, kinds=PROBES, progress: bool = False) -> dict:
    """The same probes on raw patch pixels (no encoder): the baseline an encoder's features must beat."""
    tr_x, tr_y = extract_pixels(train_ds, patch_size, tubelet_size, num_workers=num_workers, seed=seed,
                                progress=progress)
    va_x, va_y = extract_pixels(val_ds, patch_size, tubelet_size, num_workers=num_workers, seed=seed,
                                progress=progress)
    return _probe(tr_x, tr_y, va_x, va_y, num_classes, epochs=epochs, seed=seed, kinds=kinds, progress=progress)


def _probe(tr_x, tr_y, va_x, va_y, num_classes, *, epochs: int, seed: int, kinds, progress: bool = False) -> dict:
    unknown = set(kinds) - set(PROBES)
    if unknown:
        raise ValueError(f"probe kinds: expected some of {PROBES}, got {sorted(unknown)}")
    if num_classes is None:
        num_classes = int(max(tr_y.max(), va_y.max())) + 1
    chance = float(torch.bincount(va_y, minlength=num_classes).max()) / len(va_y)
    out = {}
    for kind in kinds:
        if kind == "linear":
            out[kind] = train_linear_probe(tr_x, tr_y, va_x, va_y, num_classes)
        else:
            out[kind] = train_probe(tr_x, tr_y, va_x, va_y, num_classes, epochs=epochs, seed=seed, progress=progress)
        out[kind]["chance"] = chance
    return out
