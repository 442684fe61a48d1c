"""DeepSpeed for the JEPA model: launch checks, engine set-up, the shard-local EMA, checkpoints, export.

    from engine.runtime import distributed as D
    ctx = D.init_distributed(timeout_s=300)        # needs a launcher's env; fails loudly, never falls back to 1 rank
    ds = D.load_ds_config("configs/deepspeed/zero3.json", micro_batch=8, world_size=ctx.world_size)
    engine = D.initialize(model, ds, betas=(0.9, 0.999), eps=1e-8)   # model: JEPA (.encoder/.predictor/.target_encoder)
    ema = D.ShardLocalEMA(model)
    loss, info = engine(clips, masks); engine.backward(loss); engine.step()
    if engine.was_step_applied(): ema(momentum)
    D.save(engine, out / "checkpoints", step, client_state, rank_state)   # DeepSpeed format + atomic `latest`
    D.export_fp32(out / "ds_checkpoints", "model.pth.tar")   # consolidated fp32, the reference layout
    D.run_local(fn, world_size=2, args=(...,))   # fn(rank, *args) on W local CPU ranks (tests, benches, notebooks)

Launch (one machine; on CPU add DS_ACCELERATOR=cpu, gloo is picked automatically):
    deepspeed --num_gpus 2 --module engine.train --config configs/tiny_cpu.yaml --deepspeed configs/deepspeed/zero3.json
    torchrun --standalone --nproc_per_node 2 -m engine.train --config ... --deepspeed configs/deepspeed/zero2.json
Many machines: a hostfile of `host slots=N` lines, the same code path and data on every host:
    deepspeed --hostfile hosts --master_addr host0 --module engine.train --config ... --deepspeed ...zero3.json
    (or torchrun --nnodes M --nproc_per_node N --rdzv_backend c10d --rdzv_endpoint host0:29500 -m engine.train ...)

Precision: DeepSpeed keeps fp32 parameters (its bf16/fp16 sections must stay off); bf16 comes from
torch.autocast around the forward (cfg.meta.dtype), the reference's AMP recipe. Why: under ZeRO-3
DeepSpeed's bf16 mode casts every partitioned parameter, the frozen target included, to bf16, and a
bf16 EMA target stops moving at m = 0.99925. With fp32 parameters the EMA also reads exact weights.
Cost: per trained parameter 4 (weights) + 4 (grads) + 8 (Adam) = 16 B, split over W ranks by ZeRO-3,
the same 16 B as DeepSpeed's bf16 mode (2 + 2 + 4 master + 8), because the fp32 master copy is
aliased to the weights (alias_fp32_master); ZeRO-3 all-gathers then move fp32, twice bf16's bytes.
The target adds 4 B per encoder parameter (/W under ZeRO-3, where its forward all-gathers it too).
Checkpoints of a many-machine run must go to a filesystem every host sees (DeepSpeed writes per rank).
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

import kernels
from engine.runtime.io import atomic_torch_save, atomic_write_text

REQUIRED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 600  # torch's default; JEPA_DIST_TIMEOUT overrides (a checkpoint save must fit in it)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"


class LaunchError(RuntimeError):
    """The distributed world could not be formed as the launch promised."""


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str


def launched_by_launcher() -> bool:
    """True when a launcher (deepspeed, torchrun, run_local, or srun with several tasks) set our rank."""
    return "RANK" in os.environ or "LOCAL_RANK" in os.environ or _slurm_tasks() > 1


def _slurm_tasks() -> int:
    try:
        return int(os.environ.get("SLURM_NTASKS", "0")) if "SLURM_PROCID" in os.environ else 0
    except ValueError:
        return 0


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[07-09,12],cpu01" -> "gpu07"."""
    head = nodelist.split(",")[0] if "[" not in nodelist.split(",")[0] else nodelist[:nodelist.index("]") + 1]
    if "[" not in head:
        return head.strip()
    prefix, ranges = head.split("[", 1)
    return prefix + ranges.rstrip("]").split(",")[0].split("-")[0]


