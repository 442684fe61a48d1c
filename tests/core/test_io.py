"""Checkpoints are atomic; the latest pointer moves only after a complete write."""
import csv

import pytest
import torch

from engine.core import checkpoint as ck
from engine.core.io import append_csv_rows, atomic_torch_save


def test_save_load_latest_and_keep_last(tmp_path):
    for step in (10, 20, 30):
        ck.save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((3,), float(step))})
    state = ck.load_latest(tmp_path)
    assert state["step"] == 30 and torch.equal(state["w"], torch.full((3,), 30.0))
    assert sorted(p.name for p in ck.checkpoint_dir(tmp_path).glob("step_*.pt")) == \
        ["step_0000020.pt", "step_0000030.pt"]
    assert ck.load_latest(tmp_path / "empty") is None


def test_failed_write_keeps_previous(tmp_path):
    ck.save_checkpoint(tmp_path, 1, {"step": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ck.save_checkpoint(tmp_path, 2, {"step": 2, "bad": Unpicklable()})
    assert ck.load_latest(tmp_path)["step"] == 1
    leftovers = [p.name for p in ck.checkpoint_dir(tmp_path).iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_dangling_pointer_is_a_clear_error(tmp_path):
    ck.save_checkpoint(tmp_path, 5, {"step": 5})
    (ck.checkpoint_dir(tmp_path) / "step_0000005.pt").unlink()
    with pytest.raises(FileNotFoundError, match="step_0000005.pt"):
        ck.load_latest(tmp_path)


def test_atomic_torch_save_roundtrip(tmp_path):
    atomic_torch_save({"a": 1}, tmp_path / "x" / "y.pt")
    assert torch.load(tmp_path / "x" / "y.pt") == {"a": 1}


def test_atomic_write_csv_unions_keys_and_keeps_the_old_file_on_error(tmp_path):
    import csv as _csv
    from engine.core.io import atomic_write_csv
    path = tmp_path / "results" / "r.csv"
    atomic_write_csv(path, [{"a": 1, "b": 2.5}, {"a": 3, "c": "x"}])
    rows = list(_csv.DictReader(open(path)))
    assert rows == [{"a": "1", "b": "2.5", "c": ""}, {"a": "3", "b": "", "c": "x"}]
    with pytest.raises(AttributeError):
        atomic_write_csv(path, [{"a": 1}, "not a row"])
    assert list(_csv.DictReader(open(path))) == rows          # untouched
    assert [p.name for p in path.parent.iterdir()] == ["r.csv"]   # no temporary left behind


def test_append_csv_rows_adds_columns_without_losing_rows(tmp_path):
    """A results CSV written before a column existed keeps every row; new rows land under their own columns."""
    path = tmp_path / "plan.csv"
    path.write_text("checkpoint,samples,controller,success_rate\nruns/a,100,cem,0.65\nruns/a,100,random,0.05\n")
    append_csv_rows(path, [{"checkpoint": "runs/b", "samples": 200, "energy": "l2", "controller": "cem",
                        "success_rate": 0.7}])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["checkpoint", "samples", "controller", "success_rate", "energy"]
    assert [(r["checkpoint"], r["controller"], r["success_rate"], r["energy"]) for r in rows] == [
        ("runs/a", "cem", "0.65", ""), ("runs/a", "random", "0.05", ""), ("runs/b", "cem", "0.7", "l2")]
    append_csv_rows(path, [{"checkpoint": "runs/c", "controller": "zero"}])        # fewer keys: blanks, same header
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and rows[-1]["samples"] == "" and list(rows[0])[-1] == "energy"
    fresh = tmp_path / "fresh.csv"
    append_csv_rows(fresh, [{"a": 1, "b": 2}])
    assert fresh.read_text().splitlines() == ["a,b", "1,2"]
