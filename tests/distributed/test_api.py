"""engine.api from a plain loop, Lightning and the examples; the EMA on whole tensors (single process).

The examples run on the real tiny V-JEPA when engine.models is importable, else on the toy stand-in.
"""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tests.distributed.toy import TINY_OVERRIDES, ToyDataset, ToyJEPA, ToyMaskSampler

ROOT = Path(__file__).resolve().parents[2]


def _load_example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _parts(extra=()):
    """(cfg, model, loader): the real tiny model on random clips when it exists, else the toy."""
    from engine.config import load_config
    from engine.data.loader import make_loader
    cfg = load_config("configs/tiny_cpu.yaml", TINY_OVERRIDES + list(extra))
    torch.manual_seed(0)
    try:
        from engine.builders import build_jepa, build_mask_sampler
        cfg = load_config("configs/tiny_cpu.yaml", TINY_OVERRIDES + ["model.depth=2", "model.pred_depth=1"] + list(extra))
        model, sampler = build_jepa(cfg), build_mask_sampler(cfg)
        ds = _RandomClips(cfg)
    except ImportError:
        model, sampler, ds = ToyJEPA(), ToyMaskSampler(), ToyDataset()
    return cfg, model, make_loader(ds, batch_size=cfg.data.batch_size, seed=0, mask_sampler=sampler)


class _RandomClips(torch.utils.data.Dataset):
    def __init__(self, cfg, n=32):
        self.shape = (3, cfg.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        g = torch.Generator().manual_seed(int(key[0]))
        return torch.randn(self.shape, generator=g), 0


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
    from engine.runtime.trainer import param_groups
    torch.manual_seed(0)
    a = ToyJEPA()
    b = ToyJEPA()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        for p in a.encoder.parameters():
            p.add_(0.1)
        for p in b.encoder.parameters():
            p.add_(0.1)
    api.TargetEMA(a)(0.99)
    b.update_target(0.99)  # the reference's per-parameter mul_/add_
    for (n, p), q in zip(a.target_encoder.named_parameters(), b.target_encoder.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
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


def test_accelerate_loop():
    """HF Accelerate (CPU, one process): prepare, accelerator.backward, EMA on the unwrapped model."""
    pytest.importorskip("accelerate", reason="pip install accelerate==1.15.0")
    from accelerate import Accelerator

    from engine import api
    cfg, model, loader = _parts()
    acc = Accelerator(cpu=True)
    o = cfg.optimization
    opt = torch.optim.AdamW(api.param_groups(model), lr=0.0, betas=tuple(o.betas), eps=o.eps)
    model, opt = acc.prepare(model, opt)
    ema, sched = api.TargetEMA(acc.unwrap_model(model)), api.schedules(cfg, o.ipe)
    before = {n: p.clone() for n, p in api.unwrap(model).target_encoder.named_parameters()}
    losses = []
    for i, batch in zip(range(3), loader):
        api.set_lr_wd(opt, sched, i)
        loss, _ = api.jepa_loss(model, batch)
        acc.backward(loss)
        opt.step()
        opt.zero_grad()
        if acc.sync_gradients and not acc.optimizer_step_was_skipped:
            ema(sched.momentum(i))
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(before[n], p) for n, p in api.unwrap(model).target_encoder.named_parameters())
