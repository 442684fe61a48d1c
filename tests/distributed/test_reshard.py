"""A DeepSpeed run resumed on another number of ranks and ZeRO stage (engine.runtime.reshard).

One 2-rank ZeRO-3 launch of the real tiny V-JEPA saves after 2 steps: 8 of the epoch's 32 samples,
which is not a whole number of 3-rank batches (6). It records its fp32 weights (EMA target included),
fp32 masters, Adam moments and steps as DeepSpeed's own API reads them. Then one 3-rank launch resumes
it under ZeRO-1 (optimizer offloaded) and ZeRO-3, and one 1-rank launch under ZeRO-0 and ZeRO-3: each
must hold exactly the saved values, and the ZeRO-3 ones train on to the end of the epoch, reading
exactly the samples the saved run had not read. The 3-rank launch also resumes a one-process
checkpoint under ZeRO-2.
"""
import math
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
import yaml

from tests.distributed.spawn import run_ranks
from tests.distributed.tiny import RandomClips, build_tiny, tiny_cfg

SAVED_STEPS = 2
N_SAMPLES = 32       # RandomClips' default; batch 2 per rank
ADAM = ("exp_avg", "exp_avg_sq")


class IdClips(RandomClips):
    """RandomClips that records the samples read (num_workers=0: the loader reads in this process)."""

    def __init__(self, cfg):
        super().__init__(cfg, n=N_SAMPLES)
        self.seen = []

    def __getitem__(self, key):
        self.seen.append(int(key[0]))
        return super().__getitem__(key)


class Run(NamedTuple):
    out: str                 # the run folder
    stage: int               # the ZeRO stage it is resumed under
    until: int | None = None  # then trained to this step
    source: str = "saved"    # what wrote it: the 2-rank ZeRO-3 run, or one process ("local")
    offload: bool = False    # optimizer states on the CPU


def _trainer(out, stage, seed, offload=False):
    from engine.builders import build_mask_sampler
    from engine.runtime.trainer import Trainer
    cfg = tiny_cfg()
    return Trainer(cfg, out, deepspeed=stage, model=build_tiny(cfg, seed=seed), dataset=IdClips(cfg),
                   mask_sampler=build_mask_sampler(cfg), progress=False, timeout_s=120, offload_optimizer=offload)


def _full_state(tr) -> dict:
    """Every parameter whole, and per trainable one its fp32 master and Adam moments, as DeepSpeed reads
    them (collectives: every rank calls it); the optimizer's step counts."""
    import contextlib

    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
    model, opt = tr.model, tr.backend.engine.optimizer
    gather = deepspeed.zero.GatheredParameters(list(model.parameters())) if tr.backend.stage == 3 else contextlib.nullcontext()
    with gather:
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    adam = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if tr.backend.stage == 0:    # torch AdamW itself: the weights are the fp32 master
            adam[n] = {"fp32": p.detach().clone(), **{k: opt.state[p][k].clone() for k in ADAM}}
        else:
            adam[n] = {"fp32": safe_get_full_fp32_param(p), **{k: safe_get_full_optimizer_state(p, k) for k in ADAM}}
    inner = opt if tr.backend.stage == 0 else opt.optimizer
    return {"weights": weights, "adam": adam, "steps": sorted({float(s["step"]) for s in inner.state.values()}),
            "step": tr.step}


def _save(rank, out):
    tr = _trainer(out, 3, seed=0)
    tr.fit(max_steps=SAVED_STEPS)
    return {**_full_state(tr), "seen": tr.dataset.seen}


def _resume(rank, runs):
    """runs: Run, in order (ZeRO-3 last: it patches torch)."""
    results = []
    for run in runs:
        # other initial weights (seed 1): everything must come from the checkpoint
        tr = _trainer(run.out, run.stage, seed=1, offload=run.offload)
        tr.fit(max_steps=SAVED_STEPS, resume=True)     # loads, trains nothing
        res = {"loaded": _full_state(tr), "loader_loaded": tr.loader.state_dict()}
        if run.until is not None:
            s = tr.fit(max_steps=run.until, resume=True)
            res.update(seen=tr.dataset.seen, losses=s["losses"], steps=s["steps"], loader=tr.loader.state_dict())
        results.append(res)
    return results


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("reshard") / "saved"
    r0, r1 = run_ranks(_save, world_size=2, args=(str(out),), timeout_s=300)
    return out, r0, r0["seen"] + r1["seen"]


