"""Resume a checkpoint under DeepSpeed on another number of ranks or another ZeRO stage (or a one-process
checkpoint under DeepSpeed): the saved run is made whole, then each rank takes its part of it.

    if found.kind == "local" or found.world_size != world_size or found.zero_stage != zero_stage:
        rank_state = load_resharded(found, engine, model, loader)   # found: resume.find_checkpoint(out)
        step = rank_state["step"]                     # + "nonfinite", "rng" of a saved rank, "note" for the history

Whole: the model state of engine.runtime.resume (`deepspeed_model_state`, the conversion that
`python -m engine.train --resume` uses in one process), made once by rank 0 into a file beside the
checkpoint that every rank maps and that is removed after: fp32 weights of the encoder, predictor and
EMA target (and the frozen sin-cos tables), Adam's moments and step per parameter.
Each rank's part, written in place into the freshly initialised engine:
- weights: ZeRO-3 keeps rank r's slice [r*P, (r+1)*P) of each parameter flattened and zero-padded to
  W*P (P = p.ds_tensor.numel()); stages 0-2 keep every parameter whole. The fp32 master partitions
  then copy the weights (`refresh_fp32_params`): with fp32 weights they hold the same numbers.
- Adam: stage 0 is torch AdamW, per parameter. ZeRO 1-3 keep one flat fp32 partition per group
  (sub-group under ZeRO-3), the optimizer state keyed on it. ZeRO-3's is this rank's slices of the
  group's parameters end to end (the weights' slices, same padding); ZeRO-1/2 cut the group's flat
  buffer instead, so a parameter may lie across partitions: DeepSpeed's tensor-fragment API
  (`safe_set_full_optimizer_state`) writes the part this rank holds. (Its ZeRO-3 twin does not pad:
  it fails on the last rank when W does not divide a parameter's size.)
- data: engine.data.loader.state_for_world: the samples the epoch has consumed stay consumed, the new
  ranks read the rest once. RNG states and counters: those of saved rank (r mod the saved world size).

Why not DeepSpeed's own universal-checkpoint loading (ds_to_universal, then `checkpoint.load_universal`)?
It restores only what the optimizer holds (the engine skips the module's state dict when loading a
universal checkpoint): the EMA target and the sin-cos tables, in no optimizer group, would keep their
initial values. Going through the whole state restores every tensor exactly
(tests/distributed/test_reshard.py compares them bit for bit with the saved run's), from any stage to
any stage, with one conversion for both resume paths.
Refused by name: NVMe-swapped optimizer states; a per-rank data stream (tar shards) moved to another
number of ranks (engine.data.loader.state_for_world).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist

from engine.runtime.errors import RunError
from engine.core.io import atomic_torch_save
from engine.runtime.resume import PARTS, Checkpoint, deepspeed_model_state, ds_meta

log = logging.getLogger("engine.train")


def optimizer_names(model, groups=None) -> list[list[str]]:
    """The parameter names of each AdamW group of `groups` (default: the engine's,
    deepspeed_engine.optimizer_groups), in order."""
    from engine.runtime.deepspeed_engine import optimizer_groups
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in g["params"]] for g in (optimizer_groups(model) if groups is None else groups)]


def load_resharded(found: Checkpoint, engine, model, loader) -> dict:
    """Load `found` into this rank's part of `engine` (whose module is `model`) and `loader`.

    Every rank calls it together. Returns this rank's resume state {"step", "nonfinite", "rng"} and a
    "note" for config_history.yaml (what it was converted from, the global batch then and now).
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    opt = engine.optimizer
    if getattr(opt, "swap_optimizer", False):
        raise RunError(f"{found.describe()}: its optimizer states cannot be moved into NVMe-swapped ones; relaunch "
                       f"with {found.world_size} rank(s) and ZeRO-{found.zero_stage}, or without offload to nvme")
    # the resume state (loader position, RNG states, counters) of the saved rank this one stands for: rank mod
    # the saved world size (every saved rank holds the same loader position)
    mine = found.state if found.kind == "local" else torch.load(
        found.path / f"client_rank{rank % found.world_size:03d}.pt", map_location="cpu", weights_only=False)
    from engine.data.loader import state_for_world
    try:
        loader.load_state_dict(state_for_world(mine["loader"], world, rank))
    except ValueError as e:
        raise RunError(f"{found.describe()}: {e}; relaunch with {found.world_size} rank(s)") from None
    state = _whole_state(found, optimizer_names(model), rank)
    load_whole_state(engine, model, state, found.describe())
    meta = ds_meta(found.path) if found.kind == "deepspeed" else {}
    engine.global_steps = int(meta.get("global_steps", state["step"]))
    engine.skipped_steps = int(meta.get("skipped_steps", 0))
    saved_batch = int(meta["ds_config"]["train_batch_size"] if meta else mine["loader"]["batch_size"])
    note = {"converted_from": found.describe(),
            "global_batch": {"saved": saved_batch, "now": int(engine.train_batch_size())}}
    if rank == 0:
        log.warning("resumed %s on %d rank(s) under ZeRO-%d: the global batch is now %d (was %d)", found.describe(),
                    world, engine.zero_optimization_stage(), engine.train_batch_size(), saved_batch)
    return {"step": int(state["step"]), "nonfinite": mine.get("nonfinite", {}), "rng": mine["rng"], "note": note}


