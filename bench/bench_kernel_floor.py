"""The kernel floor of a training step: its GEMMs and attention kernels replayed alone, against the whole step.

    python bench/bench_kernel_floor.py [--config configs/tiny_cpu.yaml] [--set model.depth=12 ...]
                                       [--rounds 3] [--threads 2] [--out bench/results/kernel_floor_cpu.csv]

One step of each mode of bench/bench_e2e.py is recorded at the dispatcher (TorchDispatchMode): every
GEMM (mm, addmm, bmm, baddbmm) and every attention kernel (ATen's flash forward/backward, the engine's
packed block attention forward/backward), with copies of their inputs. Each recorded call is then run
alone, on its recorded inputs (warm caches, no other work between calls), and its best time of a few
repeats summed: the floor, what the step would take if everything else (LayerNorm, GELU, residual adds,
copies, loss, AdamW, EMA, mask plumbing) cost nothing. Rounds alternate the modes, each round timing the
whole steps too, so load on the machine shifts both alike. The floor of one mode over another mode's
whole step says how far kernels alone allow the first to go: a floor above the other's step means no
amount of fusion around those kernels makes the first mode faster than the other.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_e2e import MODES, Mode, _commit  # noqa: E402
from engine.core.io import append_csv_rows  # noqa: E402

GEMMS = ("aten.mm.", "aten.addmm.", "aten.bmm.", "aten.baddbmm.")


def kind_of(name: str) -> str | None:
    if name.startswith(GEMMS):
        return "gemm"
    if "flash_attention" in name or ("jepa" in name and "attention" in name):
        return "attention"
    return None


class Recorder(TorchDispatchMode):
    """Keeps (op, kind, inputs cloned) of every GEMM / attention call while active."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = kind_of(str(func))
        if kind is not None:
            clone = lambda a: a.detach().clone() if isinstance(a, torch.Tensor) else a   # noqa: E731
            self.calls.append((func, kind, [clone(a) if not isinstance(a, (list, tuple)) else type(a)(map(clone, a))
                                            for a in args], {k: clone(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)


def record(mode: Mode, x) -> list:
    rec = Recorder()
    with rec:
        mode.step(x)
    return rec.calls


def replay_seconds(calls, repeats: int = 3) -> dict:
    """Seconds per kind: each call's best of `repeats` runs, summed."""
    out = {"gemm": 0.0, "attention": 0.0}
    with torch.no_grad():
        for func, kind, args, kwargs in calls:
            best = np.inf
            for _ in range(repeats):
                t = time.perf_counter()
                func(*args, **kwargs)
                best = min(best, time.perf_counter() - t)
            out[kind] += best
    return out


def step_seconds(mode: Mode, x, steps: int) -> float:
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        mode.step(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def run(cfg_path, overrides, rounds: int, steps: int, modes=MODES) -> list[dict]:
    ms = {n: Mode(n, cfg_path, overrides) for n in modes}
    cfg = next(iter(ms.values())).cfg
    x = torch.randn(cfg.data.batch_size, 3, cfg.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
    for m in ms.values():
        m.step(x)                                   # warm-up (allocator, oneDNN primitives)
    floors = {n: [] for n in modes}
    stepsec = {n: [] for n in modes}
    for _ in range(rounds):
        for n, m in ms.items():
            stepsec[n].append(step_seconds(m, x, steps))
            floors[n].append(replay_seconds(record(m, x)))
    rows = []
    for n in modes:
        g = float(np.median([f["gemm"] for f in floors[n]]))
        a = float(np.median([f["attention"] for f in floors[n]]))
        rows.append({"mode": n, "step_s": round(float(np.median(stepsec[n])), 4), "floor_gemm_s": round(g, 4),
                     "floor_attention_s": round(a, 4), "floor_s": round(g + a, 4),
                     "floor_over_own_step": round((g + a) / float(np.median(stepsec[n])), 3)})
    first = rows[0]["step_s"]
    for r in rows:
        r[f"floor_over_{modes[0]}_step"] = round(r["floor_s"] / first, 3)
        r["threads"] = torch.get_num_threads()
        r["overrides"] = " ".join(overrides)
        r["commit"] = _commit()
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "tiny_cpu.yaml"))
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--out")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = run(a.config, a.overrides, a.rounds, a.steps, tuple(a.modes))
    for r in rows:
        print(r)
    if a.out:
        append_csv_rows(a.out, rows)
    return rows


if __name__ == "__main__":
    main()
