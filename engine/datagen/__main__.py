"""Make, prepare and benchmark data sets from the command line (offline: training only reads what they write).

Usage:
    python -m engine.datagen generate --output data/generated/toy --videos 300 --val 60 [--frames 16 --size 64
                                   --fps 8 --codec h264 --seed 0 --classes 5]
        -> DIR/train.csv, DIR/val.csv (+ DIR/train/, DIR/val/ video files)
    python -m engine.datagen events --output DIR --pairs 60 [--world free|solid|lattice --events teleport vanish
                                 pass_through --actors 3 ...]
        -> DIR/events.csv (label 1 = physically impossible) + DIR/events.events.csv (event, pair, frame):
           pairs of one scene, possible and impossible (engine.datagen.synthetic.generate_events)
    python -m engine.datagen images --output data/generated/images --num 500 [--size 64 --seed 0]
        -> DIR/<class>/<NNNNNN>.png
    python -m engine.datagen bench --index DIR/train.csv [--frames 16 --step 1 --crop 64 --batch 8 --workers 0
                                --batches 20]
        -> decode + transform throughput through the real loader, in clips/s
    python -m engine.datagen prepare --input DIR|CSV --output DIR [--codec vp9|h264|mjpeg --size 128
                                  --shard-size 100 --workers 1 --gop N]
        -> DIR/shard-NNNNNN.tar + DIR/index.json + DIR/index.csv (transcoded, resized, sharded)
    python -m engine.datagen robot --output DIR --num N [--frames 32 --size 64 --fps 10 --seed 0 --views 1]
        -> DIR/robot.csv + DIR/robot/NNNNNN.mp4 (+ .actions.npy, .states.npy): a pybullet KUKA arm
    python -m engine.datagen atari --output DIR --num N [--frames 32 --games breakout pong ... --size S]
        -> DIR/atari.csv + DIR/atari/NNNNNN.mp4 (+ .actions.npy, .states.npy): ale-py gameplay
    python -m engine.datagen maze --output DIR --num N [--frames 32 --size 32 --fps 10 --seed 0 --codec h264rgb]
        -> DIR/maze.csv + DIR/maze/NNNNNN.mp4 (+ .actions.npy, .states.npy): a ball exploring a two-room maze
    python -m engine.datagen latents --config CONFIG --output DIR [--set key=value ... --dtype float32|bfloat16
                                  --device cuda --workers N --overwrite]
        -> DIR/index.json + DIR/latents.bin: the config's frozen encoder's latents of every frame of its
           training videos; train on them with --set data.latent_cache=DIR (engine.data.latents). Under a
           launcher (torchrun --nproc_per_node N -m engine.datagen latents ... --device cuda) each rank
           encodes a share of the videos on its own device into its own latents-R-of-N.bin
"""
from __future__ import annotations

import argparse
import time

from .images import generate_images
from .synthetic import CODECS, EVENTS, MOTION_CLASSES, WORLDS, generate_events, generate_split


def bench(args) -> float:
    """Clips per second through the loader (first batch excluded: worker start-up)."""
    from engine.data import VideoDataset, VideoTransform, make_loader

    ds = VideoDataset(args.index, frames_per_clip=args.frames, frame_step=args.step,
                      transform=VideoTransform(crop_size=args.crop))
    it = iter(make_loader(ds, batch_size=args.batch, seed=0, num_workers=args.workers))
    next(it)
    t0 = time.perf_counter()
    for _ in range(args.batches):
        next(it)
    return args.batches * args.batch / (time.perf_counter() - t0)


def _listed(v):
    """A value as given on the command line (nargs give lists) or as a default (tuples), comparable."""
    return list(v) if isinstance(v, (list, tuple)) else v


