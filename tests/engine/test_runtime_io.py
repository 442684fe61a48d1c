"""Checkpoints are atomic; the latest pointer moves only after a complete write."""
import pytest
import torch

from engine.runtime import checkpoint as ck
from engine.runtime.io import atomic_torch_save


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