def load_whole_state(engine, model, state: dict, where: str) -> None:
    """Whole fp32 weights ("encoder", "predictor", "target_encoder" state dicts) and, when `state` has
    one, a torch AdamW state dict ("opt") into this rank's part of `engine`, at any stage. Every rank
    calls it together (also how a new run under DeepSpeed starts from a checkpoint)."""
    opt = engine.optimizer
    if hasattr(opt, "checkpoint_event_prologue"):   # ZeRO-3: every parameter partitioned before writing
        opt.checkpoint_event_prologue()
    _load_weights(model, {f"{part}.{k}": v for part in PARTS for k, v in state[part].items()})
    if "opt" in state:
        _load_adam(opt, model, optimizer_names(model), state["opt"], where)
    elif hasattr(opt, "refresh_fp32_params"):
        opt.refresh_fp32_params()   # the master partitions from the weights just written
    if hasattr(opt, "checkpoint_event_epilogue"):
        opt.checkpoint_event_epilogue()


def _whole_state(found: Checkpoint, names: list[list[str]], rank: int) -> dict:
    """The one-process state of `found` (weights, Adam, step), converted once by rank 0 and mapped by all."""
    if found.kind == "local":
        return found.state
    path = found.path.parent / f".resharding-{found.path.name}.pt"
    verdict = [None]
    if rank == 0:
        try:
            atomic_torch_save(deepspeed_model_state(found, names), path)
        except RunError as e:
            verdict = [str(e)]
    dist.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        raise RunError(verdict[0])
    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    dist.barrier()          # every rank has it mapped: the name can go
    if rank == 0:
        Path(path).unlink(missing_ok=True)
    return state


def _rank_slice(value: torch.Tensor, P: int) -> torch.Tensor:
    """ZeRO-3's part of a parameter on this rank: [r*P, (r+1)*P) of it flattened and zero-padded to W*P."""
    rank, world = dist.get_rank(), dist.get_world_size()
    value = torch.nn.functional.pad(value.flatten(), (0, P * world - value.numel()))
    return value[rank * P:(rank + 1) * P]


@torch.no_grad()
def _load_weights(model, full: dict) -> None:
    """Every parameter and buffer of `model` from the whole fp32 `full` ({"encoder.x": tensor, ...})."""
    missing = [n for n, _ in [*model.named_parameters(), *model.named_buffers()] if n not in full]
    if missing:
        raise RunError(f"the checkpoint holds no {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    for name, p in model.named_parameters():
        value = full[name].to(p.dtype)
        if hasattr(p, "ds_tensor"):
            p.ds_tensor.data.copy_(_rank_slice(value, p.ds_tensor.numel()))
        else:
            p.data.copy_(value.view_as(p.data))
    for name, b in model.named_buffers():
        b.copy_(full[name])


@torch.no_grad()
def _load_adam(opt, model, names: list[list[str]], saved: dict, where: str) -> None:
    """Adam's moments and step of every trainable parameter (saved: a torch AdamW state dict in the
    order of `names`, its param_groups possibly bare id lists)."""
    from deepspeed.utils import safe_set_full_optimizer_state
    flat_names = [n for g in names for n in g]
    st = saved["state"]
    if len(st) != len(flat_names):
        raise RunError(f"{where}: Adam state for {len(st)} parameters, this model trains {len(flat_names)}; "
                       "it was written by another model")
    params = dict(model.named_parameters())
    moments = {id(params[n]): st[i] for i, n in enumerate(flat_names)}
    steps = {float(s["step"]) for s in st.values()}
    if len(steps) != 1:
        raise RunError(f"{where}: its parameters were updated different numbers of times ({sorted(steps)}); "
                       "ZeRO keeps one step count per group and cannot hold them")
    step = torch.tensor(steps.pop(), dtype=torch.float32)
    # 3 (ZeRO-3), 1 (ZeRO-1 or 2: the same optimizer partitions) or 0 (the client's torch AdamW)
    stage = (3 if hasattr(opt, "fp32_partitioned_groups_flat") else
             1 if hasattr(opt, "single_partition_of_fp32_groups") else 0)
    if stage == 0:   # torch AdamW itself, state per parameter
        for n in flat_names:
            p = params[n]
            m = moments[id(p)]
            opt.state[p] = {"step": step.clone(), "exp_avg": m["exp_avg"].to(p).reshape(p.shape).clone(),
                            "exp_avg_sq": m["exp_avg_sq"].to(p).reshape(p.shape).clone()}
        return
    opt.refresh_fp32_params()   # the master partitions from the weights just written
    inner = opt.optimizer
    flats = opt.fp32_partitioned_groups_flat if stage == 3 else opt.single_partition_of_fp32_groups
    for flat in flats:   # fresh state, filled below part by part (the padding stays 0)
        inner.state[flat] = {"step": step.clone(), "exp_avg": torch.zeros_like(flat),
                             "exp_avg_sq": torch.zeros_like(flat)}
    keys = ("exp_avg", "exp_avg_sq")
    if stage == 3:   # a sub-group's flat partition: this rank's slices of its parameters, in order
        for flat, group in zip(flats, opt.fp16_groups):
            offset = 0
            for p in group:
                P = p.ds_tensor.numel()
                for key in keys:
                    inner.state[flat][key].narrow(0, offset, P).copy_(_rank_slice(moments[id(p)][key].float(), P))
                offset += P
        return
    # ZeRO-1/2: DeepSpeed maps each parameter to its fragment of the flat partition (none, part or all of
    # it); the fragments point into the state tensors once linked, which DeepSpeed does lazily: now.
    opt._hp_optimizer_states_linked = False
    opt._lazy_init_hp_params_optimizer_state()
    for n in flat_names:
        for key in keys:
            safe_set_full_optimizer_state(params[n], moments[id(params[n])][key].float(), key)
