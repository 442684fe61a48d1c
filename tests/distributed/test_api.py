"""engine.api from a plain loop, Lightning and the examples; the EMA on whole tensors (single process).

All on the real tiny V-JEPA (engine.builders.build_jepa, real masks) over in-memory random clips.
Lightning runs its default single-device strategy: its DeepSpeedStrategy refuses any accelerator but
CUDA ("The DeepSpeed strategy is only supported on CUDA GPUs"), so ZeRO under Lightning needs a GPU.
"""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed.tiny import RandomClips, build_tiny, tiny_cfg

ROOT = Path(__file__).resolve().parents[2]


def _load_example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _parts(extra=()):
    """(cfg, model, loader): the real tiny model, its real masks, random clips."""
    from engine.builders import build_mask_sampler
    from engine.data.loader import make_loader
    cfg = tiny_cfg(extra)
    model = build_tiny(cfg)
    return cfg, model, make_loader(RandomClips(cfg), batch_size=cfg.data.batch_size, seed=0,
                                   mask_sampler=build_mask_sampler(cfg))


def test_plain_loop_example_trains_and_moves_target():
    plain = _load_example("plain_loop")
    cfg, model, loader = _parts()
    before = {n: p.clone() for n, p in model.target_encoder.named_parameters()}
    losses = plain.train(cfg, 4, model=model, loader=loader)
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    moved = [not torch.equal(before[n], p) for n, p in model.target_encoder.named_parameters()]
    assert any(moved)


def test_api_ema_matches_reference_loop():
    from engine import api
    from engine.core.step import param_groups
    a = build_tiny(tiny_cfg())
    b = build_tiny(tiny_cfg())
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        for p in a.encoder.parameters():
            p.add_(0.1)
        for p in b.encoder.parameters():
            p.add_(0.1)
    api.TargetEMA(a)(0.99)
    with torch.no_grad():  # the reference's per-parameter mul_/add_
        for t, e in zip(b.target_encoder.parameters(), b.encoder.parameters()):
            t.mul_(0.99).add_(e, alpha=0.01)
    for (n, p), q in zip(a.target_encoder.named_parameters(), b.target_encoder.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7, msg=lambda m: f"{n}: {m}")
    assert all(not torch.equal(t, e) for t, e in zip(a.target_encoder.parameters(), a.encoder.parameters()))
    assert len(api.param_groups(a)) == len([g for g in param_groups([a.encoder, a.predictor]) if g["params"]])
    class Wrapper(torch.nn.Module):  # DDP / DeepSpeedEngine / Accelerate all keep the model in .module
        def __init__(self, m):
            super().__init__()
            self.module = m
    assert api.unwrap(Wrapper(Wrapper(a))) is a


def test_lightning_module_example():
    pytest.importorskip("lightning", reason="pip install lightning==2.6.6 (see requirements.txt)")
    lm = _load_example("lightning_module")
    import lightning as L
    cfg, model, loader = _parts()
    module = lm.JEPAModule(cfg, ipe=cfg.optimization.ipe, model=model)
    before = {n: p.clone() for n, p in model.target_encoder.named_parameters()}
    L.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module, train_dataloaders=loader)
    assert len(module.losses) == 3 and all(torch.isfinite(torch.tensor(module.losses)))
    assert any(not torch.equal(before[n], p) for n, p in model.target_encoder.named_parameters())
    # lr of step 2 followed the engine's schedule
    opt = module.trainer.optimizers[0]
    assert opt.param_groups[0]["lr"] == pytest.approx(module.sched.lr(2))


def test_accelerate_example():
    """examples/accelerate_loop.py (CPU, one process): prepare, accelerator.backward, EMA on the unwrapped model."""
    pytest.importorskip("accelerate", reason="pip install accelerate==1.15.0")
    example = _load_example("accelerate_loop")
    cfg, model, loader = _parts()
    before = {n: p.clone() for n, p in model.target_encoder.named_parameters()}
    losses = example.train(cfg, 3, model=model, loader=loader)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(before[n], p) for n, p in model.target_encoder.named_parameters())
