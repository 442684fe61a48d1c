"""SIGReg against the tiny config's VICReg-style terms on the demo's videos: the frozen encoder's linear and
attentive probe accuracies and the effective rank of its features, per seed.

    python bench/bench_sigreg.py --data DIR --steps 200 --seeds 0 1 2 [--variants vicreg sigreg sigreg_noema]
        [--csv bench/results/sigreg_vs_vicreg_cpu.csv]

DIR holds the demo videos (python -m engine.datagen generate --output DIR --videos 480 --val 240 --actors 3
--radius 6 10 --distractors 0 --background plain). Variants of configs/tiny_cpu.yaml:
    vicreg        as shipped: loss.std_coeff 1.0, loss.cov_coeff 0.04, EMA target
    sigreg        std/cov off, loss.sigreg_coeff (--coeff), EMA target
    sigreg_noema  the same with optimization.ema: none (the target is the encoder itself)
    reference     std/cov off, nothing else (the reference objective: collapses in this regime)
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {
    "vicreg": [],
    "sigreg": ["loss.std_coeff=0", "loss.cov_coeff=0", "loss.sigreg_coeff={coeff}"],
    "sigreg_noema": ["loss.std_coeff=0", "loss.cov_coeff=0", "loss.sigreg_coeff={coeff}", "optimization.ema=none"],
    "reference": ["loss.std_coeff=0", "loss.cov_coeff=0"],
}


def effective_rank(feats_MD: torch.Tensor) -> float:
    x = feats_MD - feats_MD.mean(0)
    p = torch.linalg.svdvals(x).pow(2)
    p = p / p.sum()
    return float(torch.exp(-(p * p.clamp_min(1e-12).log()).sum()))


def run(data: Path, variant: str, seed: int, steps: int, coeff: float, out: Path) -> dict:
    from engine.builders import build_dataset
    from engine.config import load_config
    from engine.eval.probe import probe_encoder
    from engine.runtime.trainer import Trainer
    over = [f"data.datasets=[{data / 'train.csv'}]", f"data.val_datasets=[{data / 'val.csv'}]", f"meta.seed={seed}",
            "logging.tensorboard=false", "meta.checkpoint_every=100000", "meta.eval_freq=0"]
    over += [o.format(coeff=coeff) for o in VARIANTS[variant]]
    cfg = load_config("configs/tiny_cpu.yaml", over)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, out / f"{variant}_s{seed}", progress=False)
    summary = trainer.fit(max_steps=steps)
    train_s = time.perf_counter() - t0
    enc = trainer.model.target_encoder.eval()
    val = build_dataset(cfg, train=False, index_files=cfg.data.val_datasets)
    with torch.no_grad():
        x = torch.stack([val[(i, 0)][0] for i in range(64)])
        feats = enc.forward_dense(enc.embed(x))
    rank = effective_rank(feats.reshape(-1, feats.shape[-1]))
    train_ds = build_dataset(cfg, train=False, index_files=cfg.data.datasets)
    probe = probe_encoder(enc, train_ds, val, seed=seed)
    return {"variant": variant, "seed": seed, "steps": steps, "sigreg_coeff": coeff if "sigreg" in variant else 0.0,
            "linear_acc": round(probe["linear"]["val_acc"], 4), "attentive_acc": round(probe["attentive"]["val_acc"], 4),
            "effective_rank": round(rank, 2), "final_loss": round(summary["final_loss"], 4),
            "train_seconds": round(train_s, 1), "threads": torch.get_num_threads()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=["vicreg", "sigreg", "sigreg_noema"], choices=sorted(VARIANTS))
    p.add_argument("--coeff", type=float, default=0.05)
    p.add_argument("--out", default="runs/bench_sigreg")
    p.add_argument("--csv", default="bench/results/sigreg_vs_vicreg_cpu.csv")
    args = p.parse_args(argv)
    path = Path(args.csv)
    for seed in args.seeds:
        for v in args.variants:
            row = run(Path(args.data), v, seed, args.steps, args.coeff, Path(args.out))
            print(row, flush=True)
            new = not path.exists()
            with open(path, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    w.writeheader()
                w.writerow(row)


if __name__ == "__main__":
    main()
