"""DeepSpeed for the JEPA model: its config, the engine set-up, fp32 master aliasing, clipping, memory.

    from engine.runtime import deepspeed_engine as DE
    ds = DE.load_ds_config("configs/deepspeed/zero3.json", micro_batch=8, world_size=ctx.world_size)
    engine = DE.initialize(model, ds, betas=(0.9, 0.999), eps=1e-8)   # model: JEPA (.encoder/.predictor/.target_encoder)
    loss, info = engine(clips, masks); engine.backward(loss); engine.step()

Precision: DeepSpeed keeps fp32 parameters (its bf16/fp16 sections must stay off); bf16 comes from
torch.autocast around the forward (cfg.meta.dtype), the reference's AMP recipe. Why: under ZeRO-3
DeepSpeed's bf16 mode casts every partitioned parameter, the frozen target included, to bf16, and a
bf16 EMA target stops moving at m = 0.99925. With fp32 parameters the EMA also reads exact weights.
Cost: per trained parameter 4 (weights) + 4 (grads) + 8 (Adam) = 16 B, split over W ranks by ZeRO-3,
the same 16 B as DeepSpeed's bf16 mode (2 + 2 + 4 master + 8), because the fp32 master copy is
aliased to the weights (alias_fp32_master); ZeRO-3 all-gathers then move fp32, twice bf16's bytes.
The target adds 4 B per encoder parameter (/W under ZeRO-3, where its forward all-gathers it too).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from torch import nn

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"


def ds_config_path(stage_or_path) -> Path:
    """0..3 -> configs/deepspeed/zero{stage}.json; a path is returned as is."""
    if isinstance(stage_or_path, int) or str(stage_or_path).isdigit():
        return CONFIG_DIR / f"zero{int(stage_or_path)}.json"
    return Path(stage_or_path)


def load_ds_config(config, *, micro_batch: int, world_size: int, grad_accum: int | None = None,
                   offload_optimizer: bool = False) -> dict:
    """A DeepSpeed config dict with the batch sizes filled in from the run's config.

    micro_batch is cfg.data.batch_size (per rank, as in the reference); the global batch is
    micro_batch * grad_accum * world_size. `grad_accum` overrides the JSON's gradient_accumulation_steps.
    """
    ds = copy.deepcopy(config) if isinstance(config, dict) else json.loads(ds_config_path(config).read_text())
    for key in ("bf16", "fp16"):
        if ds.get(key, {}).get("enabled", False):
            raise ValueError(f"DeepSpeed config: `{key}.enabled` must be false: parameters stay fp32 (the EMA "
                             f"target must be fp32); train in bf16 with meta.dtype=bfloat16 (autocast) instead")
    if float(ds.get("gradient_clipping", 0.0)) != 0.0:
        raise ValueError("DeepSpeed config: `gradient_clipping` must be 0: the step clips each module's gradient "
                         "norm (encoder, predictor) itself, after the warm-up; set optimization.clip_grad instead")
    gas = int(grad_accum or ds.get("gradient_accumulation_steps", 1))
    ds["train_micro_batch_size_per_gpu"] = int(micro_batch)
    ds["gradient_accumulation_steps"] = gas
    ds["train_batch_size"] = int(micro_batch) * gas * int(world_size)
    ds.setdefault("zero_allow_untested_optimizer", True)  # a plain torch.optim.AdamW (no JIT build)
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
def register_container_params(root: nn.Module) -> None:
    """ZeRO-3 fetches a module's own parameters only when its forward() runs. The JEPA step calls
    encoder.embed(), forward_packed() etc., not forward(), so parameters that sit directly on a
    container module (pos_embed, mask tokens, cls tokens) would stay partitioned (empty). Register
    them as external parameters of the root so they are gathered for the whole step; they are small.
    Leaf modules (Linear, LayerNorm, Conv) always run through forward() and keep per-module fetching.
    """
    from deepspeed.runtime.zero.partition_parameters import register_external_parameter
    for m in root.modules():
        if m is root or not any(True for _ in m.children()):
            continue
        for p in m.parameters(recurse=False):
            register_external_parameter(root, p)


def initialize(model: nn.Module, ds_config: dict, *, betas=(0.9, 0.999), eps: float = 1e-8):
    """deepspeed.initialize on the whole JEPA module with AdamW over encoder + predictor only.

    The target encoder is part of the engine's module, so under ZeRO-3 it is partitioned by the same
    engine, stage and process group as the encoder (same per-parameter split), but it is in no
    optimizer group and has requires_grad=False: it is never trained.
    """
    import deepspeed
    for p in model.target_encoder.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(optimizer_groups(model), lr=0.0, betas=tuple(betas), eps=eps)
    if zero_stage(ds_config) == 3:
        register_container_params(model)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    alias_fp32_master(engine)
    return engine


def optimizer_groups(model: nn.Module) -> list[dict]:
    """The AdamW groups of `initialize`: encoder + predictor, the non-empty groups of the reference's split."""
    from engine.core.step import param_groups
    return [g for g in param_groups([model.encoder, model.predictor]) if g["params"]]


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
    if n and hasattr(opt, "_link_all_hp_params"):
        # ZeRO-1/2 cut each parameter's fp32 fragment (safe_get/set_full_fp32_param) from the master
        # when it was built: cut them again from the storage the master now has.
        opt._link_all_hp_params()
    return n


def grad_norms(modules, clip: float | None) -> list[float]:
    """Each module's gradient norm over every rank (what one process would compute on the global batch),
    scaled to at most `clip` when given: per module, as the reference clips encoder and predictor.

    Call it between the last micro-batch's backward() and step(). Through DeepSpeed's gradient API,
    at any stage (ZeRO-1/2 assemble each gradient with one all-reduce per parameter; stage 0 holds
    them whole): every rank computes the same norms and applies the same factor, as clip_grad_norm_.
    """
    from deepspeed.utils import safe_get_full_grad, safe_update_full_grad_vectorized
    norms = []
    for module in modules:
        params = [p for p in module.parameters() if p.requires_grad]
        grads = [g for g in (safe_get_full_grad(p) for p in params) if g is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        if clip is not None:
            coef = torch.clamp(clip / (norm + 1e-6), max=1.0)   # torch's clip_grads_with_norm_
            if coef < 1.0:
                safe_update_full_grad_vectorized(params, lambda g, p: g * coef.to(g.device, g.dtype))
        norms.append(float(norm))
    return norms


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

