"""The small runs the tests share: shrunk versions of the tiny CPU configs, engine.train's argument list
for them, and their metrics.csv read back.

    cfg = load_config(VJEPA_TINY, VJEPA_SMALL + ["optimization.epochs=2"])
    main(train_args(HJEPA_TINY, out, HJEPA_RUN + [f"data.datasets=[{csv}]"], "--max-steps", "4"))
    metric_columns(out, "loss", "loss_tf")       # [(step, loss, loss_tf), ...] as written (text)
"""
from __future__ import annotations

import csv
from pathlib import Path

VJEPA_TINY = "configs/tiny_cpu.yaml"
HJEPA_TINY = "configs/hjepa_tiny_cpu.yaml"

# V-JEPA: encoder depth 2 width 48, predictor depth 1 width 32, batch 4, 4 steps per epoch.
VJEPA_SMALL = ["model.depth=2", "model.embed_dim=48", "model.num_heads=2", "model.pred_depth=1",
               "model.pred_embed_dim=32", "model.pred_num_heads=2", "data.batch_size=4", "data.num_workers=0",
               "optimization.ipe=4", "optimization.warmup=1", "logging.tensorboard=false"]

# H-JEPA: the tiny config's two levels with one-block upper encoders and predictors.
HJEPA_SMALL = ["model.pred_depth=1", "hierarchy.depth=1", "hierarchy.pred_depth=1", "hierarchy.embed_dim=32",
               "hierarchy.num_heads=2", "hierarchy.pred_embed_dim=48", "hierarchy.pred_num_heads=2"]
# ... trained briefly: batch 2, 2 epochs, a checkpoint every 2 steps (the caller sets ipe and warm-up).
HJEPA_RUN = HJEPA_SMALL + ["data.batch_size=2", "data.num_workers=0", "optimization.epochs=2",
                           "meta.checkpoint_every=2", "logging.tensorboard=false"]


def train_args(config: str, out, overrides, *extra) -> list[str]:
    """engine.train's argv: the config, each override as --set, the output folder, no progress bar, `extra`."""
    sets = [a for o in overrides for a in ("--set", o)]
    return ["--config", config, *sets, "--output", str(out), "--no-progress", *extra]


def metric_columns(folder, *names) -> list[tuple]:
    """(step, *the named columns as written) for each row of folder/metrics.csv."""
    with open(Path(folder) / "metrics.csv") as f:
        return [(int(r["step"]), *(r[n] for n in names)) for r in csv.DictReader(f)]
