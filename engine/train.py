"""Entry point: train a JEPA model from a YAML config.

    python -m engine.train --config configs/tiny_cpu.yaml [--set section.key=value ...]
                           [--output DIR] [--max-steps N] [--resume | --overwrite]
    deepspeed --num_gpus N --module engine.train --config ... --deepspeed configs/deepspeed/zero3.json
        [--grad-accum K] [--offload-optimizer]      (on CPU: DS_ACCELERATOR=cpu; torchrun works too)

`--max-steps` stops after N optimizer steps whatever the schedules say (they keep their length, so a
stopped run can be resumed and continues exactly). The output folder gets config.yaml, metrics.csv,
TensorBoard events (tb/), loss.png and checkpoints/ with an atomically written `latest` pointer.
A folder that already holds a run is refused unless `--resume` (continue it) or `--overwrite` (replace it).
User errors (config, data, folders, checkpoints, a full disk) are one line on stderr and exit code 2;
under a launcher each rank logs its own failure, with its rank, before the launcher stops the job.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from engine.config import ConfigError, load_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m engine.train", description=__doc__.split("\n")[0])
    p.add_argument("--config", "--fname", dest="config", required=True,
                   help="YAML run config (reference layout); --fname as in the reference's app.main")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value (repeatable), e.g. --set optimization.lr=1e-3")
    p.add_argument("--output", help="output folder (default: logging.folder, else runs/<write_tag>)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--resume", action="store_true", help="continue from the output folder's latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run the output folder holds")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--devices", nargs="+", metavar="DEVICE",
                   help="the reference app.main's spelling of --device; one device per process (several: use a launcher)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by launchers
    p.add_argument("--deepspeed", metavar="CONFIG.json",
                   help="train with DeepSpeed (e.g. configs/deepspeed/zero3.json); implied with zero0.json "
                        "when a launcher (deepspeed, torchrun) started this process")
    p.add_argument("--grad-accum", type=int, help="DeepSpeed: micro-batches per optimizer step (overrides the JSON)")
    p.add_argument("--offload-optimizer", action="store_true", help="DeepSpeed: keep optimizer state on the CPU")
    args = p.parse_args(argv)
    if args.devices:
        if len(args.devices) > 1:
            p.error(f"--devices {' '.join(args.devices)}: one process trains on one device; for "
                    f"{len(args.devices)} start one process per device with a launcher, e.g. "
                    f"torchrun --nproc_per_node {len(args.devices)} -m engine.train --config ...")
        args.device = args.devices[0]
    return args


def output_dir(cfg, arg) -> Path:
    if arg:
        return Path(arg)
    if cfg.logging.folder:
        return Path(cfg.logging.folder)
    if cfg.folder:
        return Path(cfg.folder)
    return Path("runs") / cfg.logging.write_tag


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from engine.runtime.errors import EXIT_USER_ERROR, RunError
    try:
        return _run(args)
    except (ConfigError, RunError) as e:
        kind = "config error" if isinstance(e, ConfigError) else "error"
        print(f"{_rank_prefix()}{kind}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR)
    except Exception as e:
        # A bug or a fault: the traceback follows, but first one line that says which rank failed and why,
        # so that under a launcher the failing rank, not the survivor it tears down, is on record.
        if _rank_prefix():
            print(f"{_rank_prefix()}failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        raise


def _rank_prefix() -> str:
    from engine.runtime.launch import launched_by_launcher
    if not launched_by_launcher():
        return ""
    import os
    return f"[rank {os.environ.get('RANK', '?')}/{os.environ.get('WORLD_SIZE', '?')}] "


def _run(args) -> dict:
    cfg = load_config(args.config, args.overrides)
    if args.max_steps is not None and args.max_steps < 0:
        raise ConfigError("--max-steps must be >= 0")
    if cfg.ignored_keys:
        logging.getLogger("engine.train").info("ignored keys (launcher-only, or read by no reference trainer): %s",
                                               ", ".join(cfg.ignored_keys))
    out = output_dir(cfg, args.output)
    from engine.runtime.launch import LaunchError, launched_by_launcher
    from engine.runtime.rundir import check_output
    from engine.eval.periodic import PeriodicProbe
    from engine.runtime.trainer import Trainer
    # Many ranks (or one, under a launcher): the DeepSpeed backend. A broken launch raises LaunchError,
    # never falls back to one process.
    deepspeed = (args.deepspeed or 0) if args.deepspeed or launched_by_launcher() else None
    if deepspeed is None and (args.grad_accum or args.offload_optimizer):
        raise ConfigError("--grad-accum / --offload-optimizer: DeepSpeed only; add --deepspeed configs/deepspeed/zeroN.json")
    if deepspeed is None:
        check_output(out)   # before the data set is built: a wrong --output is the cheaper error to hear first
    probe = PeriodicProbe.from_config(cfg)   # meta.eval_freq
    try:
        trainer = Trainer(cfg, out, device=args.device, progress=not args.no_progress, deepspeed=deepspeed,
                          grad_accum=args.grad_accum, offload_optimizer=args.offload_optimizer,
                          evaluate=probe.maybe if probe is not None else None)
    except LaunchError as e:
        print(f"launch error: {e}", file=sys.stderr)
        raise SystemExit(3)
    summary = trainer.fit(max_steps=args.max_steps, resume=args.resume, overwrite=args.overwrite)
    summary.pop("losses", None)
    if trainer.rank == 0:
        print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    from engine.runtime.faults import ignore_repeats_after_a_stop
    ignore_repeats_after_a_stop()
    main()
