"""ZeRO 0-3 on 2 CPU ranks vs one process on the same global batch, on the real tiny V-JEPA
(engine.builders.build_jepa, real multiblock masks): losses, EMA target, memory per rank, accumulation,
and the consolidated export of the ZeRO-3 checkpoint into the reference layout.

One spawn of 2 ranks runs every stage in turn (start-up dominates a run on this machine).

The one-process reference: the same global batch (rank 0's micro-batch + rank 1's), the loss being
the mean of the two halves' losses, as data parallelism defines it (DeepSpeed, like the reference's
DDP, averages the ranks' gradients; with ragged masks a half's loss is a mean over its own tokens).
"""
import pytest
import torch

from tests.distributed.spawn import run_ranks
from tests.distributed.tiny import FixedMasks, RandomClips, build_tiny, tiny_cfg

STEPS = 6
# warm-up 0 and a small clip so that the per-module clip fires from epoch 1 (step 2) on. eps=1e-6: the
# L1 loss can give a gradient element that is 0 up to rounding (signs that cancel), and Adam with a tiny
# eps turns +-1e-10 of summation-order noise into a +-lr step; a larger eps keeps that noise noise.
OVERRIDES = ["optimization.ipe=2", "optimization.epochs=4", "optimization.warmup=0",
             "optimization.clip_grad=0.05", "optimization.start_lr=0.005",
             "optimization.lr=0.01", "optimization.eps=1e-6"]


def _cfg(extra=()):
    return tiny_cfg(OVERRIDES + list(extra))


def _parts(cfg, fixed=False):
    from engine.builders import build_mask_sampler
    sampler = build_mask_sampler(cfg)
    return build_tiny(cfg), RandomClips(cfg), FixedMasks(sampler) if fixed else sampler


def _gathered(model, stage):
    import contextlib

    import deepspeed
    params = list(model.parameters())
    ctx = deepspeed.zero.GatheredParameters(params) if stage == 3 else contextlib.nullcontext()
    with ctx:
        return {n: p.detach().clone() for n, p in model.named_parameters()}


def _worker(rank, out_root):
    from engine.runtime.trainer import Trainer
    res = {}
    for stage in (0, 1, 2, 3):
        model, ds, sampler = _parts(_cfg())
        tr = Trainer(_cfg(), f"{out_root}/s{stage}", deepspeed=stage, model=model, dataset=ds,
                       mask_sampler=sampler, progress=False, track_memory=True)
        s = tr.fit(max_steps=STEPS)
        local_numel = {n: (p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel())
                       for n, p in model.named_parameters()}
        res[stage] = {"losses": s["losses"], "memory": s["memory"], "params": _gathered(model, stage),
                      "local_numel": local_numel, "requires_grad": {n: p.requires_grad
                                                                    for n, p in model.named_parameters()}}
        if stage == 3:
            res["z3_checks"] = _zero3_checks(tr, model)
    # bf16 autocast (DeepSpeed keeps fp32 weights and an fp32 target), ZeRO-3
    model, ds, sampler = _parts(_cfg())
    tr = Trainer(_cfg(["meta.dtype=bfloat16"]), f"{out_root}/s3bf16", deepspeed=3, model=model,
                   dataset=ds, mask_sampler=sampler, progress=False)
    res["3bf16"] = {"losses": tr.fit(max_steps=STEPS)["losses"],
                    "dtypes": {str(p.ds_tensor.dtype) for p in model.parameters()}}
    # ZeRO-3 with the optimizer state offloaded to the CPU (torch AdamW, no DeepSpeedCPUAdam build)
    model, ds, sampler = _parts(_cfg())
    tr = Trainer(_cfg(), f"{out_root}/s3off", deepspeed=3, offload_optimizer=True, model=model,
                   dataset=ds, mask_sampler=sampler, progress=False)
    res["3off"] = {"losses": tr.fit(max_steps=STEPS)["losses"], "params": _gathered(model, 3)}
    # gradient accumulation: k=2 micro-batches of 2 == one batch of 4 (the same real mask for every
    # sample, so a batch's loss is the mean of its samples'; ZeRO-2)
    for k, b in ((2, 2), (1, 4)):
        cfg = _cfg([f"data.batch_size={b}"])
        model, ds, sampler = _parts(cfg, fixed=True)
        tr = Trainer(cfg, f"{out_root}/acc{k}", deepspeed=2, grad_accum=k,
                       model=model, dataset=ds, mask_sampler=sampler, progress=False)
        res[f"acc{k}"] = {"losses": tr.fit(max_steps=4)["losses"], "params": _gathered(model, 2)}
    res["out_root"] = str(out_root)
    return res


