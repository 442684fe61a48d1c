"""`python -m engine.demo` end to end on a few generated videos: it trains, probes the trained encoder,
a random-init one and the raw pixels, and writes what the README says it writes."""
import json

from engine.demo import main


def test_demo_runs_end_to_end(tmp_path, capsys, caplog):
    data, out = tmp_path / "data", tmp_path / "run"
    result = main(["--max-steps", "3", "--videos", "10", "--val-videos", "5", "--output", str(out),
                   "--set", f"data.datasets=[{data / 'train.csv'}]", "--set", f"data.val_datasets=[{data / 'val.csv'}]",
                   "--set", "data.batch_size=2", "--set", "data.num_workers=0", "--set", "logging.tensorboard=false", "--pixels"])
    assert result["train"]["steps"] == 3
    saved = json.loads((out / "probe.json").read_text())
    for name in ("trained", "random_init", "pixels"):
        for kind in ("linear", "attentive"):
            assert 0.0 <= saved["probe"][name][kind]["val_acc"] <= 1.0, saved["probe"]
            assert saved["probe"][name][kind]["chance"] == 0.2  # 5 classes, 1 val clip each
    assert (out / "metrics.csv").exists() and (out / "loss.png").exists() and any((out / "checkpoints").iterdir())
    captured = capsys.readouterr()
    printed = captured.out
    assert "linear probe" in printed and "attentive probe" in printed and "random init" in printed
    assert "pixels" in printed
    # each stage says what it will cost before it starts; the summary names its loss
    for stage in ("[1/3 data]", "[2/3 train]", "[3/3 probe]"):
        assert stage in printed and "on 2 idle CPU cores" in printed.split(stage)[1].splitlines()[0], stage
    assert "mean of the last 20 steps" in printed
    assert "features" in captured.err and "attentive probe" in captured.err   # the probes' progress bars
    # a fresh folder is not a failed resume
    assert not [r for r in caplog.records if "no checkpoint" in r.getMessage()]
