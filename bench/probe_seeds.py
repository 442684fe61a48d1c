"""Trained vs random-init encoder, ragged vs compat masks, over seeds: the frozen probes of the demo's tiny V-JEPA.

    python bench/probe_seeds.py --data DIR --steps 240 --seeds 0 1 2 3 4 --modes ragged compat \
        [--out /tmp/probe_seeds] [--csv bench/results/ragged_vs_compat_cpu.csv]
    python bench/probe_seeds.py --summary bench/results/ragged_vs_compat_cpu.csv   # mean, std, standard errors

For each seed s and mask mode m it trains configs/tiny_cpu.yaml (`python -m engine.train --set
meta.seed=s --set meta.mask_mode=m`, a learning-rate schedule of exactly --steps steps), then probes the
frozen target encoder on the held-out clips with the eval commands of configs/eval/tiny_probe.yaml: the
reference's attentive probe (best of its grid), the linear probe and kNN, plus the effective rank of the
pooled validation features and the mean loss of the last 20 steps. The random-init encoder of seed s
(the same for every mode) is probed once per seed, as mode "random_init". A row is appended to the CSV
as soon as it is measured, and (seed, mode) pairs already in it are skipped, so the command resumes.

DIR holds the demo videos (python -m engine.datagen generate --output DIR --videos 480 --val 240 --frames 16
--actors 3 --radius 6 10 --distractors 0 --background plain).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FIELDS = ["seed", "mode", "steps", "attentive_acc", "attentive_setting", "linear_acc", "knn_acc", "effective_rank",
          "loss_last_20", "train_seconds", "eval_seconds"]


def train(data: Path, seed: int, mode: str, steps: int, run: Path, extra: list[str]) -> float:
    """Trains the tiny config for `steps` steps into `run` (its lr / wd / EMA schedules end at `steps`)."""
    if steps % 8:
        raise SystemExit(f"--steps {steps}: a multiple of 8 (the tiny config's 8 schedule epochs)")
    over = [f"data.datasets=[{data / 'train.csv'}]", f"data.val_datasets=[{data / 'val.csv'}]", f"meta.seed={seed}",
            f"meta.mask_mode={mode}", f"optimization.ipe={steps // 8}", f"meta.checkpoint_every={steps}",
            "meta.eval_freq=0", "logging.tensorboard=false", *extra]
    cmd = [sys.executable, "-m", "engine.train", "--config", "configs/tiny_cpu.yaml", "--output", str(run),
           "--max-steps", str(steps), "--no-progress", "--overwrite"]
    for o in over:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def last_losses(run: Path, n: int = 20) -> float:
    with open(run / "metrics.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")]
    return sum(losses[-n:]) / len(losses[-n:])


def probe(data: Path, seed: int, checkpoint: Path | None, out: Path, extra: list[str]) -> dict:
    """Attentive, linear and kNN accuracies and the effective rank of one encoder (None: random init)."""
    from engine.eval.__main__ import main as eval_main
    from engine.eval.features import CachedFeatures, pooled
    from bench.bench_sigreg import effective_rank
    args = ["--config", "configs/eval/tiny_probe.yaml", "--output", str(out), "--seed", str(seed),
            "--set", f"experiment.data.dataset_train={data / 'train.csv'}",
            "--set", f"experiment.data.dataset_val={data / 'val.csv'}"]
    args += ["--random-init"] if checkpoint is None else ["--set", f"model_kwargs.checkpoint={checkpoint}"]
    for o in extra:
        args += ["--set", o]
    t0 = time.perf_counter()
    att = eval_main(["probe", *args])
    lin = eval_main(["linear", *args])
    knn = eval_main(["knn", *args])
    val_cache = [p for p in (out / "features").glob("val_*.npy") if not p.name.endswith(".labels.npy")]
    x_MD, _ = pooled(CachedFeatures(val_cache[0]))
    s = att["best"]["setting"]
    return {"attentive_acc": round(att["best"]["val_acc"], 4),
            "attentive_setting": f"lr {s['lr']:g} wd {s['weight_decay']:g}",
            "linear_acc": round(lin["val_acc"], 4), "knn_acc": round(knn["val_acc"], 4),
            "effective_rank": round(effective_rank(x_MD), 2), "eval_seconds": round(time.perf_counter() - t0, 1)}


def append_row(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)


def summary(path: Path) -> list[dict]:
    """Per mode and metric: seeds, mean, sample std, standard error of the mean; and the seed-paired
    differences of each mode against random_init and of ragged against compat (mean, standard error,
    mean / standard error)."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    metrics = ["attentive_acc", "linear_acc", "knn_acc", "effective_rank", "loss_last_20"]
    by = {}
    for r in rows:
        by.setdefault(r["mode"], {})[int(r["seed"])] = r
    out = []

    def stats(v):
        m = sum(v) / len(v)
        sd = math.sqrt(sum((a - m) ** 2 for a in v) / (len(v) - 1)) if len(v) > 1 else float("nan")
        return m, sd, sd / math.sqrt(len(v))

    for mode, seeds in by.items():
        for k in metrics:
            v = [float(r[k]) for r in seeds.values() if r.get(k) not in (None, "")]
            if v:
                m, sd, se = stats(v)
                out.append({"mode": mode, "metric": k, "seeds": len(v), "mean": m, "std": sd, "sem": se})
    pairs = [(m, "random_init") for m in by if m != "random_init"] + [("ragged", "compat")]
    for a, b in pairs:
        if a not in by or b not in by:
            continue
        for k in ("attentive_acc", "linear_acc", "knn_acc"):
            common = sorted(set(by[a]) & set(by[b]))
            d = [float(by[a][s][k]) - float(by[b][s][k]) for s in common]
            if len(d) > 1:
                m, sd, se = stats(d)
                out.append({"mode": f"{a} - {b}", "metric": k, "seeds": len(d), "mean": m, "std": sd,
                            "sem": se, "t": m / se if se > 0 else float("inf")})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="folder of the demo videos (train.csv, val.csv)")
    p.add_argument("--steps", type=int, default=240)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--modes", nargs="+", default=["ragged", "compat"], choices=["ragged", "compat"])
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of configs/tiny_cpu.yaml for every run (repeatable)")
    p.add_argument("--eval-set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of configs/eval/tiny_probe.yaml for every encoder (repeatable)")
    p.add_argument("--out", default="runs/probe_seeds", help="training runs and eval outputs")
    p.add_argument("--csv", default="bench/results/ragged_vs_compat_cpu.csv")
    p.add_argument("--summary", metavar="CSV", help="print the mean / spread / standard errors of a CSV and exit")
    args = p.parse_args(argv)
    if args.summary:
        for s in summary(Path(args.summary)):
            t = f"  mean/sem {s['t']:.1f}" if "t" in s else ""
            print(f"{s['mode']:>22} {s['metric']:>15} n={s['seeds']} mean {s['mean']:.4f} std {s['std']:.4f} "
                  f"sem {s['sem']:.4f}{t}")
        return
    if not args.data:
        p.error("--data is required (or --summary CSV)")
    data, out, path = Path(args.data).resolve(), Path(args.out), Path(args.csv)
    done = set()
    if path.exists():
        with open(path) as f:
            done = {(int(r["seed"]), r["mode"]) for r in csv.DictReader(f) if int(r["steps"]) == args.steps}
    for seed in args.seeds:
        for mode in ["random_init", *args.modes]:
            if (seed, mode) in done:
                continue
            run = out / f"{mode}_s{seed}"
            row = {"seed": seed, "mode": mode, "steps": args.steps}
            if mode == "random_init":
                row.update(probe(data, seed, None, run / "eval", args.eval_set))
            else:
                row["train_seconds"] = round(train(data, seed, mode, args.steps, run, args.train_set), 1)
                row["loss_last_20"] = round(last_losses(run), 4)
                row.update(probe(data, seed, run.resolve(), run / "eval", args.eval_set))
            append_row(path, row)
            print(row, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
