"""`python -m engine.demo` end to end on a few generated videos: it trains, probes the trained encoder,
a random-init one and the raw pixels, and writes what the README says it writes."""
import json

from engine.demo import main


def test_demo_runs_end_to_end(tmp_path, capsys):
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
    printed = capsys.readouterr().out
    assert "linear probe" in printed and "attentive probe" in printed and "random init" in printed
    assert "pixels" in printed
