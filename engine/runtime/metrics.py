"""Run metrics: a CSV per rank (append-only, trimmed on resume) and TensorBoard events.

    log = MetricsLogger(folder, tag="jepa", rank=0, tensorboard=True)
    log.truncate_after(step)          # on resume: drop rows the resumed run will write again
    log.write({"step": 3, "loss": 0.52, ...})
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

from engine.runtime.io import atomic_write_text

COLUMNS = ("step", "epoch", "itr", "loss", "loss_reg", "loss_std", "loss_cov", "loss_sigreg", "loss_tf", "loss_rollout", "lr", "wd", "momentum", "enc_grad_norm", "pred_grad_norm",
           "ctx_tokens", "tgt_tokens", "step_ms", "data_wait_ms", "samples_per_s", "eval_knn_acc", "eval_linear_acc")


class MetricsLogger:
    def __init__(self, folder, tag: str = "jepa", rank: int = 0, tensorboard: bool = True):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / ("metrics.csv" if rank == 0 else f"metrics_r{rank}.csv")
        self.rank = rank
        self._tb = None
        if tensorboard and rank == 0:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(log_dir=str(self.folder / "tb"))
        if not self.path.exists():
            atomic_write_text(self.path, ",".join(COLUMNS) + "\n")

    def truncate_after(self, step: int) -> None:
        """Keep only rows with step < `step` (a resumed run rewrites the rest); the rows taken out are
        appended to metrics.replaced.csv, so no logged row is ever lost."""
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if int(r["step"]) < step]
        gone = [r for r in rows if int(r["step"]) >= step]
        if gone:
            replaced = self.path.with_name(self.path.stem + ".replaced.csv")
            new = not replaced.exists()
            with open(replaced, "a") as f:
                f.write((",".join(COLUMNS) + "\n" if new else "")
                        + "".join(",".join(r.get(c, "") for c in COLUMNS) + "\n" for r in gone))
        lines = [",".join(COLUMNS)] + [",".join(r.get(c, "") for c in COLUMNS) for r in keep]
        atomic_write_text(self.path, "\n".join(lines) + "\n")

    def write(self, row: dict) -> None:
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise KeyError(f"MetricsLogger: unknown columns {sorted(unknown)}")
        with open(self.path, "a") as f:
            f.write(",".join(_fmt(row.get(c, "")) for c in COLUMNS) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, row["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def read_metrics(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_loss(metrics_csv, png_path) -> None:
    """Write a PNG of the loss curve (and a running mean) from metrics.csv."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = read_metrics(metrics_csv)
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
