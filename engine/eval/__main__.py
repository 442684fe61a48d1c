"""Frozen evaluations of an encoder, from an eval config (the reference layouts: engine.eval.config).

    python -m engine.eval probe  --config configs/eval/tiny_probe.yaml [--set a.b=v] [--output DIR] [--random-init]
    python -m engine.eval knn    --config ...      # cosine kNN on pooled features (experiment.knn: k, temperature)
    python -m engine.eval linear --config ...      # linear classifier on pooled features
    python -m engine.eval embed  --config ... [--split val]     # pooled embeddings -> HiPlot HTML + PCA PNG
    python -m engine.eval anomaly --config configs/tiny_cpu.yaml --checkpoint runs/demo --data videos.csv \
        [--mode future|masked] [--masks 8] [--context STEPS|all ...] [--start 1] [--events NAME.events.csv]
        [--output DIR] [--random-init]
        # per-clip and per-token surprise (engine.eval.anomaly) -> surprise.csv, token_surprise.npy, and
        # with labels (1 = anomalous) ROC AUC of the model's surprise and of the pixel-difference baseline;
        # with --events the matched pairs' accuracy and relative AUC per event type

probe, knn and linear read the same cached features (folder/features/), so running all three extracts
them once; each writes its result as folder/<command>.json and prints the best accuracy. Under a launcher
(`deepspeed --num_gpus N --module engine.eval probe ...`, torchrun, srun) the ranks extract the features
together (each its share of the samples, into the one cache) and rank 0 trains and writes the results.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from engine.config import ConfigError
from engine.core.state import ReferenceCheckpointError


def _common(p):
    p.add_argument("--config", required=True, help="eval YAML (V-JEPA or V-JEPA 2 layout)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="a.b.c=value override")
    p.add_argument("--output", default=None, help="output folder (default: the config's folder)")
    p.add_argument("--random-init", action="store_true", help="an untrained encoder of the same architecture")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)   # the deepspeed launcher's


def _setup(args):
    from engine.eval.config import load_eval_config
    from engine.eval.features import build_encoder, feature_sources
    from engine.runtime.launch import init_distributed, launched_by_launcher
    ec = load_eval_config(args.config, args.overrides)
    folder = Path(args.output or ec.output_folder or "runs/eval")
    folder.mkdir(parents=True, exist_ok=True)
    if ec.ignored_keys:
        print(f"ignored (launcher keys): {', '.join(ec.ignored_keys)}")
    rank = 0
    if launched_by_launcher():   # each rank extracts its share of the features; rank 0 evaluates
        rank = init_distributed().rank
    encoder = build_encoder(ec, random_init=args.random_init, seed=args.seed)
    train, val = feature_sources(ec, encoder, folder, random_init=args.random_init, seed=args.seed,
                                 log=print if rank == 0 else (lambda *_: None))
    if rank != 0:
        raise _SharedDone
    return ec, folder, encoder, train, val


class _SharedDone(Exception):
    """A rank other than 0 has written its share of the features: nothing more for it to do."""


def _write(folder: Path, name: str, result: dict) -> None:
    from engine.core.io import atomic_write_text
    atomic_write_text(folder / f"{name}.json", json.dumps(result, indent=2))


def cmd_probe(args) -> dict:
    from engine.eval.features import num_classes_of
    from engine.eval.grid import train_grid
    ec, folder, encoder, train, val = _setup(args)
    o = ec.optimization
    C = num_classes_of(ec, train.y, val.y)
    dim = encoder.embed_dim
    heads = ec.classifier.num_heads or encoder.num_heads
    t0 = time.perf_counter()

    def log(epoch, hist):
        accs = [h["val_acc"][-1] for h in hist]
        print(f"epoch {epoch + 1}/{o.num_epochs}: val acc best {max(accs):.4f} (probe {accs.index(max(accs))}), "
              f"mean {sum(accs) / len(accs):.4f}", flush=True)

    r = train_grid(train, val, heads=ec.heads, embed_dim=dim, num_heads=heads, num_classes=C,
                   depth=ec.classifier.num_probe_blocks, layout=ec.classifier.layout, epochs=o.num_epochs,
                   batch_size=o.batch_size, attend_across_segments=o.attend_across_segments,
                   dtype=torch.bfloat16 if o.use_bfloat16 else torch.float32, seed=args.seed, log=log)
    r.pop("classifiers")
    r.update(num_classes=C, train_samples=len(train), val_samples=len(val), seconds=round(time.perf_counter() - t0, 1),
             random_init=args.random_init)
    _write(folder, "probe", r)
    print(f"attentive probe: best val acc {r['best']['val_acc']:.4f} with {r['best']['setting']} "
          f"({len(ec.heads)} settings; {folder / 'probe.json'})")
    return r


def cmd_knn(args) -> dict:
    from engine.eval.features import num_classes_of, pooled
    from engine.eval.knn import knn_classify
    ec, folder, _, train, val = _setup(args)
    (tr_x, tr_y), (va_x, va_y) = pooled(train), pooled(val)
    acc, _ = knn_classify(tr_x, tr_y, va_x, va_y, k=ec.knn.k, temperature=ec.knn.temperature,
                          num_classes=num_classes_of(ec, tr_y, va_y))
    r = {"val_acc": acc, "k": ec.knn.k, "temperature": ec.knn.temperature, "random_init": args.random_init}
    _write(folder, "knn", r)
    print(f"kNN (k={ec.knn.k}, T={ec.knn.temperature}): val acc {acc:.4f}")
    return r


def cmd_linear(args) -> dict:
    from engine.eval.features import num_classes_of, pooled
    from engine.eval.probe import train_linear_probe
    ec, folder, _, train, val = _setup(args)
    (tr_x, tr_y), (va_x, va_y) = pooled(train), pooled(val)
    r = train_linear_probe(tr_x[:, None], tr_y, va_x[:, None], va_y, num_classes_of(ec, tr_y, va_y))
    r["random_init"] = args.random_init
    _write(folder, "linear", r)
    print(f"linear probe: val acc {r['val_acc']:.4f}")
    return r


def _clip_starts(dataset) -> list[int]:
    """The first frame of each sample's first clip (test-time sampling draws nothing at random)."""
    import numpy as np
    from engine.data.video import VideoReader
    starts = []
    for path in dataset.paths:
        try:
            with VideoReader(path) as vr:
                starts.append(int(dataset.sample_indices(vr, np.random.default_rng(0))[0][0]))
        except Exception:  # noqa: BLE001 -- an unreadable file was skipped by the loader too
            starts.append(-1)
    return starts


