"""Checkpoints are atomic; the latest pointer moves only after a complete write."""
import pytest
import torch

from engine.core import checkpoint as ck
from engine.core.io import atomic_torch_save


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
