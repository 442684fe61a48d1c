"""A frozen-encoder world model trained on cached latents (data.latent_cache) against the same run decoding and
encoding every clip: whole `python -m engine.train` processes, A B A B.

    python bench/bench_latent_cache.py --config configs/ac_lattice_tiny_cpu.yaml --cache DIR \
        [--set key=value ...] [--steps 300] [--pairs 3] [--out bench/results/latent_cache_cpu.csv]
    python bench/bench_latent_cache.py --builds 3 --ranks 2 [--set ...]   # building it: 1 process vs 2 ranks

The cache is built first when DIR holds none (`python -m engine.datagen latents`; its seconds and size are a
row). With --builds N the bench times the build alone instead: one process (all threads) against --ranks
ranks under torchrun (threads shared out), N alternating pairs, into a temporary folder.
Per run: wall and CPU seconds of the whole process (start-up, 300 steps, the last checkpoint), its peak
resident set, and from its metrics.csv the median step time and data wait after the first 50 steps. Rows:
each side's medians over the pairs, and `cached / decoding` of the per-pair ratios.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from engine.core.io import atomic_write_csv  # noqa: E402


def timed(cmd: list[str]) -> dict:
    """Run cmd; its wall seconds, user + system seconds and peak resident set (MB) from the kernel's accounting
    (a floor of this process's own resident set, which the child has before its exec: the training runs
    measured here are well above it)."""
    with tempfile.TemporaryFile("w+") as log:   # a file, not a pipe: a chatty child never blocks on it
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode:
            log.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {log.read().strip().splitlines()[-1:]}")
    return {"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "peak_mb": ru.ru_maxrss / 1024}


def steady(run: Path, skip: int = 50) -> dict:
    rows = list(csv.DictReader(open(run / "metrics.csv")))[skip:]
    return {"step_ms": statistics.median(float(r["step_ms"]) for r in rows),
            "data_wait_ms": statistics.median(float(r["data_wait_ms"]) for r in rows)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/ac_lattice_tiny_cpu.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--cache", help="the cache folder (built first when it holds none); not with --builds")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--out", default=None, help="default bench/results/latent_cache_cpu.csv (--builds: "
                                                  "latent_cache_build_cpu.csv)")
    ap.add_argument("--builds", type=int, default=0, help="time N pairs of builds (1 process vs --ranks) instead")
    ap.add_argument("--ranks", type=int, default=2)
    args = ap.parse_args(argv)
    sets = [a for s in args.set for a in ("--set", s)]
    args.out = args.out or str(ROOT / "bench" / "results" / f"latent_cache{'_build' if args.builds else ''}_cpu.csv")
    if args.builds:
        return compare_builds(args, sets)
    if not args.cache:
        ap.error("--cache DIR is needed (or --builds N)")
    rows = []
    if not (Path(args.cache) / "index.json").is_file():
        t = timed([sys.executable, "-m", "engine.datagen", "latents", "--config", args.config, "--output", args.cache,
                   *sets])
        size = sum(f.stat().st_size for f in Path(args.cache).glob("*.bin")) / 2 ** 20
        rows.append({"row": "build the cache", "wall_s": round(t["wall_s"], 1), "cpu_s": round(t["cpu_s"], 1),
                     "peak_mb": round(t["peak_mb"]), "cache_mb": round(size)})
    out = Path(tempfile.mkdtemp(prefix="latent_bench_"))
    sides = {"decoding": [], "cached": ["--set", f"data.latent_cache={args.cache}"]}
    got = {k: [] for k in sides}
    for _ in range(args.pairs):
        for name, extra in sides.items():
            run = out / name
            t = timed([sys.executable, "-m", "engine.train", "--config", args.config, "--output", str(run),
                       "--max-steps", str(args.steps), "--no-progress", "--overwrite", *sets, *extra])
            got[name].append({**t, **steady(run)})
    for name, runs in got.items():
        rows.append({"row": f"{name}, {args.steps} steps", **{k: round(statistics.median(r[k] for r in runs), 2)
                                                                for k in runs[0]}})
    ratio = {k: round(statistics.median(c[k] / d[k] for c, d in zip(got["cached"], got["decoding"])), 3)
             for k in got["cached"][0]}
    rows.append({"row": "cached / decoding (median of the pairs)", **ratio})
    for r in rows:
        r.update(config=args.config, overrides=" ".join(args.set), pairs=args.pairs)
    atomic_write_csv(args.out, rows)
    for r in rows:
        print(r)


def compare_builds(args, sets: list[str]) -> None:
    out = Path(tempfile.mkdtemp(prefix="latent_build_"))
    build = ["-m", "engine.datagen", "latents", "--config", args.config, "--output", str(out / "lat"), "--overwrite",
             *sets]
    threads = os.cpu_count() // args.ranks
    sides = {"1 process": [sys.executable, *build],
             f"{args.ranks} ranks x {threads} threads (torchrun)": [
                 "env", f"OMP_NUM_THREADS={threads}", sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", str(args.ranks), *build]}
    got = {k: [] for k in sides}
    for _ in range(args.builds):
        for name, cmd in sides.items():
            got[name].append(timed(cmd))
    size = sum(f.stat().st_size for f in (out / "lat").glob("*.bin")) / 2 ** 20
    rows = [{"row": f"build, {name}", **{k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]},
             "cache_mb": round(size)} for name, runs in got.items()]
    one, many = got.values()
    rows.append({"row": "build: ranks / 1 process (median of the pairs)",
                 **{k: round(statistics.median(b[k] / a[k] for a, b in zip(one, many)), 3) for k in one[0]}})
    for r in rows:
        r.update(config=args.config, overrides=" ".join(args.set), pairs=args.builds)
    atomic_write_csv(args.out, rows)
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
