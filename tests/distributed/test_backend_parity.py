"""One loop, two backends: the same tiny config trained with the local backend (one process) and with
DeepSpeed (ZeRO-0, 1 CPU rank) logs the same metric columns, clips the same way (per module, after the
warm-up: the clip fires here from step 2 on) and gives the same losses; a start from a checkpoint
(meta.read_checkpoint, under ZeRO-0 and ZeRO-2) and the epoch copies (meta.save_every_freq) work under both."""
import csv
import math
from pathlib import Path

import pytest
import torch

from tests.distributed.spawn import run_ranks
from tests.distributed.tiny import RandomClips, tiny_cfg

CLIP = 0.05
OVERRIDES = ["optimization.ipe=2", "optimization.epochs=3", "optimization.warmup=0", f"optimization.clip_grad={CLIP}",
             "optimization.start_lr=0.005", "optimization.lr=0.01", "optimization.eps=1e-6", "meta.save_every_freq=1"]


def _train(out, deepspeed, start_from=None):
    from engine.runtime.trainer import Trainer
    cfg = tiny_cfg(OVERRIDES)
    steps = 6
    if start_from is not None:
        cfg = tiny_cfg(OVERRIDES + ["optimization.epochs=4", "meta.load_checkpoint=true",
                                    f"meta.read_checkpoint={start_from}"])
        steps = 8
    tr = Trainer(cfg, out, progress=False, dataset=RandomClips(cfg), deepspeed=deepspeed)
    return tr.fit(max_steps=steps)["losses"]


def _both(rank, root):
    start = f"{root}/local/checkpoints/step_0000006.pt"
    return {"run": _train(f"{root}/ds", 0), "start": _train(f"{root}/ds_start", 0, start_from=start),
            "start_z2": _train(f"{root}/ds_start_z2", 2, start_from=start)}


def _rows(out):
    with open(Path(out) / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    local = {"run": _train(root / "local", None),
             "start": _train(root / "local_start", None, start_from=root / "local/checkpoints/step_0000006.pt")}
    [ds] = run_ranks(_both, 1, args=(str(root),), timeout_s=300)
    return root, local, ds


def test_the_same_metric_columns(runs):
    root, _, _ = runs
    filled = {}
    for name in ("local", "ds"):
        rows = _rows(root / name)
        assert [int(r["step"]) for r in rows] == list(range(6))
        filled[name] = {c for c in rows[0] if all(r[c] != "" for r in rows)}
    assert filled["local"] == filled["ds"]
    assert {"loss", "enc_grad_norm", "pred_grad_norm", "tokens_per_s", "mfu", "peak_mem_mb", "ctx_tokens",
            "nonfinite_skipped"} <= filled["ds"]


def test_the_same_losses_and_per_module_clipping(runs):
    root, local, ds = runs
    torch.testing.assert_close(torch.tensor(ds["run"]), torch.tensor(local["run"]), rtol=1e-5, atol=0)
    a, b = _rows(root / "local"), _rows(root / "ds")
    for key in ("enc_grad_norm", "pred_grad_norm"):
        torch.testing.assert_close(torch.tensor([float(r[key]) for r in b]), torch.tensor([float(r[key]) for r in a]),
                                   rtol=1e-4, atol=0, msg=lambda m: f"{key}: {m}")
    # after the warm-up (epoch 0 here) the predictor's norm is over the clip and the encoder's under it:
    # per-module clipping scales only the predictor's gradient (one global norm would scale both)
    after = [r for r in a if int(r["epoch"]) > 0]
    assert after and all(float(r["pred_grad_norm"]) > CLIP > float(r["enc_grad_norm"]) for r in after)
    assert all(math.isfinite(float(r["loss"])) for r in a + b)


def test_start_from_a_checkpoint_and_epoch_copies(runs):
    root, local, ds = runs
    assert len(local["start"]) == len(ds["start"]) == 2     # steps 6 and 7: started at epoch 3
    # weights, target and Adam's moments and step: into torch AdamW (ZeRO-0) and into ZeRO-2's partitions
    for key in ("start", "start_z2"):
        torch.testing.assert_close(torch.tensor(ds[key]), torch.tensor(local["start"]), rtol=1e-5, atol=0)
    assert sorted(p.name for p in (root / "local" / "checkpoints").glob("e*.pt")) == ["e0.pt", "e1.pt", "e2.pt"]
    assert sorted(p.name for p in (root / "ds" / "ds_checkpoints").glob("e*")) == ["e0", "e1", "e2"]
    assert (root / "ds" / "ds_checkpoints" / "latest").read_text().strip() == "step_0000006"