def _copies(saved, tmp_path_factory, names):
    root = tmp_path_factory.mktemp("resumed")
    return [str(shutil.copytree(saved[0], root / n)) for n in names]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """A one-process run (engine.runtime.trainer) after 2 steps, and what its checkpoint holds by name."""
    from engine.runtime.trainer import Trainer
    out = tmp_path_factory.mktemp("reshard") / "local"
    cfg = tiny_cfg()
    tr = Trainer(cfg, out, progress=False, dataset=IdClips(cfg))
    tr.fit(max_steps=SAVED_STEPS)
    state = {**{p: getattr(tr.model, p).state_dict() for p in ("encoder", "predictor", "target_encoder")},
             "opt": tr.optimizer.state_dict()}
    names = [n for g in tr.backend.param_names for n in g]
    weights = {f"{part}.{k}": v for part in ("encoder", "predictor", "target_encoder") for k, v in state[part].items()
               if f"{part}.{k}" in dict(tr.model.named_parameters())}
    opt = state["opt"]["state"]
    adam = {n: {"fp32": weights[n], **{k: opt[i][k] for k in ADAM}} for i, n in enumerate(names)}
    return out, {"weights": weights, "adam": adam, "steps": sorted({float(s["step"]) for s in opt.values()})}


# Training to the end of the epoch: the 24 samples left make 4 steps of 3 ranks x 2, or 12 steps of 1 x 2.
@pytest.fixture(scope="module")
def on3(saved, local, tmp_path_factory):
    z1, z3 = _copies(saved, tmp_path_factory, ["z1_on3", "z3_on3"])
    runs = [Run(z1, 1, offload=True), Run(str(local[0]), 2, source="local"), Run(z3, 3, until=SAVED_STEPS + 4)]
    return runs, run_ranks(_resume, world_size=3, args=(runs,), timeout_s=300)


@pytest.fixture(scope="module")
def on1(saved, tmp_path_factory):
    z0, z3 = _copies(saved, tmp_path_factory, ["z0_on1", "z3_on1"])
    runs = [Run(z0, 0), Run(z3, 3, until=SAVED_STEPS + 12)]
    return runs, run_ranks(_resume, world_size=1, args=(runs,), timeout_s=300)


def _check_exact(saved_state, loaded):
    assert loaded["step"] == SAVED_STEPS
    assert saved_state["steps"] == loaded["steps"] == [float(SAVED_STEPS)]
    assert saved_state["weights"].keys() == loaded["weights"].keys()
    assert any(n.startswith("target_encoder.") for n in loaded["weights"])
    for n, w in saved_state["weights"].items():          # the EMA target and the frozen tables included
        assert torch.equal(w, loaded["weights"][n]), n
    assert saved_state["adam"].keys() == loaded["adam"].keys()
    for n, st in saved_state["adam"].items():
        assert st["exp_avg_sq"].abs().sum() > 0, n       # moments that a fresh optimizer would not have
        for k in ("fp32", *ADAM):
            assert torch.equal(st[k], loaded["adam"][n][k].reshape(st[k].shape)), (n, k)


@pytest.mark.parametrize("where", ["on3", "on1"])
def test_zero3_of_2_ranks_resumes_exactly_on_another_world_and_stage(where, saved, request):
    runs, ranks = request.getfixturevalue(where)
    for i, run in enumerate(runs):
        for r in ranks:      # every rank reads the same whole values
            if run.source == "saved":
                _check_exact(saved[1], r[i]["loaded"])


def test_a_one_process_checkpoint_resumes_under_zero2_on_3_ranks(local, on3):
    _runs, ranks = on3
    for rank, r in enumerate(ranks):
        _check_exact(local[1], r[1]["loaded"])
        # one process read 2 batches of 2: 3 ranks go on from position 4, rank r at 4 + r
        pos = r[1]["loader_loaded"]
        assert (pos["epoch"], pos["batch_in_epoch"], pos["start_sample"], pos["rank"]) == (0, 0, 4, rank)


@pytest.mark.parametrize("where", ["on3", "on1"])
def test_the_epoch_goes_on_with_no_sample_repeated_or_skipped(where, saved, request):
    runs, ranks = request.getfixturevalue(where)
    out, until = runs[-1].out, runs[-1].until
    resumed = [i for r in ranks for i in r[-1]["seen"]]
    assert len(saved[2]) == 2 * 2 * SAVED_STEPS
    assert sorted(saved[2] + resumed) == list(range(N_SAMPLES))          # each sample once in the epoch
    for r in ranks:
        assert r[-1]["steps"] == until and len(r[-1]["losses"]) == until - SAVED_STEPS
        assert all(math.isfinite(x) for x in r[-1]["losses"])
        pos = r[-1]["loader"]          # the next epoch starts at its first sample
        assert (pos["epoch"], pos["batch_in_epoch"], pos["start_sample"]) == (1, 0, 0)
    history = yaml.safe_load((Path(out) / "config_history.yaml").read_text())
    assert "ZeRO-3, 2 ranks, step 2" in history[0]["converted_from"]
    assert history[0]["global_batch"] == {"saved": 2 * 2, "now": 2 * len(ranks)}


