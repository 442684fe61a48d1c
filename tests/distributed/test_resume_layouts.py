"""A DeepSpeed run folder: a failing rank says so itself, a wrong launch is refused before DeepSpeed
loads, and one process resumes it (converted) without losing its history.

One 2-rank ZeRO-3 launch (torchrun, the real tiny V-JEPA) whose rank 0 fails at step 3, after the
checkpoint of step 2, feeds every test here.
"""
import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from engine.runtime.launch import run_local

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests.distributed.tiny_train", "--out", str(out), "--stage", "3", "--steps", "6", "--every", "2"]
    p = subprocess.run(cmd, cwd=ROOT, env={**ENV, "JEPA_FAULT_RAISE": "0:3"}, capture_output=True, text=True,
                       timeout=240)
    return out, p


def _rows(out):
    with open(out / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_the_failing_rank_logs_its_rank_and_cause(failed_run):
    out, p = failed_run
    assert p.returncode != 0
    text = p.stdout + p.stderr
    assert "rank 0/2 failed at step 3: RuntimeError: JEPA_FAULT_RAISE: injected failure" in text, text[-3000:]
    assert (out / "ds_checkpoints" / "latest").read_text().strip() == "step_0000002"
    assert _rows(out) == [0, 1, 2]


def _resume_on_one_rank(rank, out):
    from engine.builders import build_mask_sampler
    from engine.runtime.trainer import Trainer
    from engine.runtime.errors import RunError
    from tests.distributed.tiny import RandomClips, build_tiny, tiny_cfg
    cfg = tiny_cfg(["meta.checkpoint_every=2"])
    tr = Trainer(cfg, out, deepspeed=3, model=build_tiny(cfg), dataset=RandomClips(cfg),
                   mask_sampler=build_mask_sampler(cfg), progress=False, timeout_s=60)
    try:
        tr.fit(max_steps=6, resume=True)
    except RunError as e:
        return str(e)
    return None


def test_a_per_rank_data_stream_cannot_move_to_another_world_size(failed_run, tmp_path):
    """What a launch with another world size still refuses (engine.runtime.reshard resumes the rest): a
    loader that deals samples per rank (tar shards) has no global position to continue from."""
    import shutil
    out = Path(shutil.copytree(failed_run[0], tmp_path / "run"))
    for f in (out / "ds_checkpoints" / "step_0000002").glob("client_rank*.pt"):
        state = torch.load(f, weights_only=False)
        del state["loader"]["start_sample"]           # as a tar-shard loader's state is
        torch.save(state, f)
    before = (out / "metrics.csv").read_bytes()
    [msg] = run_local(_resume_on_one_rank, world_size=1, args=(str(out),), timeout_s=180)
    assert msg is not None and "2 ranks" in msg and "deals samples per rank" in msg and "relaunch with 2 rank" in msg
    assert (out / "metrics.csv").read_bytes() == before


def test_one_process_resumes_a_zero3_run_converted(failed_run, tmp_path):
    import shutil
    from engine.runtime.ds_checkpoint import export_fp32
    from engine.runtime.trainer import Trainer
    from tests.distributed.tiny import RandomClips, tiny_cfg
    out = Path(shutil.copytree(failed_run[0], tmp_path / "run"))
    cfg = tiny_cfg(["meta.checkpoint_every=2"])
    ref = export_fp32(out / "ds_checkpoints", tmp_path / "ref.pt")
    tr = Trainer(cfg, out, progress=False, dataset=RandomClips(cfg))
    tr.resume()
    assert tr.step == 2
    for key in ("encoder", "predictor", "target_encoder"):
        sd = getattr(tr.model, key).state_dict()
        assert all(torch.equal(sd[n], ref[key][n]) for n in ref[key]), key
    moments = [s for s in tr.optimizer.state_dict()["state"].values()]
    assert len(moments) == sum(len(g["params"]) for g in tr.optimizer.param_groups)
    assert all(float(s["step"]) == 2 and s["exp_avg_sq"].abs().sum() > 0 for s in moments)
    # two ranks had read 2 batches each: one process continues at batch 4 of the epoch
    assert tr.loader.state_dict()["batch_in_epoch"] == 4
    summary = Trainer(cfg, out, progress=False, dataset=RandomClips(cfg)).fit(max_steps=4, resume=True)
    assert summary["steps"] == 4 and summary["steps_this_run"] == 2
    assert _rows(out) == [0, 1, 2, 3]                       # the DeepSpeed run's rows 0, 1 are kept
    history = yaml.safe_load((out / "config_history.yaml").read_text())
    assert "ZeRO-3, 2 ranks, step 2" in history[-1]["converted_from"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000004.pt"


def test_sigterm_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """SLURM may signal one task first: the ranks agree (max over ranks) and checkpoint together, exit 0."""
    import json
    import time
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tests.distributed.tiny_train", "--out", str(out), "--stage", "2", "--steps", "40", "--every", "100"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        while not (out / "losses.jsonl").exists() or len((out / "losses.jsonl").read_text().splitlines()) < 2:
            assert proc.poll() is None and time.monotonic() - t0 < 240, proc.stderr.read()[-3000:]
            time.sleep(0.05)
        ranks = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(ranks) == 2, ranks
        os.kill(int(ranks[1]), signal.SIGTERM)                 # one rank only
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.split("SUMMARY ", 1)[1].splitlines()[0])
    stopped = summary["steps"]
    assert 2 <= stopped < 40
    tag = (out / "ds_checkpoints" / "latest").read_text().strip()
    assert tag == f"step_{stopped:07d}"
    assert sorted(p.name for p in (out / "ds_checkpoints" / tag).glob("client_rank*.pt")) == \
        ["client_rank000.pt", "client_rank001.pt"]
    assert len((out / "losses.jsonl").read_text().splitlines()) == stopped