def _scene_args(g) -> None:
    g.add_argument("--output", required=True)
    g.add_argument("--frames", type=int, default=16)
    g.add_argument("--size", type=int, default=64)
    g.add_argument("--fps", type=int, default=8)
    g.add_argument("--codec", default="h264", choices=sorted(CODECS))
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--classes", type=int, default=5, help=f"first N of {', '.join(MOTION_CLASSES)}")
    g.add_argument("--actors", type=int, default=1, help="moving objects per video, all with the class's motion")
    g.add_argument("--radius", type=float, nargs=2, default=(4.5, 8.0), help="actor radius range in px at 64 px")
    g.add_argument("--distractors", type=int, default=3, help="at most this many static objects")
    g.add_argument("--background", default="random", choices=("random", "plain"))
    g.add_argument("--flicker", action="store_true", help="actors change colour every frame")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m engine.datagen", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="moving-object videos + train/val index CSVs")
    g.add_argument("--videos", type=int, required=True, help="number of training videos")
    g.add_argument("--val", type=int, default=0, help="number of validation videos")
    ev = sub.add_parser("events", help="possible / impossible video pairs (intuitive physics)")
    ev.add_argument("--pairs", type=int, required=True)
    ev.add_argument("--events", nargs="+", default=list(EVENTS), choices=EVENTS)
    ev.add_argument("--event-radius", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="the event object's radius range in px at 64 px (default: --radius)")
    ev.add_argument("--event-speed", type=float, nargs=2, default=(14.0, 24.0), metavar=("LO", "HI"),
                    help="the event object's speed range in px/s at 64 px")
    for sp in (g, ev):   # the scene: the same arguments for both
        _scene_args(sp)
    ev.add_argument("--world", default="free", choices=WORLDS,
                    help="free: the motion scenes, objects overlap freely; solid: objects collide, never overlap; "
                         "lattice: one ball stepping a cell a frame among static blocks")
    ev.add_argument("--blocks", type=int, default=None,
                    help="solid / lattice world: static blocks per scene (default 1 / 2)")
    ev.add_argument("--cell", type=int, default=None,
                    help="lattice world: the cell in px, one object and one move a frame (default 16; --size a "
                         "multiple of it)")
    ev.add_argument("--speed", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="solid world: the other moving objects' speed range in px/s at 64 px (default 14 24)")
    # the free world's scene keys, refused by the solid world when given
    ev.set_defaults(classes=None, distractors=None)
    im = sub.add_parser("images", help="procedural shape images in ImageFolder layout")
    im.add_argument("--output", required=True)
    im.add_argument("--num", type=int, required=True)
    im.add_argument("--size", type=int, default=64)
    im.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("bench", help="clips/s through VideoDataset + make_loader")
    b.add_argument("--index", required=True, nargs="+")
    b.add_argument("--frames", type=int, default=16)
    b.add_argument("--step", type=int, default=1)
    b.add_argument("--crop", type=int, default=64)
    b.add_argument("--batch", type=int, default=8)
    b.add_argument("--workers", type=int, default=0)
    b.add_argument("--batches", type=int, default=20)
    pr = sub.add_parser("prepare", help="transcode + resize + shard videos into tar shards with an index")
    pr.add_argument("--input", required=True, help="an index CSV ('path label' lines) or a folder of videos")
    pr.add_argument("--output", required=True)
    pr.add_argument("--codec", default="vp9", choices=sorted(CODECS))
    pr.add_argument("--size", type=int, default=128, help="short side in pixels (0: keep)")
    pr.add_argument("--shard-size", type=int, default=100, help="videos per tar shard")
    pr.add_argument("--workers", type=int, default=1)
    pr.add_argument("--gop", type=int, default=None, help="keyframe interval (default: the encoder's)")
    pr.add_argument("--dense-refs", action="store_true",
                    help="keep the encoder's own reference structure (default for h264 / vp9: many frames "
                         "unreferenced, so strided clips decode fewer frames)")
    lt = sub.add_parser("latents", help="a world-model config's frozen-encoder latents of every training frame")
    lt.add_argument("--config", required=True, help="the run config (app vjepa_droid, a fixed crop)")
    lt.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    lt.add_argument("--output", required=True)
    lt.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                    help="how the latents are stored (bfloat16: half the bytes, rounded)")
    lt.add_argument("--overwrite", action="store_true", help="replace an existing cache folder")
    lt.add_argument("--device", default="cpu", help="where the encoder runs (default cpu; e.g. cuda)")
    lt.add_argument("--workers", type=int, default=0,
                    help="processes decoding the next videos while the encoder runs (default 0: in turn; worth it "
                         "where the encoder has a GPU and decoding is the bottleneck)")
    lt.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)   # the deepspeed launcher's
    for name, helptext in (("robot", "pybullet KUKA arm episodes (random / reach / push) with actions + states"),
                           ("atari", "Atari gameplay (ale-py ROMs) with actions + RAM states"),
                           ("maze", "pybullet ball in a two-room maze, seen from above, with actions + positions")):
        r = sub.add_parser(name, help=helptext)
        r.add_argument("--output", required=True)
        r.add_argument("--num", type=int, required=True)
        r.add_argument("--frames", type=int, default=32)
        r.add_argument("--seed", type=int, default=0)
        # robot and maze frames go to a planner that sees the renderer's frames: lossless by default
        r.add_argument("--codec", default="h264" if name == "atari" else "h264rgb", choices=sorted(CODECS))
        if name == "maze":
            r.add_argument("--size", type=int, default=32)
            r.add_argument("--fps", type=int, default=10)
        elif name == "robot":
            r.add_argument("--size", type=int, default=64)
            r.add_argument("--fps", type=int, default=10)
            r.add_argument("--policies", nargs="+", default=None,
                           help="policies to cycle through (default: random reach push; explore covers the workspace)")
            r.add_argument("--views", type=int, default=1,
                           help="cameras per episode, 90 degrees of yaw apart; each view is written as its own "
                                "trajectory (a multi-view planner scores its goal in all: planning.views)")
        else:
            r.add_argument("--size", type=int, default=None, help="short side (default: the 208x160 screen)")
            r.add_argument("--games", nargs="+", default=None)
            r.add_argument("--frameskip", type=int, default=4)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.cmd == "generate":
        train, val = generate_split(args.output, train=args.videos, val=args.val, num_frames=args.frames,
                                    size=args.size, fps=args.fps, codec=args.codec, seed=args.seed,
                                    num_classes=args.classes, actors=args.actors, radius=tuple(args.radius),
                                    distractors=args.distractors, background=args.background,
                                    flicker=args.flicker, progress=True)
        print(f"wrote {train} and {val} in {time.perf_counter() - t0:.1f} s")
    elif args.cmd == "events":
        if args.world != "lattice" and args.cell is not None:
            ap.error("--cell: a lattice-world option (--world lattice)")
        if args.world == "lattice":
            # one ball a cell wide: the free and solid worlds' object options do not apply
            given = [k for k in ("classes", "distractors", "speed", "event_radius") if getattr(args, k) is not None]
            given += [k for k in ("actors", "radius", "event_speed", "background")
                      if _listed(getattr(args, k)) != _listed(ev.get_default(k))]
            given = [f"--{k.replace('_', '-')}" for k in given]
            given += ["--flicker"] if args.flicker else []
            if given:
                ap.error(f"{' '.join(given)}: not lattice-world options (its one ball steps a cell a frame among "
                         f"--blocks; --cell sets the cell)")
            scene = {k: v for k, v in (("blocks", args.blocks), ("cell", args.cell)) if v is not None}
        elif args.world == "solid":
            given = [f"--{k}" for k in ("classes", "distractors") if getattr(args, k) is not None]
            given += ["--flicker"] if args.flicker else []
            if given:
                ap.error(f"{' '.join(given)}: the free world's options; the solid world's static objects are --blocks")
            # only what was given: solid_event_scene's own defaults hold the rest
            scene = {k: (tuple(v) if isinstance(v, list) else v)
                     for k, v in (("blocks", args.blocks), ("speed", args.speed)) if v is not None}
        else:
            given = [f"--{k}" for k in ("blocks", "speed") if getattr(args, k) is not None]
            if given:
                ap.error(f"{' '.join(given)}: solid- or lattice-world options (--world solid|lattice)")
            scene = dict(num_classes=5 if args.classes is None else args.classes,
                         distractors=3 if args.distractors is None else args.distractors, flicker=args.flicker)
        if args.world != "lattice":
            scene.update(actors=args.actors, radius=tuple(args.radius), background=args.background,
                         event_radius=args.event_radius, event_speed=tuple(args.event_speed))
        try:
            csv = generate_events(args.output, args.pairs, events=tuple(args.events), num_frames=args.frames,
                                  size=args.size, fps=args.fps, codec=args.codec, seed=args.seed, world=args.world,
                                  progress=True, **scene)
        except ValueError as e:   # a scene the options do not allow (too many or too big objects, ...)
            ap.error(str(e))
        print(f"wrote {csv} in {time.perf_counter() - t0:.1f} s")
    elif args.cmd == "bench":
        print(f"{bench(args):.1f} clips/s")
    elif args.cmd == "latents":
        import json
        import sys
        from engine.builders import build_latent_cache
        from engine.config import ConfigError, load_config
        from engine.data.latents import LatentCacheError
        from engine.runtime.launch import LaunchError, close_distributed, init_distributed, launched_by_launcher

        try:
            rank, device = 0, args.device
            if launched_by_launcher():   # each rank encodes a share of the videos on its own device
                ctx = init_distributed()
                rank, device = ctx.rank, (str(ctx.device) if args.device == "cuda" else args.device)
            summary = build_latent_cache(load_config(args.config, args.overrides), args.output, args.dtype,
                                         overwrite=args.overwrite, progress=True, device=device,
                                         workers=args.workers)
        except (ConfigError, LatentCacheError, LaunchError) as e:
            print(f"{'config error' if isinstance(e, ConfigError) else 'error'}: {e}", file=sys.stderr)
            raise SystemExit(2)
        finally:
            close_distributed()
        if rank == 0:
            print(json.dumps(summary))
    elif args.cmd == "prepare":
        from .prepare import prepare, summary

        index = prepare(args.input, args.output, codec=args.codec, size=args.size or None,
                        shard_size=args.shard_size, workers=args.workers, gop=args.gop,
                        sparse_refs=False if args.dense_refs else None, progress=True)
        print(summary(index))
        print(f"wrote {args.output}/index.json in {time.perf_counter() - t0:.1f} s")
    elif args.cmd == "robot":
        from .sources import generate_robot

        csv = generate_robot(args.output, args.num, num_frames=args.frames, size=args.size, fps=args.fps,
                             codec=args.codec, seed=args.seed, views=args.views, progress=True,
                             **({"policies": args.policies} if args.policies else {}))
        print(f"wrote {csv} in {time.perf_counter() - t0:.1f} s")
    elif args.cmd == "maze":
        from .sources import generate_maze

        csv = generate_maze(args.output, args.num, num_frames=args.frames, size=args.size, fps=args.fps,
                            codec=args.codec, seed=args.seed, progress=True)
        print(f"wrote {csv} in {time.perf_counter() - t0:.1f} s")
    elif args.cmd == "atari":
        from .sources import generate_atari
        from .sources.atari import GAMES

        csv = generate_atari(args.output, args.num, num_frames=args.frames, games=args.games or GAMES,
                             frameskip=args.frameskip, size=args.size, codec=args.codec, seed=args.seed,
                             progress=True)
        print(f"wrote {csv} in {time.perf_counter() - t0:.1f} s")
    else:
        root = generate_images(args.output, args.num, size=args.size, seed=args.seed, progress=True)
        print(f"wrote {args.num} images under {root} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
