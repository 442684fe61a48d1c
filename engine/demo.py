"""The demo: generate videos, train a tiny V-JEPA on the CPU, probe it against a random-init encoder.

    python -m engine.demo [--config configs/tiny_cpu.yaml] [--max-steps N] [--fresh]

Writes runs/demo/: checkpoints/, metrics.csv, tb/ (TensorBoard), loss.png, probe.json. Run it again
and it resumes where it stopped (a finished run goes straight to the probe); --fresh starts over.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import torch

from engine.builders import build_dataset, build_models
from engine.config import load_config
from engine.runtime.io import atomic_write_text


# The demo's videos: three objects of one motion class each on a plain background, no static clutter
# (`python -m engine.data generate --actors 3 --radius 6 10 --distractors 0 --background plain`)
DEMO_VIDEOS = {"num_frames": 16, "actors": 3, "radius": (6.0, 10.0), "distractors": 0, "background": "plain"}


def ensure_data(cfg, videos: int, val: int, seed: int) -> None:
    from engine.data.synthetic import generate_split
    train_csv = Path(cfg.data.datasets[0])
    if train_csv.exists() and all(Path(p).exists() for p in cfg.data.val_datasets):
        return
    print(f"generating {videos} training and {val} validation videos in {train_csv.parent} ...")
    generate_split(train_csv.parent, train=videos, val=val, size=cfg.data.crop_size, seed=seed, progress=True,
                   **DEMO_VIDEOS)


def probe_pair(cfg, trained_encoder, epochs: int = 60, num_workers: int = 0, pixels: bool = False) -> dict:
    """Probe accuracies ({"linear": ..., "attentive": ...}, engine.eval.probe) of the trained encoder, of a
    random-init one (same architecture, same seed) and, with pixels=True, of the raw patch pixels (no
    encoder: the baseline both encoders are read against)."""
    from engine.eval.probe import probe_encoder, probe_pixels
    train_ds = build_dataset(cfg, train=False, index_files=cfg.data.datasets)
    val_ds = build_dataset(cfg, train=False, index_files=cfg.data.val_datasets)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.meta.seed)
        random_encoder, _ = build_models(cfg)
    out = {}
    for name, enc in (("trained", trained_encoder), ("random_init", random_encoder)):
        t0 = time.perf_counter()
        out[name] = probe_encoder(enc, train_ds, val_ds, epochs=epochs, num_workers=num_workers, seed=cfg.meta.seed)
        out[name]["seconds"] = round(time.perf_counter() - t0, 1)
    if pixels:
        t0 = time.perf_counter()
        out["pixels"] = probe_pixels(train_ds, val_ds, cfg.data.patch_size, cfg.data.tubelet_size, epochs=epochs,
                                     num_workers=num_workers, seed=cfg.meta.seed)
        out["pixels"]["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m engine.demo", description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/tiny_cpu.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--output", default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--videos", type=int, default=480, help="training videos to generate")
    p.add_argument("--val-videos", type=int, default=240, help="validation videos to generate")
    p.add_argument("--fresh", action="store_true", help="delete the output folder first")
    p.add_argument("--pixels", action="store_true",
                   help="also probe the raw patch pixels (the no-encoder baseline; several minutes on 2 cores)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    cfg = load_config(args.config, args.overrides)
    out = Path(args.output or cfg.logging.folder or "runs/demo")
    if args.fresh and out.exists():
        shutil.rmtree(out)
    ensure_data(cfg, args.videos, args.val_videos, cfg.meta.seed)

    from engine.runtime.trainer import Trainer
    t0 = time.perf_counter()
    trainer = Trainer(cfg, out)
    summary = trainer.fit(max_steps=args.max_steps, resume=True)
    train_s = time.perf_counter() - t0
    print("probing the trained target encoder and a random-init encoder (frozen features)"
          + (" and the raw pixels ..." if args.pixels else " ..."))
    probe = probe_pair(cfg, trainer.model.target_encoder, pixels=args.pixels)
    result = {"train": summary, "train_seconds": round(train_s, 1), "probe": probe}
    atomic_write_text(out / "probe.json", json.dumps(result, indent=2))
    tr, rn = probe["trained"], probe["random_init"]
    print()
    print(f"  steps trained           {summary['steps']}  ({summary['steps_per_s']:.2f} steps/s, "
          f"peak RSS {summary['peak_rss_mb']:.0f} MB, data wait {summary['data_wait_fraction']:.1%})")
    print(f"  loss                    {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}")
    for kind, label in (("linear", "linear probe (val)"), ("attentive", "attentive probe (val)")):
        px = f"pixels {probe['pixels'][kind]['val_acc']:.1%}   " if "pixels" in probe else ""
        print(f"  {label:24s}trained {tr[kind]['val_acc']:.1%}   random init {rn[kind]['val_acc']:.1%}   "
              f"{px}chance {tr[kind]['chance']:.1%}")
    print(f"  results in {out}/: metrics.csv, loss.png, tb/, checkpoints/, probe.json")
    return result


if __name__ == "__main__":
    main()
