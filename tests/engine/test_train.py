"""The trainer end to end on generated video: exact resume, CLI errors, checkpoints and logs."""
import csv
import subprocess
import sys

import pytest
import torch

from engine.config import load_config

from tests.tiny_runs import VJEPA_SMALL

SMALL = VJEPA_SMALL + ["optimization.epochs=3", "meta.checkpoint_every=3"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from engine.datagen.synthetic import generate_split
    root = tmp_path_factory.mktemp("videos")
    generate_split(root, train=16, val=8, num_frames=16, size=64, seed=0)
    return root


def _cfg(videos, *extra):
    return load_config("configs/tiny_cpu.yaml", SMALL + [f"data.datasets=[{videos / 'train.csv'}]",
                                                         f"data.val_datasets=[{videos / 'val.csv'}]", *extra])


def _losses(folder):
    with open(folder / "metrics.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def test_resume_gives_the_same_losses(videos, tmp_path):
    from engine.runtime.trainer import Trainer
    straight = Trainer(_cfg(videos), tmp_path / "a", progress=False)
    straight.fit(max_steps=7)
    Trainer(_cfg(videos), tmp_path / "b", progress=False).fit(max_steps=3)
    resumed = Trainer(_cfg(videos), tmp_path / "b", progress=False)
    summary = resumed.fit(max_steps=7, resume=True)
    assert summary["steps"] == 7 and summary["steps_this_run"] == 4
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert [s for s, _ in b] == list(range(7))
    assert a == b                       # bitwise: same batches, masks, weights, optimizer state
    for pa, pb in zip(straight.model.target_encoder.parameters(), resumed.model.target_encoder.parameters()):
        assert torch.equal(pa, pb)


def test_run_writes_results(videos, tmp_path):
    from engine.runtime.trainer import Trainer
    cfg = _cfg(videos, "logging.tensorboard=true")
    summary = Trainer(cfg, tmp_path, progress=False).fit(max_steps=3)
    assert summary["steps"] == 3 and summary["checkpoint"].endswith("step_0000003.pt")
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert (tmp_path / "config.yaml").exists()
    assert any((tmp_path / "tb").iterdir())
    state = torch.load(summary["checkpoint"], weights_only=False)
    assert {"encoder", "predictor", "target_encoder", "opt", "loader", "rng", "step"} <= set(state)
    assert all(v.dtype == torch.float32 for v in state["target_encoder"].values() if v.is_floating_point())


def test_bf16_autocast_step(videos, tmp_path):
    from engine.runtime.trainer import Trainer
    tr = Trainer(_cfg(videos, "meta.dtype=bfloat16"), tmp_path, progress=False)
    summary = tr.fit(max_steps=2)
    assert summary["steps"] == 2 and summary["mean_loss_last_20"] == summary["mean_loss_last_20"]   # finite, not NaN
    assert all(p.dtype == torch.float32 for p in tr.model.target_encoder.parameters())


def test_cli_reports_bad_config_key(tmp_path):
    r = subprocess.run([sys.executable, "-m", "engine.train", "--config", "configs/tiny_cpu.yaml",
                        "--set", "data.patch_size=7", "--output", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "data.patch_size" in r.stderr and "divide" in r.stderr


def test_ijepa_tiny_config_trains_on_generated_images(tmp_path):
    from engine.datagen.images import generate_images
    from engine.runtime.trainer import Trainer
    root = generate_images(tmp_path / "images", 40, size=64, seed=0)
    cfg = load_config("configs/ijepa_tiny_cpu.yaml", [
        f"data.image_folder={root}", "data.batch_size=4", "data.num_workers=0", "model.depth=2",
        "model.embed_dim=48", "model.num_heads=2", "model.pred_depth=1", "model.pred_embed_dim=32",
        "optimization.ipe=3", "optimization.epochs=2", "logging.tensorboard=false"])
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    summary = trainer.fit(max_steps=3)
    assert summary["steps"] == 3 and torch.isfinite(torch.tensor(summary["mean_loss_last_20"]))
    assert hasattr(trainer.model.predictor, "mask_token")            # I-JEPA's single mask token
    assert trainer.model.encoder.patch_embed.proj.weight.dim() == 4  # 2D patches


def test_vjepa2_style_run_with_rope_swiglu_and_checkpointing(videos, tmp_path):
    """RoPE + SwiGLU + activation checkpointing train, and checkpointing changes no number."""
    from engine.runtime.trainer import Trainer
    extra = ["model.use_rope=true", "model.use_silu=true", "model.use_pred_silu=true",
             "logging.tensorboard=false"]
    plain = Trainer(_cfg(videos, *extra), tmp_path / "a", progress=False)
    plain.fit(max_steps=2)
    ckpt = Trainer(_cfg(videos, *extra, "model.use_activation_checkpointing=true"), tmp_path / "b", progress=False)
    ckpt.fit(max_steps=2)
    assert plain.model.encoder.pos_embed is None and plain.model.encoder.rope is not None
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    for pa, pb in zip(plain.model.encoder.parameters(), ckpt.model.encoder.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_fused_kernels_train_like_the_torch_reference(videos, tmp_path):
    """The same steps with every op on its plain-torch reference and on the default (fused) backends."""
    import kernels
    from engine.runtime.trainer import Trainer
    with kernels.backend("torch"):
        Trainer(_cfg(videos, "logging.tensorboard=false"), tmp_path / "ref", progress=False).fit(max_steps=3)
    Trainer(_cfg(videos, "logging.tensorboard=false"), tmp_path / "fused", progress=False).fit(max_steps=3)
    ref, fused = _losses(tmp_path / "ref"), _losses(tmp_path / "fused")
    assert [s for s, _ in ref] == [s for s, _ in fused] == [0, 1, 2]
    for (_, a), (_, b) in zip(ref, fused):
        assert a == pytest.approx(b, rel=1e-4)


def test_trains_from_tar_shards_and_with_the_dali_reader(videos, tmp_path):
    """dataset_type webdataset (shards written by `python -m engine.datagen prepare`) and data.reader=dali
    (the DALI CPU decoder, VP9) both feed the trainer."""
    pytest.importorskip("nvidia.dali", reason="DALI is not installed")
    from engine.datagen.__main__ import main as data_cli
    from engine.runtime.trainer import Trainer
    shards = tmp_path / "shards"
    data_cli(["prepare", "--input", str(videos / "train.csv"), "--output", str(shards), "--codec", "vp9",
              "--size", "64", "--shard-size", "8"])
    for name, extra in (("shards", ["data.dataset_type=webdataset", f"data.datasets=[{shards}]"]),
                        ("dali", ["data.reader=dali", f"data.datasets=[{shards}]", "data.dataset_type=webdataset"])):
        cfg = load_config("configs/tiny_cpu.yaml", SMALL + ["logging.tensorboard=false", *extra])
        trainer = Trainer(cfg, tmp_path / name, progress=False)
        summary = trainer.fit(max_steps=2)
        assert summary["steps"] == 2 and torch.isfinite(torch.tensor(summary["mean_loss_last_20"]))
        assert type(trainer.loader).__name__ == ("DaliLoader" if name == "dali" else "ResumableLoader")
