"""engine.jepa.JEPA itself (packed context, kernels.gather_tokens, per-pair loss) under ZeRO 0 and 3,
2 ranks vs one process on the global batch; built on a stand-in with the real models' interface."""
import pytest
import torch

from tests.distributed.packed_toy import PackedDataset, PackedMaskSampler, build, cat_masks
from tests.distributed.spawn import run_ranks
from tests.distributed.toy import TINY_OVERRIDES

STEPS = 4
OVERRIDES = TINY_OVERRIDES + ["optimization.eps=1e-6", "optimization.lr=0.003"]


def _cfg():
    from engine.config import load_config
    return load_config("configs/tiny_cpu.yaml", OVERRIDES)


def _worker(rank, out):
    import contextlib

    import deepspeed

    from engine.runtime.ds_trainer import DSTrainer
    res = {}
    for stage in (0, 3):
        torch.manual_seed(0)
        model = build()
        tr = DSTrainer(_cfg(), f"{out}/s{stage}", ds_config=stage, model=model, dataset=PackedDataset(),
                       mask_sampler=PackedMaskSampler(), progress=False)
        losses = tr.fit(max_steps=STEPS)["losses"]
        ctx = deepspeed.zero.GatheredParameters(list(model.parameters())) if stage == 3 else contextlib.nullcontext()
        with ctx:
            res[stage] = {"losses": losses, "params": {n: p.detach().clone() for n, p in model.named_parameters()}}
    return res


def _reference():
    from engine.data.loader import make_loader
    from engine.runtime.schedules import Schedules, apply_to_optimizer
    from engine.runtime.trainer import param_groups
    cfg = _cfg()
    o = cfg.optimization
    torch.manual_seed(0)
    model = build()
    opt = torch.optim.AdamW([g for g in param_groups([model.encoder, model.predictor]) if g["params"]], lr=0.0,
                            betas=tuple(o.betas), eps=o.eps)
    its = [iter(make_loader(PackedDataset(), batch_size=cfg.data.batch_size, seed=0, mask_sampler=PackedMaskSampler(),
                            rank=r, world_size=2)) for r in (0, 1)]
    sched = Schedules.from_config(o, o.ipe)
    losses = []
    for i in range(STEPS):
        apply_to_optimizer(opt, sched.lr(i), sched.wd(i))
        bs = [next(it) for it in its]
        loss, _ = model(torch.cat([b[0] for b in bs]), cat_masks([b[2] for b in bs]))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_target(sched.momentum(i))
        losses.append(loss.item())
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return run_ranks(_worker, 2, args=(str(tmp_path_factory.mktemp("jz")),), timeout_s=240)[0], _reference()


@pytest.mark.parametrize("stage", [0, 3])
def test_jepa_step_under_zero_matches_one_process(runs, stage):
    res, (ref_losses, ref_params) = runs
    torch.testing.assert_close(torch.tensor(res[stage]["losses"]), torch.tensor(ref_losses), rtol=2e-5, atol=0)
    for n, p in ref_params.items():
        torch.testing.assert_close(res[stage]["params"][n], p, rtol=1e-5, atol=1e-5, msg=lambda m: f"{n}: {m}")
