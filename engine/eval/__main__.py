"""Frozen evaluations of an encoder, from an eval config (the reference layouts: engine.eval.config).

    python -m engine.eval probe  --config configs/eval/tiny_probe.yaml [--set a.b=v] [--output DIR] [--random-init]
    python -m engine.eval knn    --config ...      # cosine kNN on pooled features (experiment.knn: k, temperature)
    python -m engine.eval linear --config ...      # linear classifier on pooled features
    python -m engine.eval embed  --config ... [--split val]     # pooled embeddings -> HiPlot HTML + PCA PNG
    python -m engine.eval anomaly --config configs/tiny_cpu.yaml --checkpoint runs/demo --data videos.csv

probe, knn and linear read the same cached features (folder/features/), so running all three extracts
them once; each writes its result as folder/<command>.json and prints the best accuracy.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from engine.config import ConfigError


def _common(p):
    p.add_argument("--config", required=True, help="eval YAML (V-JEPA or V-JEPA 2 layout)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="a.b.c=value override")
    p.add_argument("--output", default=None, help="output folder (default: the config's folder)")
    p.add_argument("--random-init", action="store_true", help="an untrained encoder of the same architecture")
    p.add_argument("--seed", type=int, default=0)


def _setup(args):
    from engine.eval.config import load_eval_config
    from engine.eval.features import build_encoder, feature_sources
    ec = load_eval_config(args.config, args.overrides)
    folder = Path(args.output or ec.output_folder or "runs/eval")
    folder.mkdir(parents=True, exist_ok=True)
    if ec.ignored_keys:
        print(f"ignored (launcher keys): {', '.join(ec.ignored_keys)}")
    encoder = build_encoder(ec, random_init=args.random_init, seed=args.seed)
    train, val = feature_sources(ec, encoder, folder, random_init=args.random_init, seed=args.seed)
    return ec, folder, encoder, train, val


def _write(folder: Path, name: str, result: dict) -> None:
    from engine.runtime.io import atomic_write_text
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


COMMANDS = {"probe": cmd_probe, "knn": cmd_knn, "linear": cmd_linear}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m engine.eval", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        _common(sub.add_parser(name))
    args = p.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
