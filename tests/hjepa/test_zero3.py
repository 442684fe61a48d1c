"""H-JEPA under DeepSpeed ZeRO-3 on 2 CPU ranks (torchrun, `python -m engine.train --deepspeed`): every
level trains in the shared loop, a run stopped after 2 steps and resumed gives the uninterrupted run's
losses bitwise, and the consolidated checkpoint holds every level."""
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.tiny_runs import HJEPA_RUN, HJEPA_TINY, metric_columns, train_args

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
OVERRIDES = HJEPA_RUN + ["optimization.ipe=4", "optimization.warmup=0"]


def run_pair(maze_csv, outs_steps_resume):
    """Launch each (out, steps, resume) at once: start-up dominates, so the launches overlap."""
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "engine.train", "--deepspeed", "configs/deepspeed/zero3.json",
                               *train_args(HJEPA_TINY, out, OVERRIDES + [f"data.datasets=[{maze_csv}]"],
                                           "--max-steps", str(steps), *(["--resume"] if resume else []))],
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for out, steps, resume in outs_steps_resume]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]


def losses(folder):
    return metric_columns(folder, "loss", "loss_tf", "loss_rollout")


def test_zero3_trains_every_level_and_resumes_exactly(maze_csv, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_pair(maze_csv, [(a, 4, False), (b, 2, False)])
    run_pair(maze_csv, [(b, 4, True)])
    full = losses(a)
    assert [s for s, *_ in full] == [0, 1, 2, 3]
    assert losses(b) == full                              # bitwise, step for step
    from engine.runtime.ds_checkpoint import export_fp32
    out = export_fp32(a / "ds_checkpoints", tmp_path / "a.pt")
    for part in ("encoder", "predictor", "target_encoder"):
        assert {k.split(".")[0] for k in out[part]} == {"level1", "level2"}
    # the level-2 target is a moved EMA copy; the frozen frame encoder is its own target
    l2 = [n for n in out["encoder"] if n.startswith("level2.")]
    assert any(not torch.equal(out["target_encoder"][n], out["encoder"][n]) for n in l2)
    assert all(torch.equal(out["target_encoder"][n], out["encoder"][n]) for n in out["encoder"] if n.startswith("level1."))
