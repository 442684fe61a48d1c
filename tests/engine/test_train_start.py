"""The reference's start keys act as they do there: meta.load_checkpoint / read_checkpoint,
optimization.is_anneal / anneal_ckpt, meta.skip_batches, meta.save_every_freq, meta.log_every."""
import csv

import pytest
import torch

from engine.runtime.errors import RunError
from engine.runtime.trainer import Trainer
from tests.distributed.tiny import RandomClips, tiny_cfg

BASE = ["optimization.ipe=2", "meta.checkpoint_every=2"]


def _trainer(out, *extra):
    cfg = tiny_cfg(BASE + list(extra))
    return Trainer(cfg, out, progress=False, dataset=RandomClips(cfg, n=8))


def _losses(out):
    with open(out / "metrics.csv") as f:
        return {int(r["step"]): r["loss"] for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    out = tmp_path_factory.mktemp("a") / "run"
    _trainer(out).fit(max_steps=4)
    return out


def _same_weights(tr, state):
    for key in ("encoder", "predictor", "target_encoder"):
        sd = getattr(tr.model, key).state_dict()
        assert all(torch.equal(sd[n], v) for n, v in state[key].items()), key


def test_read_checkpoint_continues_from_another_runs_checkpoint(run_a, tmp_path):
    ck = run_a / "checkpoints" / "step_0000002.pt"
    tr = _trainer(tmp_path / "b", "meta.load_checkpoint=true", f"meta.read_checkpoint={ck}")
    tr.fit(max_steps=4)
    a, b = _losses(run_a), _losses(tmp_path / "b")
    assert sorted(b) == [2, 3] and all(b[s] == a[s] for s in b)      # same weights, Adam, data: same losses
    assert "started_from" in (tmp_path / "b" / "config_history.yaml").read_text()


def test_read_checkpoint_of_the_reference_layout(run_a, tmp_path):
    from engine.reference_ckpt import save_reference_checkpoint
    state = torch.load(run_a / "checkpoints" / "step_0000002.pt", weights_only=False)
    ref = tmp_path / "latest.pt"
    save_reference_checkpoint(ref, {k: state[k] for k in ("encoder", "predictor", "target_encoder")}, "vjepa",
                              config=tiny_cfg(BASE), epoch=1)
    tr = _trainer(tmp_path / "b", "meta.load_checkpoint=true", f"meta.read_checkpoint={ref}")
    tr.fit(max_steps=2)                                  # starts at step 2: nothing left to train
    assert tr.step == 2                                  # epoch 1 of ipe 2: the schedules continue there
    _same_weights(tr, state)


def test_anneal_starts_from_the_checkpoint_at_step_0(run_a, tmp_path):
    ck = run_a / "checkpoints" / "step_0000004.pt"
    tr = _trainer(tmp_path / "b", "optimization.is_anneal=true", f"optimization.anneal_ckpt={ck}")
    state = torch.load(ck, weights_only=False)
    tr.fit(max_steps=0)
    assert tr.step == 0
    _same_weights(tr, state)


def test_read_checkpoint_without_load_checkpoint_is_refused(run_a, tmp_path):
    with pytest.raises(RunError, match="meta.load_checkpoint is false"):
        _trainer(tmp_path / "b", f"meta.read_checkpoint={run_a}/checkpoints/step_0000002.pt").fit(max_steps=1)


def test_skip_batches_moves_the_data_stream(tmp_path):
    tr = _trainer(tmp_path / "b", "meta.skip_batches=5")
    tr.fit(max_steps=0)
    per_epoch = tr.loader.batches_per_epoch
    st = tr.loader.state_dict()
    assert st["epoch"] * per_epoch + st["batch_in_epoch"] == 5


def test_save_every_freq_keeps_epoch_checkpoints_and_log_every_paces_the_log(tmp_path, caplog):
    out = tmp_path / "b"
    caplog.set_level("INFO", logger="engine.train")
    _trainer(out, "meta.save_every_freq=1", "meta.log_every=3", "optimization.epochs=3").fit(max_steps=6)
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["e0.pt", "e1.pt", "e2.pt", "latest", "step_0000004.pt", "step_0000006.pt"]
    assert torch.load(out / "checkpoints" / "e1.pt", weights_only=False)["step"] == 4
    logged = [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("step ")]
    assert logged == ["2", "5"]
