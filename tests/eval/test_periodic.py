"""meta.eval_freq: the probe's accuracies land in metrics.csv every N steps, and the run's losses are
exactly those of a run without it, straight or resumed."""
import pytest

from engine.config import load_config

from tests.tiny_runs import VJEPA_SMALL, VJEPA_TINY, metric_columns

SMALL = VJEPA_SMALL + ["optimization.epochs=2", "meta.checkpoint_every=2", "data.crop_size=32"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from engine.datagen.synthetic import generate_split
    root = tmp_path_factory.mktemp("videos")
    generate_split(root, train=8, val=12, num_frames=16, size=32, num_classes=3, seed=0)
    return root


def _run(videos, out, steps, *extra, resume=False):
    from engine.eval.periodic import PeriodicProbe
    from engine.runtime.trainer import Trainer
    cfg = load_config(VJEPA_TINY, SMALL + [f"data.datasets=[{videos / 'train.csv'}]",
                                                        f"data.val_datasets=[{videos / 'val.csv'}]", *extra])
    probe = PeriodicProbe.from_config(cfg)
    Trainer(cfg, out, progress=False, evaluate=probe.maybe if probe else None).fit(max_steps=steps, resume=resume)
    return metric_columns(out, "loss", "eval_knn_acc", "eval_linear_acc")


def test_eval_freq_logs_and_leaves_training_exact(videos, tmp_path):
    with_probe = _run(videos, tmp_path / "a", 4, "meta.eval_freq=2", "meta.eval_samples=12")
    without = _run(videos, tmp_path / "b", 4)
    assert [r[:2] for r in with_probe] == [r[:2] for r in without]        # the same losses, bitwise (as text)
    logged = [r for r in with_probe if r[2] != ""]
    assert [r[0] for r in logged] == [1, 3]                                # after steps 2 and 4
    assert all(0 <= float(r[2]) <= 1 and 0 <= float(r[3]) <= 1 for r in logged)
    assert all(r[2] == r[3] == "" for r in without)
    _run(videos, tmp_path / "c", 2, "meta.eval_freq=2", "meta.eval_samples=12")
    resumed = _run(videos, tmp_path / "c", 4, "meta.eval_freq=2", "meta.eval_samples=12", resume=True)
    assert resumed == with_probe


def test_eval_freq_without_a_val_set_is_reported_unused():
    cfg = load_config("configs/vjepa_vitl16.yaml")       # the reference YAML: eval_freq 100, no labelled set
    assert cfg.meta.eval_freq == 100 and "meta.eval_freq" in cfg.ignored_keys
    cfg = load_config("configs/tiny_cpu.yaml", ["meta.eval_freq=50"])
    assert "meta.eval_freq" not in cfg.ignored_keys
    with pytest.raises(Exception, match="meta.eval_freq"):
        load_config("configs/tiny_cpu.yaml", ["meta.eval_freq=-1"])


def test_a_trainer_without_the_evaluate_hook_refuses_eval_freq(videos, tmp_path):
    from engine.runtime.trainer import Trainer
    cfg = load_config(VJEPA_TINY, SMALL + [f"data.datasets=[{videos / 'train.csv'}]",
                                                        f"data.val_datasets=[{videos / 'val.csv'}]", "meta.eval_freq=2"])
    with pytest.raises(ValueError, match="meta.eval_freq=2: this Trainer has no evaluate hook"):
        Trainer(cfg, tmp_path, progress=False)