def cmd_embed(args) -> dict:
    from engine.eval.embed import embedding_rows, write_hiplot, write_pca_png
    from engine.eval.features import pooled
    ec, folder, _, train, val = _setup(args)
    from engine.eval.features import split_dataset
    ds = split_dataset(ec, args.split, train_augment=False)
    x, y = pooled(val if args.split == "val" else train)
    starts = None if ec.is_image else _clip_starts(ds)
    rows = embedding_rows(x, y, ds.paths, starts)
    tag = "_random_init" if args.random_init else ""
    html = write_hiplot(rows, folder / f"embed_{args.split}{tag}.html")
    png = write_pca_png(x, y, folder / f"embed_{args.split}{tag}_pca.png")
    print(f"embeddings of {len(rows)} samples: {html} (HiPlot; open in a browser), {png}")
    return {"html": str(html), "png": str(png), "rows": len(rows)}


def cmd_anomaly(args) -> dict:
    import numpy as np
    from engine.config import load_config
    from engine.eval.anomaly import (BASELINES, SCORES, load_jepa, pair_scores, read_events, roc_auc, score_dataset,
                                     surprise_dataset)
    from engine.core.io import atomic_write_text
    cfg = load_config(args.config, args.overrides)
    if args.start < 1 or (args.start != 1 and args.mode != "future"):
        raise ConfigError(f"--start {args.start}: the first scored time step of future mode, >= 1 (frame 0 is never "
                          f"predicted)" + ("" if args.mode == "future" else f"; --mode {args.mode} scores its masks"))
    folder = Path(args.output or "runs/anomaly")
    folder.mkdir(parents=True, exist_ok=True)
    model = load_jepa(cfg, args.checkpoint, random_init=args.random_init, seed=args.seed)
    ds = surprise_dataset(cfg, args.data)
    events = read_events(args.events) if args.events else None
    if events is not None and (missing := [p for p in ds.paths if p not in events]):
        raise ConfigError(f"--events: {args.events} does not list {missing[0]} (and {len(missing) - 1} more) of "
                          f"--data; pass the NAME.events.csv written beside the generator's NAME.csv")
    t0 = time.perf_counter()
    r = score_dataset(model, cfg, ds, mode=args.mode, num_masks=args.masks, batch_size=args.batch_size,
                      num_workers=args.num_workers, seed=args.seed, context=args.context, start=args.start)
    keys = (*SCORES, *BASELINES)
    lines = ["path,label," + ",".join(f"surprise_{k}" for k in SCORES) + ",pixel_difference,pixel_jump\n"]
    for i, path in enumerate(ds.paths):
        lines.append(f"{path},{int(r['labels'][i])}," + ",".join(f"{float(r[k][i]):.6g}" for k in keys) + "\n")
    atomic_write_text(folder / "surprise.csv", "".join(lines))
    np.save(folder / "token_surprise.npy", r["token_err"].numpy())
    out = {"clips": len(ds), "mode": args.mode, "masks": args.masks if args.mode == "masked" else None,
           "context": args.context, "start": args.start, "random_init": args.random_init,
           "seconds": round(time.perf_counter() - t0, 1)}
    labels = r["labels"].numpy()
    both_labels = len(set(labels.tolist())) == 2
    if both_labels:
        out["roc_auc"] = {k: roc_auc(r[k].numpy(), labels) for k in keys}
        print("ROC AUC (label 1 = anomalous): " + ", ".join(f"{k} {v:.3f}" for k, v in out["roc_auc"].items()))
    if events is not None:
        kinds = sorted({events[p][0] for p in ds.paths})
        pairs = np.array([events[p][1] for p in ds.paths])
        out["pairs"] = {}
        for kind in ["all", *kinds]:
            sel = np.array([kind == "all" or events[p][0] == kind for p in ds.paths])
            out["pairs"][kind] = {k: pair_scores(r[k].numpy()[sel], labels[sel], pairs[sel]) for k in keys}
            print(f"pairs ({kind}): " + ", ".join(f"{k} acc {v['pair_acc']:.3f} relative AUC {v['relative_auc']:.3f}"
                                                  for k, v in out["pairs"][kind].items()))
        if both_labels:
            # the clip-level AUC of one event: its impossible clips against every possible clip
            out["roc_auc_by_event"] = {}
            for kind in kinds:
                sel = np.array([lab == 0 or events[p][0] == kind for p, lab in zip(ds.paths, labels.tolist())])
                out["roc_auc_by_event"][kind] = {k: roc_auc(r[k].numpy()[sel], labels[sel]) for k in keys}
                print(f"ROC AUC ({kind} against all possible clips): "
                      + ", ".join(f"{k} {v:.3f}" for k, v in out["roc_auc_by_event"][kind].items()))
    _write(folder, "anomaly", out)
    print(f"surprise of {len(ds)} clips: {folder / 'surprise.csv'}, per token: {folder / 'token_surprise.npy'}")
    return out