def _zero3_checks(tr, model):
    """The target shares the encoder's process group and split; its EMA touches only local shards and
    makes no collective call."""
    import torch.distributed as dist
    same_group = all(t.ds_process_group is s.ds_process_group and t.ds_tensor.numel() == s.ds_tensor.numel()
                     for t, s in zip(model.target_encoder.parameters(), model.encoder.parameters()))
    calls = []
    names = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "barrier",
             "reduce_scatter", "all_to_all_single", "send", "recv")
    saved = {n: getattr(dist, n) for n in names}
    for n in names:
        setattr(dist, n, lambda *a, _n=n, **k: calls.append(_n))
    try:
        before = [t.ds_tensor.clone() for t in model.target_encoder.parameters()]
        tr.ema(0.5)
    finally:
        for n, f in saved.items():
            setattr(dist, n, f)
    expect = [0.5 * b + 0.5 * s.ds_tensor for b, s in zip(before, model.encoder.parameters())]
    ok = all(torch.allclose(t.ds_tensor, e, rtol=0, atol=1e-7) for t, e in zip(model.target_encoder.parameters(), expect))
    empty = all(p.data.numel() == 0 for p in model.target_encoder.parameters())  # not gathered outside a forward
    return {"same_group": same_group, "collectives": calls, "ema_ok": ok, "target_partitioned": empty}


def _reference(steps):
    """One process, plain torch, on the 2-rank global batch (rank 0's batch + rank 1's batch)."""
    from engine.data.loader import make_loader
    from engine.core.schedules import Schedules, apply_to_optimizer
    from engine.core.step import param_groups
    cfg = _cfg()
    opt = cfg.optimization
    model, ds, sampler = _parts(cfg)
    optim = torch.optim.AdamW([g for g in param_groups([model.encoder, model.predictor]) if g["params"]],
                              lr=0.0, betas=tuple(opt.betas), eps=opt.eps)
    its = [iter(make_loader(ds, batch_size=cfg.data.batch_size, seed=cfg.meta.seed,
                            mask_sampler=sampler, rank=r, world_size=2)) for r in (0, 1)]
    sched = Schedules.from_config(opt, opt.ipe)
    losses = []
    for i in range(steps):
        apply_to_optimizer(optim, sched.lr(i), sched.wd(i))
        batches = [next(it) for it in its]
        loss = torch.stack([model(b[0], b[2])[0] for b in batches]).mean()
        loss.backward()
        if i // opt.ipe > opt.warmup:   # per module, as the reference (and the engine's step) clips
            for m in (model.encoder, model.predictor):
                torch.nn.utils.clip_grad_norm_(m.parameters(), opt.clip_grad)
        optim.step()
        optim.zero_grad(set_to_none=True)
        model.update_target(sched.momentum(i))
        losses.append(loss.item())
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("zero")
    r0, r1 = run_ranks(_worker, 2, args=(str(out),), timeout_s=300)
    return r0, r1, _reference(STEPS)


@pytest.mark.parametrize("stage", [0, 1, 2, 3, "3off"])
def test_stage_matches_one_process(runs, stage):
    r0, r1, (ref_losses, ref_params) = runs
    assert r0[stage]["losses"] == r1[stage]["losses"]  # the logged loss is the all-reduced global one
    torch.testing.assert_close(torch.tensor(r0[stage]["losses"]), torch.tensor(ref_losses), rtol=2e-5, atol=0)
    for n, ref in ref_params.items():  # encoder, predictor and the EMA target
        torch.testing.assert_close(r0[stage]["params"][n], ref, rtol=1e-5, atol=1e-5, msg=lambda m: f"{n}: {m}")
        torch.testing.assert_close(r1[stage]["params"][n], r0[stage]["params"][n], rtol=0, atol=0)
    if stage == "3off":
        return
    # the EMA moved the target away from its initial copy
    assert any(not torch.equal(r0[stage]["params"][n], r0[stage]["params"][n.replace("target_encoder", "encoder")])
               for n in ref_params if n.startswith("target_encoder"))


def test_stages_agree_bitwise_1_2(runs):
    r0 = runs[0]
    assert r0[1]["losses"] == r0[2]["losses"]


