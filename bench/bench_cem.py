"""Seconds per planned action of the CEM planner, and how they scale with samples x horizon; batched
rollouts (one predictor call on all samples per horizon step) against a loop over the samples.

    python bench/bench_cem.py --checkpoint runs/ac_arm [--samples 25 50 100 200 --horizons 1 2 3
        --iterations 8 --repeats 3 --csv bench/results/cem_cpu.csv]

Times cem_plan (encoding excluded) from a rendered frame of the reach task towards its goal image; the
batched/loop rows alternate rounds (A B A B) at one setting and report the ratio of the medians.
"""
from __future__ import annotations

import argparse
import dataclasses
import csv
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class LoopedRollouts:
    """The same world model, rolling out one sample at a time (what batching replaces)."""

    def __init__(self, wm):
        self.wm = wm
        self.action_dim = wm.action_dim

    def rollout(self, z0, state, acts_KHA):
        return torch.cat([self.wm.rollout(z0, state, acts_KHA[k:k + 1]) for k in range(acts_KHA.shape[0])])


def time_plan(wm, z0, state, goal, pc, repeats: int) -> float:
    from engine.planning.cem import cem_plan
    times = []
    for r in range(repeats):
        gen = torch.Generator().manual_seed(r)
        t0 = time.perf_counter()
        cem_plan(wm, z0, state, goal, pc, gen)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--samples", type=int, nargs="+", default=[25, 50, 100, 200])
    p.add_argument("--horizons", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--loop-samples", type=int, default=50, help="the batched-vs-loop comparison's sample count")
    p.add_argument("--csv", default="bench/results/cem_cpu.csv")
    args = p.parse_args(argv)
    from engine.planning.world_model import load_world_model
    from engine.planning.reach import ReachTask
    wm, cfg = load_world_model(args.checkpoint)
    task = ReachTask(size=cfg.data.crop_size, seed=cfg.planning.goal_seed)
    try:
        ep = task.episode(0)
        task._reset(0)
        z0, state = wm.encode_frame(task.arm.render(task.size)), task.arm.state()
    finally:
        task.close()
    goal = wm.encode_frame(ep.goal_image)
    rows = []
    threads = torch.get_num_threads()
    for H in args.horizons:
        for S in args.samples:
            pc = dataclasses.replace(cfg.planning, samples=S, horizon=H, iterations=args.iterations, topk=min(10, S))
            sec = time_plan(wm, z0, state, goal, pc, args.repeats)
            rows.append({"mode": "batched", "samples": S, "horizon": H, "iterations": args.iterations,
                         "seconds_per_action": round(sec, 4), "ratio_loop_over_batched": "", "threads": threads})
            print(rows[-1], flush=True)
    pc = dataclasses.replace(cfg.planning, samples=args.loop_samples, horizon=1, iterations=args.iterations,
                      topk=min(10, args.loop_samples))
    batched, looped = [], []
    for _ in range(args.repeats):   # alternating rounds
        batched.append(time_plan(wm, z0, state, goal, pc, 1))
        looped.append(time_plan(LoopedRollouts(wm), z0, state, goal, pc, 1))
    b, lp = statistics.median(batched), statistics.median(looped)
    for mode, sec in (("batched_ab", b), ("loop_ab", lp)):
        rows.append({"mode": mode, "samples": args.loop_samples, "horizon": 1, "iterations": args.iterations,
                     "seconds_per_action": round(sec, 4), "ratio_loop_over_batched": round(lp / b, 2), "threads": threads})
        print(rows[-1], flush=True)
    path = Path(args.csv)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
