"""Run metrics: one row per optimizer step, written to every configured sink.

    log = MetricsLogger(folder, tensorboard=True, wandb=False)    # or MetricsLogger.from_config(folder, cfg)
    log.csv.truncate_after(step)      # on resume: drop rows the resumed run will write again
    log.write({"step": 3, "loss": 0.52, ...})
    log.close()

Sinks, all behind the same write(row) / close() interface (the training loop logs on rank 0 only):
- CSVLogger: metrics.csv (append-only, fsynced per row, trimmed on resume); always on.
- TensorBoardLogger: events in tb/ (logging.tensorboard).
- WandbLogger: a Weights & Biases run (logging.wandb; project logging.wandb_project); the run id
  is kept in wandb_id so a resumed run continues the same W&B run. WANDB_MODE=offline writes it
  locally (wandb/ in the run folder) for a later `wandb sync`.

Columns (COLUMNS) include the throughput of each step: tokens_per_s (context + target tokens trained
per second), mfu (model FLOPs per second over the device peak, engine.runtime.flops) and
peak_mem_mb (peak allocated on a GPU, peak RSS on CPU).
"""
from __future__ import annotations

import csv
import math
import os
import secrets
from pathlib import Path

from engine.core.io import atomic_write_text

COLUMNS = ("step", "epoch", "itr", "loss", "loss_reg", "loss_std", "loss_cov", "loss_sigreg", "loss_tf", "loss_rollout",
           "lr", "wd", "momentum", "enc_grad_norm", "pred_grad_norm", "ctx_tokens", "tgt_tokens", "step_ms",
           "data_wait_ms", "samples_per_s", "tokens_per_s", "mfu", "peak_mem_mb", "eval_knn_acc", "eval_linear_acc",
           "nonfinite_skipped")

# The run summary's loss is a mean over the last SUMMARY_WINDOW steps (one step's loss is noisy).
SUMMARY_WINDOW = 20


def loss_summary(losses: list[float]) -> dict:
    """first_loss, last_loss and mean_loss_last_20 (its key names its window) of a run's step losses."""
    tail = losses[-SUMMARY_WINDOW:]
    return {"first_loss": losses[0] if losses else math.nan, "last_loss": losses[-1] if losses else math.nan,
            f"mean_loss_last_{SUMMARY_WINDOW}": sum(tail) / len(tail) if tail else math.nan}


def _csv_lines(rows) -> str:
    return "".join(",".join(r.get(c) or "" for c in COLUMNS) + "\n" for r in rows)


class CSVLogger:
    HEADER = ",".join(COLUMNS) + "\n"

    def __init__(self, folder: Path):
        self.path = folder / "metrics.csv"
        if not self.path.exists():
            atomic_write_text(self.path, self.HEADER)

    def truncate_after(self, step: int) -> None:
        """Keep only rows with step < `step` (a resumed run rewrites the rest); the rows taken out are
        appended to metrics.replaced.csv, so no logged row is ever lost."""
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        gone = [r for r in rows if int(r["step"]) >= step]
        if gone:
            replaced = self.path.with_name(self.path.stem + ".replaced.csv")
            header = "" if replaced.exists() else self.HEADER
            with open(replaced, "a") as f:
                f.write(header + _csv_lines(gone))
        atomic_write_text(self.path, self.HEADER + _csv_lines(r for r in rows if int(r["step"]) < step))

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            cells = (row.get(c, "") for c in COLUMNS)
            f.write(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in cells) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        pass


class TensorBoardLogger:
    def __init__(self, folder: Path):
        from torch.utils.tensorboard import SummaryWriter
        self._tb = SummaryWriter(log_dir=str(folder / "tb"))

    def write(self, row: dict) -> None:
        for k, v in _numbers(row):
            self._tb.add_scalar(f"train/{k}", v, row["step"])

    def close(self) -> None:
        self._tb.close()


class WandbLogger:
    def __init__(self, folder: Path, project: str, config: dict | None = None):
        try:
            import wandb
        except ImportError:
            raise ImportError("logging.wandb: true needs the wandb package: pip install wandb "
                              "(or the [wandb] extra), or set logging.wandb: false") from None
        id_file = folder / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        self._run = wandb.init(project=project, id=run_id, resume="allow", dir=str(folder), config=config,
                               name=folder.name)
        if not id_file.exists():
            atomic_write_text(id_file, run_id + "\n")

    def write(self, row: dict) -> None:
        self._run.log({f"train/{k}": v for k, v in _numbers(row)}, step=int(row["step"]))

    def close(self) -> None:
        self._run.finish()


class MetricsLogger:
    """The CSV plus TensorBoard and W&B when enabled."""

    def __init__(self, folder, tensorboard: bool = True, wandb: bool = False, wandb_project: str = "jepa-engine",
                 config: dict | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.csv = CSVLogger(self.folder)
        self.sinks = [self.csv]
        if tensorboard:
            self.sinks.append(TensorBoardLogger(self.folder))
        if wandb:
            self.sinks.append(WandbLogger(self.folder, wandb_project, config))

    @classmethod
    def from_config(cls, folder, cfg) -> "MetricsLogger":
        lg = cfg.logging
        return cls(folder, tensorboard=lg.tensorboard, wandb=lg.wandb, wandb_project=lg.wandb_project,
                   config=cfg.to_dict())

    def write(self, row: dict) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"MetricsLogger: unknown columns {sorted(unknown)}")
        for sink in self.sinks:
            sink.write(row)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def _numbers(row: dict):
    return [(k, v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))]


def plot_loss(metrics_csv, png_path) -> None:
    """Write a PNG of the loss curve (and a running mean) from metrics.csv."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    step = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(step, loss, lw=0.8, alpha=0.5, label="loss")
    k = max(1, len(loss) // 20)
    if len(loss) > k:
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(step[k - 1:], smooth, lw=2, label=f"mean of {k}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("JEPA loss")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = Path(png_path).with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)