# -- the loader position alone (no ranks) ------------------------------------------------------------------
def _positions(state, world):
    """Global positions of the epoch that `world` ranks read from loader `state` on, rank by rank."""
    from engine.data.loader import EpochBatchSampler, state_for_world
    out = []
    for r in range(world):
        st = state_for_world(state, world, r)
        s = EpochBatchSampler(state["num_samples"], state["batch_size"], 0, rank=r, world_size=world)
        s.start_batch, s.start_sample = st["batch_in_epoch"], st["start_sample"]
        out += [int(p) for p in s.positions_from(s.start_sample)[s.start_batch * s.batch_size:
                                                                 s.batches_from(s.start_sample) * s.batch_size]]
    return out


def _check_rest(got, consumed, n, M, B):
    """`got` reads positions [consumed, n) once each, less what M ranks must drop (drop_last): under
    one position per rank to even the ranks out, then under a batch per rank."""
    assert len(got) == len(set(got)) and all(consumed <= p < n for p in got)
    assert 0 <= (n - consumed) - len(got) <= (M - 1) + M * (B - 1)


@pytest.mark.parametrize("n", [32, 37])
def test_state_for_world_reads_each_remaining_position_once(n):
    from engine.data.loader import state_for_world
    B = 2
    for W in (1, 2, 3):
        for b in range(n // (B * W) + 1):
            state = {"epoch": 0, "batch_in_epoch": b, "start_sample": 0, "seed": 0, "rank": 0, "world_size": W,
                     "batch_size": B, "num_samples": n}
            for M in (1, 2, 3, 5):
                got = _positions(state, M)
                _check_rest(got, b * B * W, n, M, B)
                if len(got) >= M * B:   # M ranks read one batch each, then move to 2 ranks
                    st = state_for_world(state, M, 0)
                    st = {**st, "batch_in_epoch": st["batch_in_epoch"] + 1}
                    _check_rest(_positions(st, 2), b * B * W + M * B, n, 2, B)


def test_a_per_rank_stream_cannot_move_to_another_world():
    from engine.data.loader import state_for_world
    shards = {"epoch": 0, "batch_in_epoch": 3, "seed": 0, "rank": 0, "world_size": 2, "batch_size": 2,
              "num_samples": 40}   # a tar-shard sampler's state: no global position
    with pytest.raises(ValueError, match="deals samples per rank"):
        state_for_world(shards, 3, 0)
    assert state_for_world(shards, 2, 1)["batch_in_epoch"] == 3        # the same world: unchanged


def test_a_loader_goes_on_from_a_start_sample_then_starts_the_next_epoch_at_0():
    from engine.data.loader import make_loader
    ds = IdClips(tiny_cfg())
    ref = make_loader(ds, batch_size=2, seed=0, rank=1, world_size=3)
    order = ref.sampler.epoch_order(0)
    loader = make_loader(ds, batch_size=2, seed=0, rank=1, world_size=3)
    loader.load_state_dict({"epoch": 0, "batch_in_epoch": 0, "start_sample": 8, "world_size": 3, "rank": 1,
                            "seed": 0, "batch_size": 2, "num_samples": N_SAMPLES})
    it = iter(loader)
    ds.seen.clear()
    for _ in range(4):                 # (32 - 8) / 3 = 8 positions per rank: 4 batches
        next(it)
    assert ds.seen == [int(order[p]) for p in np.arange(9, 32, 3)]
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["start_sample"] == 0
    ds.seen.clear()
    next(it)
    assert ds.seen == [int(x) for x in ref.sampler.epoch_order(1)[[1, 4]]]


def test_skip_batches_finishes_a_partial_epoch_first():
    """meta.skip_batches after a resume on another number of ranks: the epoch begun at a start sample
    is shorter (here 4 batches of rank 1 of 3, from position 8 of 32), then whole epochs (5 batches)."""
    from engine.data.loader import make_loader
    from engine.runtime.start import skip_batches
    ds = IdClips(tiny_cfg())
    state = {"epoch": 0, "batch_in_epoch": 1, "start_sample": 8, "world_size": 3, "rank": 1, "seed": 0,
             "batch_size": 2, "num_samples": N_SAMPLES}
    for n, want in [(2, (0, 3, 8)), (3, (1, 0, 0)), (3 + 5 + 2, (2, 2, 0))]:   # 3 left of the 4
        loader = make_loader(ds, batch_size=2, seed=0, rank=1, world_size=3)
        loader.load_state_dict(state)
        skip_batches(loader, n)
        pos = loader.state_dict()
        assert (pos["epoch"], pos["batch_in_epoch"], pos["start_sample"]) == want, n
