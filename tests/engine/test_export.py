"""Weights out and back: safetensors export (from a model or a run folder) and from_pretrained, strict."""
import pytest
import torch

import engine

TINY = ["model.depth=2", "model.embed_dim=48", "model.num_heads=2", "model.pred_depth=1", "model.pred_embed_dim=32",
        "model.pred_num_heads=null"]


def _same(a, b):
    for part in ("encoder", "predictor", "target_encoder"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{part}.{k}"


def test_safetensors_round_trip_and_reference_checkpoint(tmp_path):
    cfg = engine.load_config("configs/tiny_cpu.yaml", TINY)
    torch.manual_seed(0)
    model = engine.build_model(cfg)
    with torch.no_grad():   # a target that differs from the encoder, so a swap would show
        for p in model.target_encoder.parameters():
            p.add_(1.0)
    engine.export_safetensors(model, tmp_path / "m.safetensors", cfg)
    back = engine.from_pretrained(tmp_path / "m.safetensors")     # config from the file's metadata
    _same(model, back)
    assert not back.training
    engine.save_reference_checkpoint(tmp_path / "ref.pth.tar", model, "vjepa", config=cfg)
    _same(model, engine.from_pretrained(tmp_path / "ref.pth.tar", config=cfg, kind="vjepa"))
    with pytest.raises(ValueError, match="needs config="):
        engine.from_pretrained(tmp_path / "ref.pth.tar")


def test_from_pretrained_is_strict(tmp_path):
    from engine.export import ExportError
    cfg = engine.load_config("configs/tiny_cpu.yaml", TINY)
    engine.export_safetensors(engine.build_model(cfg), tmp_path / "m.safetensors", cfg)
    wider = engine.load_config("configs/tiny_cpu.yaml", TINY + ["model.embed_dim=64"])
    with pytest.raises(ExportError, match=r"do not fit the config's model: .*encoder\..*shape"):
        engine.from_pretrained(tmp_path / "m.safetensors", config=wider)


def test_export_a_run_folder(tmp_path):
    """A run folder written by the trainer: its latest checkpoint with its own config.yaml."""
    from engine.core.checkpoint import save_checkpoint
    from engine.config import save_config
    cfg = engine.load_config("configs/tiny_cpu.yaml", TINY)
    model = engine.build_model(cfg)
    save_config(cfg, tmp_path / "run" / "config.yaml")
    save_checkpoint(tmp_path / "run", 5, {p: getattr(model, p).state_dict()
                                          for p in ("encoder", "predictor", "target_encoder")})
    engine.export_safetensors(tmp_path / "run", tmp_path / "run.safetensors")
    _same(model, engine.from_pretrained(tmp_path / "run.safetensors"))
