"""Preemption and faults in the one-process trainer: kill -9 at random steps, SIGTERM / SIGUSR1, and
non-finite losses. Resumed runs end bitwise equal to an uninterrupted one."""
import csv
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.train import main
from tests.engine.test_train_rundir import SMALL, videos  # noqa: F401  (the shared fixture)
from tests.tiny_runs import VJEPA_TINY, train_args

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6


def _args(videos, out, *extra, steps=STEPS):
    return train_args(VJEPA_TINY, out, SMALL + [f"data.datasets=[{videos / 'train.csv'}]"], "--max-steps", str(steps),
                      *extra)


def _rows(out) -> int:
    try:
        with open(out / "metrics.csv") as f:
            return sum(1 for _ in csv.DictReader(f))
    except FileNotFoundError:
        return 0


def _final_state(out):
    return torch.load(out / "checkpoints" / f"step_{STEPS:07d}.pt", weights_only=False)


def _assert_same_weights(a, b):
    for key in ("encoder", "predictor", "target_encoder"):
        for n, v in a[key].items():
            assert torch.equal(v, b[key][n]), (key, n)
    for i, st in a["opt"]["state"].items():
        assert torch.equal(st["exp_avg_sq"], b["opt"]["state"][i]["exp_avg_sq"]), i


@pytest.fixture(scope="module")
def straight(videos, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("straight") / "run"
    main(_args(videos, out))
    return _final_state(out)


def _wait_rows(out, n, proc=None, timeout=240):
    t0 = time.monotonic()
    while _rows(out) < n:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before step {n}: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() - t0 < timeout
        time.sleep(0.02)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill9_at_a_random_step_then_resume_is_bitwise(videos, straight, tmp_path, seed):  # noqa: F811
    out = tmp_path / "run"
    k = int(np.random.default_rng(seed).integers(1, STEPS))       # killed during step k (0-based)
    proc = subprocess.Popen([sys.executable, "-m", "engine.train", *_args(videos, out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_rows(out, k, proc)
        proc.kill()                                                  # SIGKILL: no handler, no cleanup
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    main(_args(videos, out, "--resume"))
    _assert_same_weights(_final_state(out), straight)
    assert _rows(out) == STEPS


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
def test_stop_signal_finishes_the_step_checkpoints_and_exits_0(videos, straight, tmp_path, signame, caplog):  # noqa: F811
    out = tmp_path / "run"

    def send():
        _wait_rows(out, 2)
        os.kill(os.getpid(), getattr(signal, signame))   # to this process: main() runs in its main thread

    t = threading.Thread(target=send, daemon=True)
    t.start()
    summary = main(_args(videos, out))                    # returns: exit code 0 from the command line
    t.join(timeout=60)
    stopped = summary["steps"]
    assert summary["stopped_by"] == signame and 2 <= stopped < STEPS
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:07d}.pt"
    assert _rows(out) == stopped and f"{signame}: stopped after step {stopped - 1}" in caplog.text
    assert signal.getsignal(getattr(signal, signame)) is not None   # the old handler is back
    main(_args(videos, out, "--resume"))
    _assert_same_weights(_final_state(out), straight)


@pytest.mark.parametrize("times", [1, 2])
def test_sigterm_to_the_whole_process_group_with_data_workers(videos, tmp_path, times):  # noqa: F811
    """srun / scancel signal every process of the job step, the DataLoader workers too, and `timeout` sends
    a signal it got to its whole group again: the run still finishes its step, checkpoints and exits 0 (a
    worker killed by the signal, the first or the second, used to fail the step)."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "engine.train", *_args(videos, out, steps=40),
                             "--set", "data.num_workers=2"], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_rows(out, 2, proc)
        for _ in range(times):
            os.killpg(proc.pid, signal.SIGTERM)   # the training process and its workers
            time.sleep(0.2)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-2000:]
    stopped = _rows(out)
    assert "SIGTERM: stopped after step" in err and 2 <= stopped < 40
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step_{stopped:07d}.pt"
    # No signal this time: the workers, which outlive SIGTERMs for a while, still let the process exit.
    done = subprocess.run([sys.executable, "-m", "engine.train", *_args(videos, out, "--resume", steps=stopped + 2),
                           "--set", "data.num_workers=2"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and _rows(out) == stopped + 2, done.stderr[-2000:]


_REPEAT = """
import os, signal, sys, time
from engine.runtime.faults import StopSignals, ignore_repeats_after_a_stop
ignore_repeats_after_a_stop()
if sys.argv[1] == "stopped":
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
    assert stop.name == "SIGTERM"
os.kill(os.getpid(), signal.SIG%s)   # the repeat, after the run stopped (or before any did)
time.sleep(0.1)
print("alive")
"""


@pytest.mark.parametrize("signame", ["TERM", "USR1"])
def test_the_command_line_ignores_a_repeat_after_a_stop_and_not_before(signame):
    """A second stop signal that arrives after the run stopped on the first (checkpoint written, the process
    exiting) leaves the exit code 0; one before any run stopped ends the process as by default."""
    run = lambda when: subprocess.run([sys.executable, "-c", _REPEAT % signame, when], cwd=ROOT,  # noqa: E731
                                      capture_output=True, text=True, timeout=60)
    after, before = run("stopped"), run("setup")
    assert after.returncode == 0 and "alive" in after.stdout, after.stderr[-2000:]
    assert before.returncode == -getattr(signal, "SIG" + signame) and "alive" not in before.stdout


class _ClipsWithNaN(torch.utils.data.Dataset):
    """Random clips (a function of the index); sample `bad` is all NaN, as a corrupt decode could be."""

    def __init__(self, cfg, bad, n=8):
        self.shape = (3, cfg.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
        self.bad, self.n = bad, n

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        i = int(key[0] if isinstance(key, tuple) else key)
        x = torch.randn(self.shape, generator=torch.Generator().manual_seed(i))
        return (torch.full(self.shape, math.nan) if i == self.bad else x), 0


def _cfg(*extra):
    from engine.config import load_config
    return load_config("configs/tiny_cpu.yaml", SMALL + ["optimization.ipe=4", *extra])


def test_a_nonfinite_loss_is_skipped_and_counted(tmp_path):
    from engine.runtime.trainer import Trainer
    cfg = _cfg()
    tr = Trainer(cfg, tmp_path / "run", progress=False, dataset=_ClipsWithNaN(cfg, bad=3))
    summary = tr.fit(max_steps=4)
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    bad = [int(r["step"]) for r in rows if not math.isfinite(float(r["loss"]))]
    assert len(bad) == 1 and summary["steps"] == 4 and summary["nonfinite_skipped"] == 1
    assert [int(r["nonfinite_skipped"]) for r in rows] == [int(int(r["step"]) >= bad[0]) for r in rows]
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_nonfinite_losses_in_a_row_stop_the_run_naming_the_step(tmp_path):
    from engine.runtime.errors import RunError
    from engine.runtime.trainer import Trainer
    from tests.distributed.tiny import RandomClips
    cfg = _cfg("optimization.lr=1e30", "optimization.start_lr=1e30", "meta.max_nonfinite_in_a_row=2")
    tr = Trainer(cfg, tmp_path / "run", progress=False, dataset=RandomClips(cfg, n=8))
    with pytest.raises(RunError, match=r"step \d+: the (loss|gradient norm) is (nan|inf), 2 step\(s\) in a row "
                                       r"\(meta.max_nonfinite_in_a_row=2\)"):
        tr.fit(max_steps=8)