def test_zero3_holds_half_per_rank(runs):
    r0, r1, _ = runs
    full = {n: p.numel() for n, p in r0[0]["params"].items()}
    for r in (r0, r1):
        for n, numel in full.items():  # every parameter, the target's included, is split in two
            assert r[3]["local_numel"][n] == (numel + 1) // 2, n
        assert r[0]["local_numel"] == full
    # encoder + predictor (their fixed sin-cos position tables included), and the trained subset
    P_model = sum(v for n, v in full.items() if not n.startswith("target_encoder"))
    P_train = sum(v for n, v in full.items() if not n.startswith("target_encoder") and r0[0]["requires_grad"][n])
    P_tgt = sum(v for n, v in full.items() if n.startswith("target_encoder"))
    assert 0 < P_train < P_model and P_tgt < P_model
    m0, m3 = r0[0]["memory"], r0[3]["memory"]
    pad = 4 * len(full)  # at most one fp32 element of padding per parameter
    assert m0["params"] == 4 * P_model and m0["target"] == 4 * P_tgt
    assert abs(m3["params"] - 2 * P_model) <= pad and abs(m3["target"] - 2 * P_tgt) <= pad
    assert m0["grads"] >= 4 * P_train and abs(m3["grads"] - 2 * P_train) <= pad
    assert m0["optim_state"] == 8 * P_train and abs(m3["optim_state"] - 4 * P_train) <= 2 * pad
    assert m3["master"] == 0  # with fp32 weights the master partition IS the weight shard (aliased)
    assert m3["total"] <= 0.6 * m0["total"]
    # stage 1 splits the optimizer state, stage 2 the gradients too
    assert abs(r0[1]["memory"]["optim_state"] - 4 * P_train) <= 2 * pad and r0[1]["memory"]["master"] == 0
    assert r0[2]["memory"]["grads"] <= 0.65 * m0["grads"]  # the partition + one reduce bucket


def test_grad_accumulation_equals_big_batch(runs):
    r0 = runs[0]
    torch.testing.assert_close(torch.tensor(r0["acc2"]["losses"]), torch.tensor(r0["acc1"]["losses"]),
                               rtol=2e-6, atol=0)
    for n, p in r0["acc1"]["params"].items():
        torch.testing.assert_close(r0["acc2"]["params"][n], p, rtol=1e-5, atol=1e-5)


def test_zero3_target_partitioned_like_encoder_and_ema_is_local(runs):
    for r in runs[:2]:
        c = r["z3_checks"]
        assert c["same_group"] and c["target_partitioned"] and c["ema_ok"]
        assert c["collectives"] == []


def test_bf16_autocast_zero3_close_to_fp32(runs):
    r0, _, (ref_losses, _) = runs
    assert r0["3bf16"]["dtypes"] == {"torch.float32"}  # weights and EMA target stay fp32
    torch.testing.assert_close(torch.tensor(r0["3bf16"]["losses"]), torch.tensor(ref_losses), rtol=3e-2, atol=0)


def test_zero3_export_to_reference_layout_loads_back(runs, tmp_path):
    """The ZeRO-3 run's last checkpoint, consolidated offline into the reference layout, loads strictly
    with engine.load_reference_checkpoint and holds the weights the ranks gathered at the end of training."""
    from engine import load_reference_checkpoint
    from engine.runtime.ds_checkpoint import export_fp32
    r0, _, _ = runs
    out = export_fp32(r0["out_root"] + "/s3/ds_checkpoints", tmp_path / "vjepa.pth.tar")
    assert out["step"] == STEPS
    raw = torch.load(tmp_path / "vjepa.pth.tar", map_location="cpu", weights_only=False)
    assert set(raw) >= {"encoder", "predictor", "target_encoder", "opt", "epoch"}
    assert all(k.startswith("module.backbone.") for k in raw["encoder"])
    assert raw["epoch"] == STEPS // _cfg().optimization.ipe
    ck = load_reference_checkpoint(tmp_path / "vjepa.pth.tar", "vjepa", _cfg())
    gathered = r0[3]["params"]
    for part in ("encoder", "predictor", "target_encoder"):
        sd = getattr(ck, part).state_dict()
        names = {n.split(".", 1)[1] for n in gathered if n.startswith(part + ".")}
        assert set(sd) == names, part
        for n, v in sd.items():
            assert v.dtype == torch.float32
            torch.testing.assert_close(v, gathered[f"{part}.{n}"], rtol=0, atol=0, msg=lambda m: f"{part}.{n}: {m}")
    # the exported target is the EMA target, not a copy of the encoder
    assert any(not torch.equal(ck.target_encoder.state_dict()[n], v) for n, v in ck.encoder.state_dict().items())
