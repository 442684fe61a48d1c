"""End to end: the JEPA training step with packed ragged masks vs the reference truncation (compat).

    python bench/bench_e2e.py [--config configs/tiny_cpu.yaml] [--steps 10] [--out bench/results/e2e_cpu.csv]

Same model, same clips, same mask generators; `ragged` trains every token each mask keeps (packed with
cu_seqlens), `compat` truncates every sample's masks to the batch minimum as the reference does. Per
mode: seconds per step (forward, backward, AdamW, EMA), context+target tokens trained per step and
per second, and how many of the tokens the masks kept truncation threw away. Random clips: the data
path is measured in bench/bench_loader.py.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from engine.builders import build_jepa, build_mask_sampler  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.runtime.io import atomic_write_csv  # noqa: E402


def run(cfg, steps: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = build_jepa(cfg)
    sampler = build_mask_sampler(cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    B = cfg.data.batch_size
    x = torch.randn(B, 3, cfg.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
    rng = np.random.default_rng(seed)
    tokens, times = [], []
    for i in range(steps + 2):
        masks = sampler.sample(B, rng)
        t0 = time.perf_counter()
        loss, info = model(x, masks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.update_target(0.996)
        if i >= 2:   # warm-up steps excluded
            times.append(time.perf_counter() - t0)
            tokens.append(info["ctx_tokens"] + info["tgt_tokens"])
    s = float(np.median(times))
    return {"s_per_step": s, "tokens_per_step": float(np.mean(tokens)), "tokens_per_s": float(np.mean(tokens)) / s}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny_cpu.yaml"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "e2e_cpu.csv"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for mode in ("compat", "ragged"):
        cfg = load_config(args.config, [f"meta.mask_mode={mode}"])
        r = run(cfg, args.steps)
        rows.append({"mode": mode, **{k: round(v, 4) for k, v in r.items()}})
    compat, ragged = rows
    dropped = 1 - compat["tokens_per_step"] / ragged["tokens_per_step"]
    for r in rows:
        r["tokens_per_s_vs_compat"] = round(r["tokens_per_s"] / compat["tokens_per_s"], 3)
        r["tokens_dropped_by_truncation"] = round(dropped, 3) if r["mode"] == "compat" else 0.0
        r["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    atomic_write_csv(args.out, rows)
    print(f"{'mode':8} {'s/step':>8} {'tokens/step':>12} {'tokens/s':>10} {'vs compat':>10}")
    for r in rows:
        print(f"{r['mode']:8} {r['s_per_step']:8.3f} {r['tokens_per_step']:12.0f} {r['tokens_per_s']:10.0f} "
              f"{r['tokens_per_s_vs_compat']:10.2f}")
    print(f"truncation to the batch minimum threw away {dropped:.1%} of the tokens the masks kept")


if __name__ == "__main__":
    main()