def slurm_env() -> dict:
    """RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT from srun's SLURM_* variables (those a
    launcher already set win). The master is the node list's first host; the port is MASTER_PORT, else
    one derived from the job id, so two jobs sharing a node do not collide."""
    if _slurm_tasks() < 1:
        return {}
    e = os.environ
    missing = [k for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST") if k not in e]
    if missing:
        raise LaunchError(f"SLURM launch: {missing} are not set; start the job with `srun python -m engine.train ...`")
    job = int(e.get("SLURM_JOB_ID", "0") or 0)
    return {"RANK": e["SLURM_PROCID"], "WORLD_SIZE": e["SLURM_NTASKS"], "LOCAL_RANK": e["SLURM_LOCALID"],
            "MASTER_ADDR": first_host(e["SLURM_JOB_NODELIST"]), "MASTER_PORT": str(20000 + job % 20000)}


def _setup_accelerator() -> None:
    # Must run before DeepSpeed first asks for its accelerator (it reads DS_ACCELERATOR once).
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed.ops
    if os.environ.get("DS_ACCELERATOR") == "cpu" and os.environ.get("JEPA_DS_SHM", "0") != "1":
        # The CPU accelerator JIT-builds a shm all-reduce op (~65 s on 2 cores) on first use; plain
        # gloo gives bit-identical results, so skip it unless asked (JEPA_DS_SHM=1).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed(expected_world_size: int | None = None, timeout_s: float | None = None) -> DistContext:
    """Join the process group the launcher described, or raise LaunchError naming what is wrong.

    Never falls back to one process: missing env, a wrong world size, or a rank that never arrives
    within `timeout_s` (default $JEPA_DIST_TIMEOUT or 600 s) is an error. The same timeout bounds
    every later collective, so a peer that dies mid-run cannot hang the others forever.
    """
    timeout_s = float(timeout_s or os.environ.get("JEPA_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    for k, v in slurm_env().items():
        os.environ.setdefault(k, v)
    missing = [k for k in REQUIRED_ENV if k not in os.environ]
    if missing:
        raise LaunchError(f"distributed launch: environment variables {missing} are not set; start with "
                          "`deepspeed --num_gpus N --module engine.train ...` or `torchrun --nproc_per_node N ...`")
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if expected_world_size is not None and world != expected_world_size:
        raise LaunchError(f"distributed launch: WORLD_SIZE={world} but {expected_world_size} ranks were expected")
    if not 0 <= rank < world:
        raise LaunchError(f"distributed launch: RANK={rank} is outside WORLD_SIZE={world}")
    _setup_accelerator()
    import deepspeed
    import torch.distributed as dist
    from deepspeed.accelerator import get_accelerator
    backend = get_accelerator().communication_backend_name()
    if not dist.is_initialized():
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        try:
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False,
                                       timeout=timedelta(seconds=timeout_s))
            if backend == "gloo":
                # Names the ranks that did not reach the barrier (gloo only).
                dist.monitored_barrier(timeout=timedelta(seconds=timeout_s), wait_all_ranks=True)
            else:
                dist.barrier()
        except Exception as e:  # torch raises DistStoreError / RuntimeError / TimeoutError variously
            raise LaunchError(f"rank {rank}: the process group of {world} ranks at {where} did not form within "
                              f"{timeout_s:.0f} s (a rank never arrived, or the launch is wrong): "
                              f"{type(e).__name__}: {e}") from e
    elif dist.get_world_size() != world:
        raise LaunchError(f"process group has {dist.get_world_size()} ranks, WORLD_SIZE says {world}")
    if get_accelerator().device_name() == "cpu":
        device = torch.device("cpu")
    else:
        device = torch.device(get_accelerator().device_name(local))
        get_accelerator().set_device(local)
    return DistContext(rank, world, local, device, backend)


# -- DeepSpeed config ------------------------------------------------------------------------------
def ds_config_path(stage_or_path) -> Path:
    """0..3 -> configs/deepspeed/zero{stage}.json; a path is returned as is."""
    if isinstance(stage_or_path, int) or str(stage_or_path).isdigit():
        return CONFIG_DIR / f"zero{int(stage_or_path)}.json"
    return Path(stage_or_path)


def load_ds_config(config, *, micro_batch: int, world_size: int, grad_accum: int | None = None,
                   clip_grad: float | None = None, offload_optimizer: bool = False) -> dict:
    """A DeepSpeed config dict with the batch sizes filled in from the run's config.

    micro_batch is cfg.data.batch_size (per rank, as in the reference); the global batch is
    micro_batch * grad_accum * world_size. `grad_accum` overrides the JSON's gradient_accumulation_steps.
    """
    ds = copy.deepcopy(config) if isinstance(config, dict) else json.loads(ds_config_path(config).read_text())
    for key in ("bf16", "fp16"):
        if ds.get(key, {}).get("enabled", False):
            raise ValueError(f"DeepSpeed config: `{key}.enabled` must be false: parameters stay fp32 (the EMA "
                             f"target must be fp32); train in bf16 with meta.dtype=bfloat16 (autocast) instead")
    gas = int(grad_accum or ds.get("gradient_accumulation_steps", 1))
    ds["train_micro_batch_size_per_gpu"] = int(micro_batch)
    ds["gradient_accumulation_steps"] = gas
    ds["train_batch_size"] = int(micro_batch) * gas * int(world_size)
    ds.setdefault("zero_allow_untested_optimizer", True)  # a plain torch.optim.AdamW (no JIT build)
    if clip_grad is not None:
        ds["gradient_clipping"] = float(clip_grad)
    if offload_optimizer:
        zo = ds.setdefault("zero_optimization", {})
        if zo.get("stage", 0) == 0:
            raise ValueError("optimizer offload needs ZeRO stage >= 1")
        zo["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        ds["zero_force_ds_cpu_optimizer"] = False  # keep torch AdamW (DeepSpeedCPUAdam is a JIT build)
    return ds


def zero_stage(ds_config: dict) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


# -- the engine --------------------------------------------------------------------------------------
def register_container_params(root: nn.Module) -> int:
    """ZeRO-3 fetches a module's own parameters only when its forward() runs. The JEPA step calls
    encoder.embed(), forward_packed() etc., not forward(), so parameters that sit directly on a
    container module (pos_embed, mask tokens, cls tokens) would stay partitioned (empty). Register
    them as external parameters of the root so they are gathered for the whole step; they are small.
    Leaf modules (Linear, LayerNorm, Conv) always run through forward() and keep per-module fetching.
    """
    from deepspeed.runtime.zero.partition_parameters import register_external_parameter
    n = 0
    for m in root.modules():
        if m is root or not any(True for _ in m.children()):
            continue
        for p in m.parameters(recurse=False):
            register_external_parameter(root, p)
            n += 1
    return n


def initialize(model: nn.Module, ds_config: dict, *, betas=(0.9, 0.999), eps: float = 1e-8):
    """deepspeed.initialize on the whole JEPA module with AdamW over encoder + predictor only.

    The target encoder is part of the engine's module, so under ZeRO-3 it is partitioned by the same
    engine, stage and process group as the encoder (same per-parameter split), but it is in no
    optimizer group and has requires_grad=False: it is never trained.
    """
    import deepspeed
    from engine.runtime.trainer import param_groups
    for p in model.target_encoder.parameters():
        p.requires_grad_(False)
    groups = [g for g in param_groups([model.encoder, model.predictor]) if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=0.0, betas=tuple(betas), eps=eps)
    if zero_stage(ds_config) == 3:
        register_container_params(model)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    alias_fp32_master(engine)
    return engine


def alias_fp32_master(engine) -> int:
    """Drop ZeRO's second fp32 copy of this rank's weight partition: with fp32 weights (our only mode)
    the "master" partition and the weight partition hold the same numbers, so make them one storage.

    Saves 4/W B/param per rank. ZeRO-3 (stage3.py) means to do this itself for fp32 weights but compares
    a torch.device with a str, which is False in torch 2.13; stages 1-2 always clone. After the
    optimizer updates the master in place, DeepSpeed's master -> weight copy becomes a self-copy.
    Skipped with optimizer offload (the master lives elsewhere). Returns the number of groups aliased.
    """
    opt = engine.optimizer
    if getattr(opt, "cpu_offload", False) or getattr(opt, "offload_optimizer", False):
        return 0
    n = 0
    if hasattr(opt, "fp32_partitioned_groups_flat"):                                   # ZeRO-3
        pairs = list(zip(opt.fp32_partitioned_groups_flat, opt.fp16_partitioned_groups_flat))
    elif hasattr(opt, "single_partition_of_fp32_groups"):                              # ZeRO-1/2
        import torch.distributed as dist
        pairs = [(m, opt.parallel_partitioned_bit16_groups[i][dist.get_rank(group=opt.real_dp_process_group[i])])
                 for i, m in enumerate(opt.single_partition_of_fp32_groups)]
    else:
        return 0
    for master, weights in pairs:
        if weights is None or master.dtype != weights.dtype or master.device != weights.device \
                or master.shape != weights.shape or master.data_ptr() == weights.data_ptr():
            continue
        if master in getattr(opt.optimizer, "state", {}):   # too late: Adam state already keyed on it
            continue
        master.data = weights.data
        n += 1
    return n


def set_grad_clip(engine, value: float) -> None:
    """Change the global-norm clip threshold between steps (the reference clips only after warm-up).

    DeepSpeed reads it from the config (stage 0) or the ZeRO optimizer's `clip_grad` (stages 1-3) at
    each step. Note: DeepSpeed clips ONE norm over encoder + predictor; the single-process Trainer
    clips each module's norm separately, as the reference does. They agree whenever no clip fires.
    """
    engine._config.gradient_clipping = float(value)
    if hasattr(engine.optimizer, "clip_grad"):
        engine.optimizer.clip_grad = float(value)


# -- the EMA ------------------------------------------------------------------------------------------
class ShardLocalEMA:
    """target = m * target + (1 - m) * encoder on what this rank holds, with no communication.

    ZeRO-3: both encoders are partitioned by the same engine with the same per-parameter split, so
    rank r's `p.ds_tensor` of the target and of the encoder cover the same elements: the update is
    elementwise on the local shards, 1/W of the parameters per rank, and nothing is exchanged.
    (A ds_persist parameter, kept whole on every rank, is updated in full too; zero3.json sets the
    persistence threshold to 0 so there are none.)

    Stages 0-2 (our choice): a full fp32 target replica per rank, updated from the replicated
    encoder, with no communication. These stages already replicate the encoder on every rank, so the
    replica costs 4 B/param (vs 16 B/param of fp32 master + Adam moments in stage 0, 4-16 B in 1-2)
    and an EMA pass reads 8 B and writes 4 B per param locally. The alternative, a 1/W shard of the
    target plus an all-gather before each target forward, saves 4(1 - 1/W) B/param but moves
    4(W - 1)/W B/param per rank per step on the wire: that trade is what ZeRO-3 is for.
    All ranks apply the same update to the same values, so the replicas stay bitwise identical.
    """

    def __init__(self, model: nn.Module):
        src = dict(model.encoder.named_parameters())
        tgt = dict(model.target_encoder.named_parameters())
        if src.keys() != tgt.keys():
            raise ValueError(f"ShardLocalEMA: encoder and target differ: {sorted(src.keys() ^ tgt.keys())[:8]}")
        self.pairs = [(tgt[n], src[n]) for n in tgt]

    def local_tensors(self):
        targets, sources = [], []
        for t, s in self.pairs:
            if hasattr(t, "ds_tensor") != hasattr(s, "ds_tensor"):
                raise RuntimeError("ShardLocalEMA: target and encoder are not partitioned alike")
            if hasattr(t, "ds_tensor"):
                if t.ds_numel != s.ds_numel or t.ds_tensor.shape != s.ds_tensor.shape:
                    raise RuntimeError("ShardLocalEMA: target and encoder shards differ in size")
                targets.append(t.ds_tensor.data)
                sources.append(s.ds_tensor.data)
                if getattr(t, "ds_persist", False):  # kept whole on every rank as well
                    targets.append(t.data)
                    sources.append(s.data)
            else:
                targets.append(t.data)
                sources.append(s.data)
        return targets, sources

    @torch.no_grad()
    def __call__(self, momentum) -> None:
        targets, sources = self.local_tensors()
        kernels.ema_(targets, sources, momentum)


# -- memory accounting ---------------------------------------------------------------------------------
def memory_report(engine, model: nn.Module) -> dict:
    """Bytes this rank holds, by kind. Call it between backward() and step() to count gradients, after
    a first step so that Adam's moments exist.

    params: encoder + predictor working weights (the local shard under ZeRO-3)
    target: the EMA target encoder (ditto)
    grads: gradient storage (p.grad, ZeRO's partitioned/averaged gradient buffers)
    optim: optim_state (Adam moments) + master (ZeRO's fp32 master partitions when they are a
        separate copy: stages 1-2 clone them; ZeRO-3 with fp32 weights updates the weights in place)
    Each storage is counted once, in the first kind that holds it (ZeRO hands out views of flat buffers).
    """
    seen: set[int] = set()

    def size(tensors) -> int:
        n = 0
        for t in tensors:
            if t is None or not torch.is_tensor(t) or t.numel() == 0:
                continue
            st = t.untyped_storage()
            if st.data_ptr() not in seen:
                seen.add(st.data_ptr())
                n += st.nbytes()
        return n

    def local(params):
        return [p.ds_tensor if hasattr(p, "ds_tensor") else p.data for p in params]

    trainable = [p for m in (model.encoder, model.predictor) for p in m.parameters()]
    opt = engine.optimizer
    inner = getattr(opt, "optimizer", opt)
    rep = {"params": size(local(trainable)), "target": size(local(model.target_encoder.parameters()))}
    grads = [p.grad for p in trainable] + [getattr(opt, "grad_partitions_flat_buffer", None)]  # ZeRO-3
    for g in (getattr(opt, "averaged_gradients", None) or {}).values():                       # ZeRO-1/2
        grads += list(g or [])
    rep["grads"] = size(grads)
    rep["optim_state"] = size(v for st in inner.state.values() for v in st.values() if torch.is_tensor(v) and v.numel() > 1)
    rep["master"] = size([t for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat")
                          for t in (getattr(opt, name, None) or [])])
    rep["optim"] = rep["optim_state"] + rep["master"]
    rep["total"] = rep["params"] + rep["target"] + rep["grads"] + rep["optim"]
    return rep


# -- checkpoints ----------------------------------------------------------------------------------------
def tag_for(step: int) -> str:
    return f"step_{step:07d}"


def read_latest(ckpt_dir) -> str | None:
    p = Path(ckpt_dir) / "latest"
    return p.read_text().strip() if p.exists() else None


def save(engine, ckpt_dir, step: int, client_state: dict, rank_state: dict, keep_last: int = 2) -> str:
    """DeepSpeed's checkpoint of step `step` + this rank's own state, then `latest` (atomically).

    client_state (model-independent resume state: step, config) goes into DeepSpeed's files;
    rank_state (RNG states, this rank's loader position) into <tag>/client_rank{r}.pt. `latest` is
    written in DeepSpeed's format (the tag) only after every rank has finished writing, so a crash
    mid-save leaves it on the previous complete checkpoint; older tags are removed only after.
    """
    import torch.distributed as dist
    ckpt_dir = Path(ckpt_dir)
    tag = tag_for(step)
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state, save_latest=False)
    atomic_torch_save(rank_state, ckpt_dir / tag / f"client_rank{dist.get_rank():03d}.pt")
    dist.barrier()
    if dist.get_rank() == 0:
        atomic_write_text(ckpt_dir / "latest", tag)
        tags = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir())
        for old in tags[:-keep_last] if keep_last > 0 else []:
            if old.name != tag:
                import shutil
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return tag


def load(engine, ckpt_dir, tag: str | None = None):
    """(client_state, rank_state) of `tag` (default: `latest`), or None when there is no checkpoint."""
    import torch.distributed as dist
    tag = tag or read_latest(ckpt_dir)
    if tag is None:
        return None
    path, client_state = engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=False)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed could not load checkpoint {tag} from {ckpt_dir}")
    rank_file = Path(ckpt_dir) / tag / f"client_rank{dist.get_rank():03d}.pt"
    if not rank_file.exists():
        raise FileNotFoundError(f"{rank_file} is missing: resume needs the same world size as the save")
    return client_state, torch.load(rank_file, map_location="cpu", weights_only=False)


