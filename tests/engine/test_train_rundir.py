"""A run's history is never lost, and user errors are one line: `python -m engine.train` on a run folder.

Each test reproduces a case that used to lose data or print a traceback, then asserts the new
behaviour: nothing lost, one line naming the path and what to do, a non-zero exit code.
"""
import csv
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from engine.train import main
from tests.tiny_runs import VJEPA_TINY, train_args

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["model.depth=1", "model.embed_dim=48", "model.num_heads=3", "model.pred_embed_dim=48",
         "data.batch_size=2", "data.num_workers=0", "logging.tensorboard=false", "meta.checkpoint_every=2"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from engine.datagen.synthetic import generate_split
    root = tmp_path_factory.mktemp("videos")
    generate_split(root, train=4, val=1, num_frames=16, size=64, seed=0)
    return root


@pytest.fixture(scope="module")
def base_run(videos, tmp_path_factory):
    """A 3-step run (checkpoints of steps 2 and 3, metrics rows 0..2); each test works on a copy."""
    out = tmp_path_factory.mktemp("base") / "run"
    old = os.umask(0o022)
    try:
        main(_args(videos, out, steps=3))
    finally:
        os.umask(old)
    return out


def _copy(base_run, tmp_path):
    return Path(shutil.copytree(base_run, tmp_path / "run"))


def _args(videos, out, *extra, steps=None, config=VJEPA_TINY):
    return train_args(config, out, SMALL + [f"data.datasets=[{videos / 'train.csv'}]"], *extra,
                      *(["--max-steps", str(steps)] if steps is not None else []))


def _fails(capsys, argv) -> str:
    """Run engine.train; assert exit code 2 and one line on stderr; return the line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2, lines
    assert len(lines) == 1, lines
    return lines[0]


def _rows(out):
    with open(out / "metrics.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_run_folder_needs_resume_or_overwrite(videos, base_run, tmp_path, capsys):
    out = _copy(base_run, tmp_path)
    before = _snapshot(out)
    line = _fails(capsys, _args(videos, out, steps=2))           # used to wipe the run: 3 rows -> 2
    assert str(out) in line and "--resume" in line and "--overwrite" in line and "3 rows" in line
    assert _snapshot(out) == before                               # not a byte changed
    _fails(capsys, _args(videos, out, "--resume", "--overwrite", steps=2))
    main(_args(videos, out, "--overwrite", steps=1))              # asked for: a new run
    assert _rows(out) == [0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_0000001.pt"]


def test_resume_checks_the_config_and_records_accepted_changes(videos, base_run, tmp_path, capsys):
    out = _copy(base_run, tmp_path)
    saved = (out / "config.yaml").read_text()
    line = _fails(capsys, _args(videos, out, "--resume", "--set", "model.embed_dim=96", steps=4))
    assert "model.embed_dim: 48 -> 96" in line and "step_0000003.pt" in line
    line = _fails(capsys, _args(videos, out, "--resume", "--set", "data.batch_size=1", steps=4))
    assert "data.batch_size: 2 -> 1" in line
    assert (out / "config.yaml").read_text() == saved
    main(_args(videos, out, "--resume", "--set", "optimization.lr=0.002", steps=4))
    history = yaml.safe_load((out / "config_history.yaml").read_text())
    assert history[-1]["resumed_at_step"] == 3
    assert history[-1]["changes"]["optimization.lr"] == {"saved": 0.001, "now": 0.002}
    assert yaml.safe_load((out / "config.yaml").read_text())["optimization"]["lr"] == 0.002
    assert _rows(out) == [0, 1, 2, 3]


def test_corrupt_latest_falls_back_and_replaced_rows_are_kept(videos, base_run, tmp_path, caplog):
    out = _copy(base_run, tmp_path)
    (out / "checkpoints" / "step_0000003.pt").write_bytes(b"torn")  # a truncated latest checkpoint
    main(_args(videos, out, "--resume", steps=3))                 # falls back to step 2, reruns step 2
    assert "step_0000002.pt" in caplog.text and "step_0000003.pt" in caplog.text   # the warning names both
    assert _rows(out) == [0, 1, 2]
    with open(out / "metrics.replaced.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [2]  # the row step 2 rewrote, kept


def _bad_videos(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    for i in range(4):
        (d / f"{i}.mp4").write_bytes(b"not a video")
    (d / "index.csv").write_text("".join(f"{d / f'{i}.mp4'} 0\n" for i in range(4)))
    return d / "index.csv"


@pytest.mark.parametrize("case", ["empty_yaml", "empty_csv", "missing_csv", "fewer_than_batch", "all_files_bad",
                                  "latest_missing", "output_is_file", "output_not_writable", "no_data_yet"])
def test_user_errors_are_one_line(videos, tmp_path, capsys, case):
    out = tmp_path / "run"
    extra, config, expect = [], "configs/tiny_cpu.yaml", None
    if case == "empty_yaml":
        config = tmp_path / "empty.yaml"
        config.write_text("")
        expect = [str(config), "empty"]
        argv = ["--config", str(config), "--output", str(out)]
    else:
        if case == "empty_csv":
            (tmp_path / "e.csv").write_text("")
            extra, expect = [f"data.datasets=[{tmp_path / 'e.csv'}]"], [str(tmp_path / "e.csv"), "no samples"]
        elif case == "missing_csv":
            extra, expect = [f"data.datasets=[{tmp_path / 'nope.csv'}]"], [str(tmp_path / "nope.csv"), "not found"]
        elif case == "fewer_than_batch":
            (tmp_path / "one.csv").write_text((videos / "train.csv").read_text().splitlines()[0] + "\n")
            extra, expect = [f"data.datasets=[{tmp_path / 'one.csv'}]"], [str(tmp_path / "one.csv"), "no batch of 2"]
        elif case == "all_files_bad":
            index = _bad_videos(tmp_path)
            extra, expect = [f"data.datasets=[{index}]"], [str(index), "failed to load"]
        elif case == "latest_missing":
            (out / "checkpoints").mkdir(parents=True)
            (out / "checkpoints" / "latest").write_text("step_0000009.pt\n")
            expect = [str(out / "checkpoints" / "latest"), "step_0000009.pt", "--overwrite"]
        elif case == "output_is_file":
            out = tmp_path / "a_file"
            out.write_text("x")
            expect = [str(out), "is a file"]
        elif case == "output_not_writable":
            if not Path("/sys").is_dir():
                pytest.skip("needs a read-only /sys (Linux) for a folder nobody, not even root, can write")
            out = Path("/sys/jepa_run")
            expect = [str(out), "cannot be written"]
        argv = _args(videos, out, *(["--resume"] if case == "latest_missing" else []), steps=2)
        if case == "no_data_yet":   # the demo config before `make demo` generated its videos
            argv = ["--config", "configs/tiny_cpu.yaml", "--set", "data.datasets=[data/nowhere/train.csv]",
                    "--output", str(out)]
            expect = ["data/nowhere/train.csv", "make demo", "python -m engine.datagen generate"]
        for s in extra:
            argv += ["--set", s]
    line = _fails(capsys, argv)
    for word in expect:
        assert word in line, (word, line)


def _limit_file_size(nbytes):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(videos, base_run, tmp_path):
    out = _copy(base_run, tmp_path)
    latest = out / "checkpoints" / "step_0000003.pt"
    before = latest.read_bytes()
    # The next checkpoint cannot be written whole: the OS refuses writes past half its size.
    p = subprocess.run([sys.executable, "-m", "engine.train", *_args(videos, out, "--resume", steps=4)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(len(before) // 2))
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2 and len(errors) == 1, p.stderr[-3000:]
    assert "step_0000004.pt" in errors[0] and "File too large" in errors[0] and "--resume" in errors[0]
    assert "Traceback" not in p.stderr
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000003.pt"
    assert latest.read_bytes() == before
    assert not list(out.rglob("*.tmp"))


def test_stale_temporaries_are_removed_and_files_are_group_readable(videos, base_run, tmp_path):
    out = _copy(base_run, tmp_path)
    stale = out / "checkpoints" / ".step_0000004.pt.x1y2z3.tmp"   # what a kill -9 mid-write leaves
    stale.write_bytes(b"\0" * 1000)
    old = os.umask(0o022)
    try:
        main(_args(videos, out, "--resume", steps=4))
    finally:
        os.umask(old)
    assert not stale.exists()
    for p in [base_run / "metrics.csv", base_run / "config.yaml", *(base_run / "checkpoints").iterdir(),
              *(out / "checkpoints").iterdir()]:
        assert p.stat().st_mode & 0o777 == 0o644, (p, oct(p.stat().st_mode))
    assert torch.load(out / "checkpoints" / "step_0000004.pt", weights_only=False)["step"] == 4
