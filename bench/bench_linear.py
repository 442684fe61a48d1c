"""A linear layer's three products: kernels.linear's C++ loop against torch's (BLAS) on the tiny V-JEPA step's shapes.

    python bench/bench_linear.py [--threads 1] [--rounds 5] [--csv bench/results/linear_cpu.csv]

Per shape (rows T, in, out: the context encoder's, the predictor's and a target-pass part's layers) it times
  forward:  y = x w^T + b        torch.nn.functional.linear   against torch.ops.jepa_cpp.linear_fwd
  dx:       g w                  torch.mm                     against torch.ops.jepa_cpp.linear_dx
  dw:       g^T x                torch.mm on g.t()            against torch.ops.jepa_cpp.linear_dw
fp32, alternating rounds (torch, ours, torch, ours, ...), the median of each method's rounds, each round the
median of --reps calls; GFLOP/s from 2 T in out; ratio = torch's time / ours.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from engine.core.io import atomic_write_csv  # noqa: E402
from kernels import _ops  # noqa: E402

SHAPES = [  # (rows, in, out, what)
    (1176, 192, 576, "context qkv"), (1176, 192, 192, "context proj"), (1176, 192, 768, "context fc1"),
    (1176, 768, 192, "context fc2"), (4096, 96, 288, "predictor qkv"), (4096, 96, 384, "predictor fc1"),
    (4096, 384, 96, "predictor fc2"), (1176, 192, 96, "predictor embed"), (1024, 192, 768, "target part fc1"),
]


def _median_call(f, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()
    if not (_ops.cpp_available() and torch.ops.jepa_cpp.linear_ok()):
        raise SystemExit("bench_linear: the C++ loop needs the built extension (make build) and an AVX-512 CPU")
    torch.set_num_threads(args.threads)
    ops = torch.ops.jepa_cpp
    rows = []
    print(f"{'shape':<22} {'product':<8} {'torch ms':>9} {'ours ms':>9} {'torch GF/s':>11} {'ours GF/s':>10} "
          f"{'ratio':>6}")
    for T, I, O, what in SHAPES:
        g = torch.Generator().manual_seed(0)
        x, w, b = torch.randn(T, I, generator=g), torch.randn(O, I, generator=g), torch.randn(O, generator=g)
        gy = torch.randn(T, O, generator=g)
        ways = {"forward": (lambda: F.linear(x, w, b), lambda: ops.linear_fwd(x, w, b)),
                "dx": (lambda: gy @ w, lambda: ops.linear_dx(gy, w)),
                "dw": (lambda: gy.t() @ x, lambda: ops.linear_dw(gy, x)[0])}
        for product, (ref, ours) in ways.items():
            assert torch.allclose(ref(), ours(), rtol=1e-4, atol=1e-3 * (I if product != "dw" else T) ** 0.5)
            for f in (ref, ours):
                _median_call(f, 3)
            times = {"torch": [], "ours": []}
            for _ in range(args.rounds):
                for name, f in (("torch", ref), ("ours", ours)):
                    times[name].append(_median_call(f, args.reps))
            t_ref, t_ours = statistics.median(times["torch"]), statistics.median(times["ours"])
            flop = 2.0 * T * I * O
            row = {"shape": what, "rows": T, "in": I, "out": O, "product": product, "threads": args.threads,
                   "torch_ms": round(t_ref * 1e3, 4), "ours_ms": round(t_ours * 1e3, 4),
                   "torch_gflops": round(flop / t_ref / 1e9, 1), "ours_gflops": round(flop / t_ours / 1e9, 1),
                   "ratio": round(t_ref / t_ours, 3)}
            rows.append(row)
            print(f"{what:<22} {product:<8} {row['torch_ms']:>9.3f} {row['ours_ms']:>9.3f} "
                  f"{row['torch_gflops']:>11.1f} {row['ours_gflops']:>10.1f} {row['ratio']:>6.3f}")
    if args.csv:
        atomic_write_csv(args.csv, rows)


if __name__ == "__main__":
    main()
