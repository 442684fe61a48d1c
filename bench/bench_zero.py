"""ZeRO stages 0-3 at 2 ranks: per-rank memory (params, EMA target, grads, optimizer state) and steps/s.

    python bench/bench_zero.py                    # tiny and small ViT configs -> bench/results/zero_cpu.csv
    python bench/bench_zero.py --models tiny --steps 3

Memory is counted tensor by tensor on rank 0 (engine.runtime.deepspeed_engine.memory_report), between
backward and step of the second optimizer step, so gradients and Adam moments are all alive; each
storage is counted once. Process RSS is not used: on CPU it is dominated by the interpreter and
torch (~0.3-0.5 GB) and would hide the stage differences. steps/s is the mean over the timed steps
after one warm-up step (2 ranks sharing this machine's cores: a ratio between stages, not a speed).

The models are the real V-JEPA (engine.builders.build_jepa: ViT encoder, predictor, fp32 EMA target)
on random clips of the config's shape with the config's multiblock masks.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from engine.core.io import atomic_write_csv  # noqa: E402

# name: config overrides on configs/tiny_cpu.yaml (the real V-JEPA of engine.builders.build_jepa)
MODELS = {
    "tiny": [],                                                       # the demo's tiny V-JEPA as configured
    "vit_small": ["model.model_name=vit_small", "model.depth=12", "model.pred_embed_dim=192",
                  "model.pred_depth=6", "model.pred_num_heads=6"],  # ViT-S/8 encoder, 256 tokens per clip
}
COMMON = ["data.batch_size=2", "data.num_workers=0", "logging.tensorboard=false", "optimization.ipe=100",
          "meta.checkpoint_every=100000"]


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n, shape):
        self.n, self.shape = n, shape

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        return torch.randn(self.shape, generator=torch.Generator().manual_seed(int(key[0]))), 0


def _parts(name):
    from engine.builders import build_jepa, build_mask_sampler
    from engine.config import load_config
    cfg = load_config("configs/tiny_cpu.yaml", COMMON + MODELS[name])
    shape = (3, cfg.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
    return cfg, build_jepa(cfg), _Tokens(64, shape), build_mask_sampler(cfg)


def _worker(rank, name, stages, steps, out):
    from engine.runtime.trainer import Trainer
    rows = []
    for stage in stages:
        torch.manual_seed(0)
        cfg, model, ds, sampler = _parts(name)
        tr = Trainer(cfg, f"{out}/{name}_s{stage}", deepspeed=stage, model=model, dataset=ds, mask_sampler=sampler,
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
        m = tr.backend.memory
        rows.append({"model": name, "model_impl": "engine.models", "stage": stage, "ranks": tr.world,
                     "trainable_params": P, "target_params": full(model.target_encoder.parameters()),
                     **{f"{k}_mb": round(v / 2**20, 3) for k, v in m.items()},
                     "steps_per_s": round(len(times) / sum(times), 3)})
    return rows


def main(argv=None):
    from engine.runtime.launch import run_local
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
    atomic_write_csv(a.out, rows)
    cols = ["model", "stage", "params_mb", "target_mb", "grads_mb", "optim_mb", "total_mb", "total_vs_stage0",
            "steps_per_s"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
