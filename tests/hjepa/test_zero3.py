"""H-JEPA under DeepSpeed ZeRO-3 on 2 CPU ranks (torchrun, `python -m engine.train --deepspeed`): every
level trains in the shared loop, a run stopped after 2 steps and resumed gives the uninterrupted run's
losses bitwise, and the consolidated checkpoint holds every level."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
SMALL = ["model.pred_depth=1", "hierarchy.depth=1", "hierarchy.pred_depth=1", "hierarchy.embed_dim=32",
         "hierarchy.num_heads=2", "hierarchy.pred_embed_dim=48", "hierarchy.pred_num_heads=2", "data.batch_size=2",
         "data.num_workers=0", "optimization.ipe=4", "optimization.epochs=2", "optimization.warmup=0",
         "meta.checkpoint_every=2", "logging.tensorboard=false"]


@pytest.fixture(scope="module")
def maze_csv(tmp_path_factory):
    from engine.datagen.sources import generate_maze
    return generate_maze(tmp_path_factory.mktemp("maze"), 4, num_frames=14, size=32, seed=0)


def run_pair(maze_csv, outs_steps_resume):
    """Launch each (out, steps, resume) at once: start-up dominates, so the launches overlap."""
    sets = [a for o in SMALL + [f"data.datasets=[{maze_csv}]"] for a in ("--set", o)]
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               "-m", "engine.train", "--config", "configs/hjepa_tiny_cpu.yaml", "--deepspeed",
                               "configs/deepspeed/zero3.json", "--output", str(out), "--max-steps", str(steps),
                               "--no-progress", *sets, *(["--resume"] if resume else [])],
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for out, steps, resume in outs_steps_resume]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]


def losses(folder):
    with open(folder / "metrics.csv") as f:
        return [(int(r["step"]), r["loss"], r["loss_tf"], r["loss_rollout"]) for r in csv.DictReader(f)]


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