def export_fp32(ckpt_dir, out_path, tag: str | None = None, kind: str | None = None) -> dict:
    """Consolidate a DeepSpeed checkpoint into one fp32 file in the reference layout.

    Offline (no process group, any number of ranks wrote it). Stages 0-2 keep fp32 parameters whole
    in the model-states file; ZeRO-3 keeps the trainable ones as fp32 optimizer partitions and the
    frozen ones (the target, the sin-cos tables) as per-rank fragments, which deepspeed's zero_to_fp32
    stitches together. The file is written by engine.save_reference_checkpoint: {"encoder",
    "predictor", "target_encoder"} state dicts with the `kind`'s key prefix ("module.backbone." for
    vjepa/vjepa2, "module." for ijepa; by default the kind the run's config describes, see
    reference_kind), epoch, world_size, a fresh optimizer state in the reference's
    group layout and GradScaler's initial state, so that
    `engine.load_reference_checkpoint(out_path, kind, cfg)` and the reference train scripts read it.
    Returns {"encoder", "predictor", "target_encoder"} (unprefixed fp32 state dicts), step, epoch, tag.
    """
    from engine.config import load_config
    from engine.reference_ckpt import reference_kind, save_reference_checkpoint
    ckpt_dir = Path(ckpt_dir)
    tag = tag or read_latest(ckpt_dir)
    if tag is None:
        raise FileNotFoundError(f"no `latest` in {ckpt_dir}: not a DeepSpeed checkpoint folder of engine.train")
    d = ckpt_dir / tag
    model_file = d / "mp_rank_00_model_states.pt"
    if not model_file.exists():
        model_file = d / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    if not model_file.exists():
        raise FileNotFoundError(f"{d}: no mp_rank_00_model_states.pt nor zero_pp_rank_0_mp_rank_00_model_states.pt")
    meta = torch.load(model_file, map_location="cpu", weights_only=False)
    stage = int(meta.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0))
    if stage == 3:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        flat = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    else:
        flat = dict(meta["module"])
    parts = {"encoder": {}, "predictor": {}, "target_encoder": {}}
    for k, v in flat.items():
        head, _, rest = k.partition(".")
        if head in parts:
            parts[head][rest] = v.detach().float().clone() if v.is_floating_point() else v.clone()
    empty = [p for p, sd in parts.items() if not sd]
    if empty:
        raise ValueError(f"{d}: the checkpoint holds no {empty} weights (keys: {sorted(flat)[:6]} ...)")
    cfg = load_config(raw=meta["config"]) if meta.get("config") else None
    if kind is None:
        if cfg is None:
            raise ValueError(f"{model_file}: no run config in the checkpoint; pass kind='vjepa'|'vjepa2'|'ijepa'")
        kind = reference_kind(cfg)
    epoch = meta.get("epoch", 0)
    save_reference_checkpoint(out_path, parts, kind, config=cfg, epoch=int(epoch or 0),
                              world_size=meta.get("world_size"))
    return {**parts, "step": meta.get("step"), "epoch": epoch, "tag": tag}


# -- local multi-process runs (tests, benches, notebooks) ---------------------------------------------------
def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_local_entry(rank, world_size, port, fn, args, out_dir, threads):
    import traceback
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    torch.set_num_threads(threads)
    try:
        result = fn(rank, *args)
    except BaseException:
        traceback.print_exc()
        raise
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))


def run_local(fn, world_size: int = 2, args=(), timeout_s: float = 300, threads: int = 1) -> list:
    """Run fn(rank, *args) on `world_size` local processes set up as a launcher would (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT); returns each rank's (picklable) result. A rank that raises or dies
    fails the call with its error; past `timeout_s` all ranks are killed and TimeoutError is raised.
    fn must be importable (a module-level function): ranks are started with `spawn`.
    """
    import tempfile
    import time
    import torch.multiprocessing as mp
    out_dir = tempfile.mkdtemp(prefix="ranks_")
    ctx = mp.start_processes(_run_local_entry, args=(world_size, _free_port(), fn, args, out_dir, threads),
                             nprocs=world_size, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{world_size} ranks did not finish within {timeout_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]
