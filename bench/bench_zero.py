"""ZeRO stages 0-3 at 2 ranks: per-rank memory (params, EMA target, grads, optimizer state) and steps/s.

    python bench/bench_zero.py                    # tiny and small ViT configs -> bench/results/zero_cpu.csv
    python bench/bench_zero.py --models tiny --steps 3

Memory is counted tensor by tensor on rank 0 (engine.runtime.distributed.memory_report), between
backward and step of the second optimizer step, so gradients and Adam moments are all alive; each
storage is counted once. Process RSS is not used: on CPU it is dominated by the interpreter and
torch (~0.3-0.5 GB) and would hide the stage differences. steps/s is the mean over the timed steps
after one warm-up step (2 ranks sharing this machine's cores: a ratio between stages, not a speed).

The real V-JEPA models (engine.builders.build_jepa) are used when engine.models is importable; until
then a stand-in with a ViT block's parameter count per block (qkv 3d^2, proj d^2, MLP 8d^2) runs,
and the CSV says which (column `model_impl`).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: (config overrides on configs/tiny_cpu.yaml, stand-in (dim, depth, pred_dim, pred_depth))
MODELS = {
    "tiny": ([], (192, 6, 96, 4)),
    "vit_small": (["model.model_name=vit_small", "model.depth=12", "model.pred_embed_dim=192",
                   "model.pred_depth=6", "model.pred_num_heads=6"], (384, 12, 192, 6)),
}
COMMON = ["data.batch_size=2", "data.num_workers=0", "logging.tensorboard=false", "optimization.ipe=100",
          "meta.checkpoint_every=100000"]


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.n1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.n2, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        q, k, v = self.qkv(self.n1(x)).chunk(3, -1)
        x = x + self.proj(torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v)
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.n2(x))))


class _StandInEncoder(nn.Module):
    def __init__(self, d, depth, n_tok, d_in):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(n_tok, d))
        self.embed_proj = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList(_Block(d) for _ in range(depth))
        self.norm = nn.LayerNorm(d)

    def run(self, h):
        for b in self.blocks:
            h = b(h)
        return self.norm(h)


class StandInJEPA(nn.Module):
    """ViT-shaped JEPA on [B, N, patch_dim] token inputs; rectangular masks (ctx_BK, tgt_BK)."""

    def __init__(self, d, depth, pd, pdepth, n_tok=256, d_in=3 * 2 * 8 * 8):
        super().__init__()
        import copy
        self.encoder = _StandInEncoder(d, depth, n_tok, d_in)
        self.predictor = nn.Module()
        self.predictor.inp, self.predictor.out = nn.Linear(d, pd), nn.Linear(pd, d)
        self.predictor.mask_token = nn.Parameter(torch.zeros(pd))
        self.predictor.blocks = nn.ModuleList(_Block(pd) for _ in range(pdepth))
        self.target_encoder = copy.deepcopy(self.encoder)
        for p in self.target_encoder.parameters():
            p.requires_grad_(False)

    def forward(self, x_BNC, masks):
        ctx, tgt = masks
        D = self.encoder.pos.shape[1]
        with torch.no_grad():
            h = self.target_encoder.run(self.target_encoder.embed_proj(x_BNC) + self.target_encoder.pos)
            h = torch.nn.functional.layer_norm(torch.gather(h, 1, tgt[..., None].expand(-1, -1, D)), (D,))
        e = self.encoder.embed_proj(x_BNC) + self.encoder.pos
        z = self.encoder.run(torch.gather(e, 1, ctx[..., None].expand(-1, -1, D)))
        P = self.predictor
        q = torch.cat([P.inp(z), (P.mask_token + 0 * P.inp.bias).expand(tgt.shape[0], tgt.shape[1], -1)], 1)
        for b in P.blocks:
            q = b(q)
        return (P.out(q[:, z.shape[1]:]) - h).abs().mean(), {}


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n, shape):
        self.n, self.shape = n, shape

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        return torch.randn(self.shape, generator=torch.Generator().manual_seed(int(key[0]))), 0


class _RectMasks:
    def __init__(self, n_tok, k_ctx, k_tgt):
        self.n, self.kc, self.kt = n_tok, k_ctx, k_tgt

    def __call__(self, batch_size, rng):
        perm = torch.as_tensor(__import__("numpy").stack([rng.permutation(self.n) for _ in range(batch_size)]))
        return perm[:, :self.kc].sort(1).values, perm[:, self.kc:self.kc + self.kt].sort(1).values


def _parts(name):
    from engine.config import load_config
    overrides, (d, depth, pd, pdepth) = MODELS[name]
    try:
        from engine.builders import build_jepa, build_mask_sampler
        cfg = load_config("configs/tiny_cpu.yaml", COMMON + overrides)
        model, sampler = build_jepa(cfg), build_mask_sampler(cfg)
        shape = (3, cfg.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
        return cfg, model, _Tokens(64, shape), sampler, "engine.models"
    except ImportError:
        cfg = load_config("configs/tiny_cpu.yaml", COMMON)
        return cfg, StandInJEPA(d, depth, pd, pdepth), _Tokens(64, (256, 3 * 2 * 8 * 8)), _RectMasks(256, 64, 96), \
            "stand-in"


def _worker(rank, name, stages, steps, out):
    from engine.runtime.ds_trainer import DSTrainer
    rows = []
    for stage in stages:
        torch.manual_seed(0)
        cfg, model, ds, sampler, impl = _parts(name)
        tr = DSTrainer(cfg, f"{out}/{name}_s{stage}", ds_config=stage, model=model, dataset=ds, mask_sampler=sampler,
                       progress=False, track_memory=True)
        it = iter(tr.loader)
        times = []
        for i in range(steps + 2):
            batch = next(it)
            t0 = time.perf_counter()
            tr.train_step([(batch[0], batch[2])])
            if i >= 1:                     # step 0 is the warm-up
                times.append(time.perf_counter() - t0)
        def full(ps):  # ZeRO-3 leaves p.numel() == 0 outside a forward; ds_numel is the full size
            return sum(getattr(p, "ds_numel", p.numel()) for p in ps)
        P = full(p for m in (model.encoder, model.predictor) for p in m.parameters())
        m = tr.memory
        rows.append({"model": name, "model_impl": impl, "stage": stage, "ranks": tr.world,
                     "trainable_params": P, "target_params": full(model.target_encoder.parameters()),
                     **{f"{k}_mb": round(v / 2**20, 3) for k, v in m.items()},
                     "steps_per_s": round(len(times) / sum(times), 3)})
    return rows


def main(argv=None):
    from engine.runtime.distributed import run_local
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--stages", nargs="+", type=int, default=[0, 1, 2, 3])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "zero_cpu.csv"))
    a = ap.parse_args(argv)
    import tempfile
    tmp = tempfile.mkdtemp(prefix="bench_zero_")
    rows = []
    for name in a.models:
        rows += run_local(_worker, 2, args=(name, a.stages, a.steps, tmp), timeout_s=1200)[0]
    for name in a.models:
        base = next(r["total_mb"] for r in rows if r["model"] == name and r["stage"] == 0) if 0 in a.stages else None
        for r in rows:
            if r["model"] == name:
                r["total_vs_stage0"] = round(r["total_mb"] / base, 3) if base else ""
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = ["model", "stage", "params_mb", "target_mb", "grads_mb", "optim_mb", "total_mb", "total_vs_stage0",
            "steps_per_s"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
