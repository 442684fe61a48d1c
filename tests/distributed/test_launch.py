"""Launch, kill, resume: real launchers (torchrun, deepspeed) in subprocesses, 2 CPU ranks, the real tiny V-JEPA.

- a run SIGKILLed after a checkpoint and resumed gives the uninterrupted run's losses, bitwise, and
  the same consolidated fp32 export (encoder, predictor, EMA target);
- a rank that dies mid-run makes the launcher exit non-zero, naming the failure, within a bound;
- a world that cannot form (missing env, a rank that never arrives) fails with a clear error in time.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.distributed.tiny import TINY_OVERRIDES

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _torchrun_cmd(args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "tests.distributed.tiny_train", *args]


def _torchrun(args, env=None, timeout=180):
    t0 = time.monotonic()
    p = subprocess.run(_torchrun_cmd(args), cwd=ROOT, env={**ENV, **(env or {})}, capture_output=True, text=True,
                       timeout=timeout)
    return p, time.monotonic() - t0


def _torchrun_both(args_a, args_b, env_b, timeout=240):
    """Two launches at once (each --standalone picks its own port): start-up dominates, so they overlap."""
    procs = [subprocess.Popen(_torchrun_cmd(a), cwd=ROOT, env={**ENV, **e}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a, e in ((args_a, {}), (args_b, env_b))]
    out = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _losses(out):
    return {json.loads(ln)["step"]: json.loads(ln)["loss"] for ln in (Path(out) / "losses.jsonl").read_text().splitlines() if ln}


@pytest.mark.parametrize("stage", [0, 3])
def test_sigkill_then_resume_is_exact(tmp_path, stage):
    from engine.runtime.ds_checkpoint import export_fp32
    a, b = tmp_path / "a", tmp_path / "b"
    # a: uninterrupted; b: rank 0 SIGKILLs itself at the start of step 5, so the checkpoint of step 3 is
    # the latest
    pa, pb = _torchrun_both(["--out", str(a), "--stage", str(stage), "--steps", "8"],
                            ["--out", str(b), "--stage", str(stage), "--steps", "8"], {"JEPA_FAULT_KILL": "0:5"})
    assert pa.returncode == 0, pa.stderr[-3000:]
    assert pb.returncode != 0
    assert (b / "ds_checkpoints" / "latest").read_text().strip() == "step_0000003"
    killed = _losses(b)
    assert sorted(killed) == [0, 1, 2, 3, 4]
    p, _ = _torchrun(["--out", str(b), "--stage", str(stage), "--steps", "8", "--resume"])
    assert p.returncode == 0, p.stderr[-3000:]
    full, resumed = _losses(a), _losses(b)
    assert sorted(resumed) == list(range(8))
    assert [resumed[i] for i in range(8)] == [full[i] for i in range(8)]  # bitwise, step for step
    assert [killed[i] for i in range(5)] == [full[i] for i in range(5)]
    ea = export_fp32(a / "ds_checkpoints", tmp_path / "a.pt")
    eb = export_fp32(b / "ds_checkpoints", tmp_path / "b.pt")
    assert ea["step"] == eb["step"] == 8
    for key in ("encoder", "predictor", "target_encoder"):
        assert ea[key].keys() == eb[key].keys() and len(ea[key]) > 0
        for n in ea[key]:
            assert ea[key][n].dtype == torch.float32
            assert torch.equal(ea[key][n], eb[key][n]), (key, n)
    # the EMA target is a real, moved copy of the encoder (not a placeholder)
    assert any(not torch.equal(ea["target_encoder"][n], ea["encoder"][n]) for n in ea["encoder"])
    assert torch.load(tmp_path / "a.pt", weights_only=False).keys() >= {"encoder", "predictor", "target_encoder"}


# A job whose survivor waited on its lost peer would run into the subprocess timeout (the collectives'
# own timeout is far longer), so the timeout is the hang check; it is generous because a loaded
# machine takes minutes just to start the ranks.
HANG_S = 600


def test_dead_rank_fails_the_job_torchrun(tmp_path):
    p, _ = _torchrun(["--out", str(tmp_path), "--stage", "2", "--steps", "8", "--every", "100"],
                     env={"JEPA_FAULT_KILL": "1:2"}, timeout=HANG_S)
    assert p.returncode != 0
    text = p.stdout + p.stderr
    assert "SIGKILL" in text and "tiny_train" in text, text[-3000:]


def test_dead_rank_fails_the_job_deepspeed_launcher(tmp_path):
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", "29731",
           "--module", "tests.distributed.tiny_train", "--out", str(tmp_path), "--stage", "3", "--steps", "8",
           "--every", "100"]
    p = subprocess.run(cmd, cwd=ROOT, env={**ENV, "JEPA_FAULT_KILL": "1:2"}, capture_output=True, text=True,
                       timeout=HANG_S)
    assert p.returncode != 0
    text = p.stdout + p.stderr
    # The launcher polls its ranks once a second, in no fixed order, and names the first failed one it
    # sees: rank 1 (SIGKILLed: -9) or rank 0, whose collective lost its peer in the same second (1).
    # Either way it must name a failed rank, and the survivor's error must say the peer went away.
    codes = re.findall(r"exits with return code = (-?\d+)", text)
    assert codes and codes[-1] in ("-9", "1"), text[-3000:]
    if codes[-1] == "1":
        assert re.search(r"(?i)connection (reset|closed) by peer|broken pipe", text), text[-3000:]


_PROBE = "from engine.runtime.launch import init_distributed; init_distributed(expected_world_size={w}, timeout_s=4)"


def _probe(env, w="None"):
    clean = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", _PROBE.format(w=w)], cwd=ROOT, env={**clean, **env},
                       capture_output=True, text=True, timeout=120)
    return p, time.monotonic() - t0


def test_missing_env_is_an_error_not_one_process():
    p, _ = _probe({})
    assert p.returncode != 0 and "LaunchError" in p.stderr and "RANK" in p.stderr


def test_wrong_world_size_is_an_error():
    env = dict(RANK="0", WORLD_SIZE="3", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29733")
    p, _ = _probe(env, w=2)
    assert p.returncode != 0 and "WORLD_SIZE=3 but 2 ranks were expected" in p.stderr


def test_rank_that_never_arrives_times_out_clearly():
    env = dict(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29735")
    p, _ = _probe(env)
    assert p.returncode != 0 and "did not form within 4 s" in p.stderr, p.stderr[-2000:]


def test_train_cli_deepspeed_without_launcher_fails_clearly():
    """`python -m engine.train --deepspeed ...` with no launcher: an error naming the fix, not 1 process."""
    clean = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    p = subprocess.run([sys.executable, "-m", "engine.train", "--config", "configs/tiny_cpu.yaml", "--deepspeed",
                        "configs/deepspeed/zero3.json", "--no-progress"], cwd=ROOT, env=clean,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 3, p.stderr[-2000:]
    assert "launch error" in p.stderr and "torchrun" in p.stderr


def test_deepspeed_launcher_runs_engine_train_zero3(tmp_path):
    """The documented launch on the real tiny V-JEPA: deepspeed --num_gpus 2 --module engine.train."""
    from engine.datagen.synthetic import generate_split
    train_csv, _ = generate_split(tmp_path / "data", train=8, val=2, num_frames=16, size=64)
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", "29737",
           "--module", "engine.train", "--config", "configs/tiny_cpu.yaml", "--deepspeed",
           "configs/deepspeed/zero3.json", "--output", str(tmp_path / "run"), "--max-steps", "2", "--no-progress",
           "--set", f"data.datasets=[{train_csv}]", "--set", "data.batch_size=2", "--set", "data.num_workers=0",
           "--set", "logging.tensorboard=false"] + [a for o in TINY_OVERRIDES if o.startswith("model.") for a in ("--set", o)]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]
    assert (tmp_path / "run" / "ds_checkpoints" / "latest").read_text().strip() == "step_0000002"
    from engine.runtime.ds_checkpoint import export_fp32
    out = export_fp32(tmp_path / "run" / "ds_checkpoints", tmp_path / "model.pth.tar")
    assert out["encoder"].keys() == out["target_encoder"].keys() and out["predictor"]
    from engine import load_reference_checkpoint
    from engine.config import load_config
    cfg = load_config("configs/tiny_cpu.yaml", [o for o in TINY_OVERRIDES if o.startswith("model.")])
    ck = load_reference_checkpoint(tmp_path / "model.pth.tar", "vjepa", cfg)
    for n, v in ck.encoder.state_dict().items():
        assert torch.equal(v, out["encoder"][n]), n


def test_slurm_srun_env_forms_the_world():
    """What `srun -n 2 python -m engine.train ...` gives each task: SLURM_* only, no RANK / MASTER_*."""
    clean = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    code = ("from engine.runtime.launch import init_distributed, launched_by_launcher; assert launched_by_launcher(); "
            "c = init_distributed(expected_world_size=2, timeout_s=60); print('WORLD', c.rank, c.world_size)")
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**clean, "SLURM_PROCID": str(r), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(r),
                                              "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": "4242"})
             for r in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    for r, (p, (stdout, stderr)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, stderr[-2000:]
        assert f"WORLD {r} 2" in stdout
