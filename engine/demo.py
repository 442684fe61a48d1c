"""The demo: generate videos, train a tiny V-JEPA on the CPU, probe it against a random-init encoder.

    python -m engine.demo [--config configs/tiny_cpu.yaml] [--max-steps N] [--fresh]

Three stages, each announced with what it will cost (STAGE_SECONDS: measured on 2 CPU cores) and
shown with a progress bar: generate the videos (skipped when they exist), train, probe. Writes
runs/demo/: checkpoints/, metrics.csv, tb/ (TensorBoard), loss.png, probe.json. Run it again and it
resumes where it stopped (a finished run goes straight to the probe); --fresh starts over.
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
from engine.core.checkpoint import latest_path
from engine.core.io import atomic_write_text
from engine.runtime.metrics import SUMMARY_WINDOW


# The demo's videos: three objects of one motion class each on a plain background, no static clutter
# (`python -m engine.datagen generate --actors 3 --radius 6 10 --distractors 0 --background plain`)
DEMO_VIDEOS = {"num_frames": 16, "actors": 3, "radius": (6.0, 10.0), "distractors": 0, "background": "plain"}

# What each stage costs on 2 idle CPU cores, so the demo can say up front how long it will take: a
# training step at 2.1 steps/s (the slower of the two 2-core machines of the README's demo runs; the
# other ran 3.9); a video and a probed clip (per encoder) from their CPU time with one thread (0.022 s
# and 0.125 s), the probe's split over 2 threads.
STAGE_SECONDS = {"per_video": 0.03, "per_step": 0.47, "per_probed_clip": 0.075}


def announce(stage: str, what: str, seconds: float) -> None:
    print(f"[{stage}] {what}: about {_duration(seconds)} on 2 idle CPU cores", flush=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def ensure_data(cfg, videos: int, val: int, seed: int) -> None:
    from engine.datagen.synthetic import generate_split
    train_csv = Path(cfg.data.datasets[0])
    if train_csv.exists() and all(Path(p).exists() for p in cfg.data.val_datasets):
        return
    announce("1/3 data", f"generating {videos} training and {val} validation videos in {train_csv.parent}",
             (videos + val) * STAGE_SECONDS["per_video"])
    generate_split(train_csv.parent, train=videos, val=val, size=cfg.data.crop_size, seed=seed, progress=True,
                   **DEMO_VIDEOS)


def probe_pair(cfg, trained_encoder, epochs: int = 60, num_workers: int = 0, pixels: bool = False,
               progress: bool = False) -> dict:
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
        if progress:
            print(f"  probing the {name.replace('_', ' ')} encoder", flush=True)
        t0 = time.perf_counter()
        out[name] = probe_encoder(enc, train_ds, val_ds, epochs=epochs, num_workers=num_workers, seed=cfg.meta.seed,
                                  progress=progress)
        out[name]["seconds"] = round(time.perf_counter() - t0, 1)
    if pixels:
        if progress:
            print("  probing the raw pixels", flush=True)
        t0 = time.perf_counter()
        out["pixels"] = probe_pixels(train_ds, val_ds, cfg.data.patch_size, cfg.data.tubelet_size, epochs=epochs,
                                     num_workers=num_workers, seed=cfg.meta.seed, progress=progress)
        out["pixels"]["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def probe_cost(cfg, pixels: bool) -> float:
    """Seconds the probe stage takes on 2 cores: both encoders (and the pixels) over train + val clips."""
    clips = sum(_lines(p) for p in (*cfg.data.datasets, *cfg.data.val_datasets))
    return clips * (3 if pixels else 2) * STAGE_SECONDS["per_probed_clip"]


def _lines(index_file) -> int:
    with open(index_file) as f:
        return sum(1 for line in f if line.strip())


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
    stop = trainer.total_steps if args.max_steps is None else min(trainer.total_steps, args.max_steps)
    resume = latest_path(out) is not None      # a fresh folder starts at step 0, with nothing to say
    if resume:
        print(f"resuming from {latest_path(out)}")
    announce("2/3 train", f"training the tiny V-JEPA of {args.config} for {stop} steps",
             max(0, stop - _checkpoint_step(out)) * STAGE_SECONDS["per_step"])
    summary = trainer.fit(max_steps=args.max_steps, resume=resume)
    train_s = time.perf_counter() - t0
    announce("3/3 probe", "probing the trained target encoder and a random-init encoder (frozen features)"
             + (" and the raw pixels" if args.pixels else ""), probe_cost(cfg, args.pixels))
    probe = probe_pair(cfg, trainer.model.target_encoder, pixels=args.pixels, progress=True)
    result = {"train": summary, "train_seconds": round(train_s, 1), "probe": probe}
    atomic_write_text(out / "probe.json", json.dumps(result, indent=2))
    tr, rn = probe["trained"], probe["random_init"]
    print()
    print(f"  steps trained           {summary['steps']}  ({summary['steps_per_s']:.2f} steps/s, "
          f"peak memory {summary['peak_mem_mb']:.0f} MB, data wait {summary['data_wait_fraction']:.1%})")
    print(f"  loss                    first step {summary['first_loss']:.4f} -> mean of the last "
          f"{SUMMARY_WINDOW} steps {summary[f'mean_loss_last_{SUMMARY_WINDOW}']:.4f}")
    for kind, label in (("linear", "linear probe (val)"), ("attentive", "attentive probe (val)")):
        px = f"pixels {probe['pixels'][kind]['val_acc']:.1%}   " if "pixels" in probe else ""
        print(f"  {label:24s}trained {tr[kind]['val_acc']:.1%}   random init {rn[kind]['val_acc']:.1%}   "
              f"{px}chance {tr[kind]['chance']:.1%}")
    print(f"  results in {out}/: metrics.csv, loss.png, tb/, checkpoints/, probe.json")
    return result


def _checkpoint_step(out: Path) -> int:
    """The step the run folder's latest checkpoint was written at (its name: step_0000123.pt; 0 when none)."""
    path = latest_path(out)
    return int(path.stem.split("_")[-1]) if path is not None else 0


if __name__ == "__main__":
    main()