def _context_window(text: str):
    """--context values: a positive number of time steps, or 'all' (None: every step before)."""
    return None if text == "all" else int(text)


COMMANDS = {"probe": cmd_probe, "knn": cmd_knn, "linear": cmd_linear, "embed": cmd_embed, "anomaly": cmd_anomaly}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m engine.eval", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("probe", "knn", "linear", "embed"):
        sp = sub.add_parser(name)
        _common(sp)
        if name == "embed":
            sp.add_argument("--split", choices=("train", "val"), default="val")
    a = sub.add_parser("anomaly", help="surprise of a trained JEPA on each clip of a CSV")
    a.add_argument("--config", required=True, help="the model's training config")
    a.add_argument("--set", dest="overrides", action="append", default=[])
    a.add_argument("--checkpoint", default=None, help="a training checkpoint or run folder")
    a.add_argument("--data", required=True, help="CSV of 'path label' lines (label 1 = anomalous)")
    a.add_argument("--mode", choices=("future", "masked"), default="future")
    a.add_argument("--masks", type=int, default=8, help="masks per clip (masked mode)")
    a.add_argument("--context", type=_context_window, nargs="+", default=[None],
                   help="future mode: time steps of context before each predicted step, or 'all' (default); "
                        "several windows: each token's surprise is averaged over them")
    a.add_argument("--start", type=int, default=1,
                   help="future mode: the first time step scored, the ones before it context only (default 1)")
    a.add_argument("--events", default=None,
                   help="the generator's NAME.events.csv: matched-pair accuracy and relative AUC per event")
    a.add_argument("--batch-size", type=int, default=16)
    a.add_argument("--num-workers", type=int, default=0)
    a.add_argument("--output", default=None)
    a.add_argument("--random-init", action="store_true")
    a.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except _SharedDone:
        return None
    except (ConfigError, FileNotFoundError, ReferenceCheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
