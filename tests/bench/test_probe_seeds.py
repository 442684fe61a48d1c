"""bench/probe_seeds.py: one seed trains, probes the trained and the random-init encoder and appends a row
each (a rerun skips them); the summary's standard errors and paired differences are the textbook ones."""
import csv
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import probe_seeds  # noqa: E402


def test_summary_means_standard_errors_and_paired_differences(tmp_path):
    path = tmp_path / "t.csv"
    rows = [(0, "random_init", 0.5), (1, "random_init", 0.6), (2, "random_init", 0.7),
            (0, "ragged", 0.8), (1, "ragged", 0.8), (2, "ragged", 1.1)]
    for seed, mode, acc in rows:
        probe_seeds.append_row(path, {"seed": seed, "mode": mode, "steps": 8, "attentive_acc": acc,
                                      "linear_acc": acc / 2, "knn_acc": acc / 4})
    s = {(r["mode"], r["metric"]): r for r in probe_seeds.summary(path)}
    ragged = s[("ragged", "attentive_acc")]
    assert ragged["seeds"] == 3 and ragged["mean"] == pytest.approx(0.9)
    assert ragged["std"] == pytest.approx(math.sqrt(0.03)) and ragged["sem"] == pytest.approx(0.1)
    d = s[("ragged - random_init", "attentive_acc")]   # per seed: 0.3, 0.2, 0.4
    assert d["mean"] == pytest.approx(0.3) and d["sem"] == pytest.approx(0.1 / math.sqrt(3))
    assert d["t"] == pytest.approx(0.3 / (0.1 / math.sqrt(3)))
    assert s[("ragged - random_init", "linear_acc")]["mean"] == pytest.approx(0.15)
    assert ("random_init - random_init", "attentive_acc") not in s
    probe_seeds.append_row(path, {"seed": 0, "mode": "compat", "steps": 8, "attentive_acc": 0.6,
                                  "linear_acc": 0.3, "knn_acc": 0.1})
    probe_seeds.append_row(path, {"seed": 2, "mode": "compat", "steps": 8, "attentive_acc": 1.0,
                                  "linear_acc": 0.3, "knn_acc": 0.1})
    s = {(r["mode"], r["metric"]): r for r in probe_seeds.summary(path)}
    d = s[("ragged - compat", "attentive_acc")]   # seeds 0 and 2 only: 0.2, 0.1
    assert d["seeds"] == 2 and d["mean"] == pytest.approx(0.15)


def test_one_seed_trains_probes_and_resumes(tmp_path, monkeypatch):
    from engine.datagen.synthetic import generate_split
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    data = tmp_path / "videos"
    generate_split(data, train=8, val=4, size=32, num_frames=16, num_classes=2, seed=0)
    out, table = tmp_path / "runs", tmp_path / "table.csv"
    argv = ["--data", str(data), "--steps", "8", "--seeds", "3", "--modes", "ragged", "--out", str(out),
            "--csv", str(table), "--train-set", "data.crop_size=32", "--train-set", "data.batch_size=2",
            "--train-set", "data.num_workers=0", "--eval-set", "experiment.data.resolution=32",
            "--eval-set", "experiment.optimization.num_epochs=1", "--eval-set", "experiment.features.num_workers=0",
            "--eval-set", "experiment.knn.k=2"]
    probe_seeds.main(argv)
    rows = list(csv.DictReader(open(table)))
    assert [(r["seed"], r["mode"], r["steps"]) for r in rows] == [("3", "random_init", "8"), ("3", "ragged", "8")]
    for r in rows:
        for k in ("attentive_acc", "linear_acc", "knn_acc"):
            assert 0.0 <= float(r[k]) <= 1.0
        assert 1.0 <= float(r["effective_rank"]) <= 4.0   # 4 pooled validation clips
    assert math.isfinite(float(rows[1]["loss_last_20"])) and rows[0]["loss_last_20"] == ""
    assert (out / "ragged_s3" / "checkpoints").is_dir()
    probe_seeds.main(argv)                                  # done rows are skipped, nothing is appended
    assert len(list(csv.DictReader(open(table)))) == 2
