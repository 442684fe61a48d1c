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
        assert 0.0 <= saved["probe"][name]["val_acc"] <= 1.0, saved["probe"]
    assert saved["probe"]["pixels"]["chance"] == saved["probe"]["trained"]["chance"] == 0.2  # 5 classes, 1 each
    assert (out / "metrics.csv").exists() and (out / "loss.png").exists() and any((out / "checkpoints").iterdir())
    printed = capsys.readouterr().out
    assert "random init" in printed and "pixels" in printed
