"""Step backends of the training loop (engine.runtime.trainer): where the work of one step runs.

    backend = LocalBackend("cpu")                                  # one process
    backend = DeepSpeedBackend("configs/deepspeed/zero3.json")     # ZeRO 0-3 on the ranks a launcher started
    backend.setup(model, cfg)            # AdamW over encoder + predictor (under DeepSpeed: the engine)

Per optimizer step the loop calls set_lr_wd; per micro-batch forward, backward (micro_step between
micro-batches); then grad_norms(clip) (each module's norm over every rank, clipped per module) and
step(apply), which says whether the update was applied (the EMA runs only then). all_reduce is the
identity in one process. save / load_resume / load_start move the state that only the backend
holds (weights, optimizer); the loop's own state (step, data position, RNG, counters) travels with it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from engine.runtime import deepspeed_engine as DE, ds_checkpoint
from engine.core.checkpoint import checkpoint_dir, latest_path, save_checkpoint
from engine.core.io import atomic_torch_save
from engine.core.world import from_rank0
from engine.runtime.launch import init_distributed
from engine.runtime.reshard import load_resharded, load_whole_state, optimizer_names
from engine.runtime.resume import PARTS, deepspeed_to_local
from engine.core.schedules import apply_to_optimizer
from engine.core.step import adamw, grad_norm, param_groups

log = logging.getLogger("engine.train")


def _fit_groups(opt: dict, groups: list[dict]) -> dict:
    """An AdamW state dict whose param_groups may be bare id lists (converted from DeepSpeed or the
    reference layout): they take this optimizer's hyper-parameters."""
    if opt["param_groups"] and not isinstance(opt["param_groups"][0], dict):
        opt = {"state": opt["state"], "param_groups": [
            {**{k: v for k, v in g.items() if k != "params"}, "params": ids}
            for g, ids in zip(groups, opt["param_groups"])]}
    return opt


class LocalBackend:
    """One process: torch AdamW, per-module clipping on p.grad, one checkpoint file per save."""
    rank, world, accum = 0, 1, 1

    def __init__(self, device="cpu"):
        self.device = torch.device(device)

    def setup(self, model, cfg) -> None:
        o = cfg.optimization
        self.model = model
        self.optimizer = adamw(param_groups([model.encoder, model.predictor]), betas=tuple(o.betas), eps=o.eps)
        self.param_names = optimizer_names(model, self.optimizer.param_groups)   # each group's, in order

    def set_lr_wd(self, lr: float, wd: float) -> None:
        apply_to_optimizer(self.optimizer, lr, wd)

    def forward(self, clips, masks):
        return self.model(clips, masks)

    def backward(self, loss) -> None:
        loss.backward()

    def micro_step(self) -> None:
        pass

    def grad_norms(self, clip: float | None) -> list[float]:
        return [grad_norm(m.parameters(), clip) for m in (self.model.encoder, self.model.predictor)]

    def step(self, apply: bool) -> bool:
        if apply:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return apply

    def all_reduce(self, x: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return x

    def broadcast(self, obj):
        return obj

    def summary(self) -> dict:
        return {}

    # -- state ---------------------------------------------------------------------------------
    def save(self, out: Path, loop_state: dict, copy_name: str | None = None) -> str:
        state = {**{p: getattr(self.model, p).state_dict() for p in PARTS}, "opt": self.optimizer.state_dict(),
                 **loop_state}
        if copy_name is not None:
            atomic_torch_save(state, checkpoint_dir(out) / f"{copy_name}.pt")
            return copy_name
        return str(save_checkpoint(out, loop_state["step"], state))

    def latest(self, out: Path) -> str | None:
        path = latest_path(out)
        return str(path) if path else None

    def load_start(self, state: dict) -> None:
        """Weights, target and (where the state has it) the optimizer."""
        for p in PARTS:
            getattr(self.model, p).load_state_dict(state[p])
        if "opt" in state:
            self.optimizer.load_state_dict(_fit_groups(state["opt"], self.optimizer.param_groups))

    def load_resume(self, found, loader) -> tuple[dict, dict | None]:
        """Weights, optimizer and `loader` from a checkpoint of either backend; returns the loop's state
        (step, RNG states, counters) and a note for config_history.yaml."""
        state, note = found.state, None
        if found.kind == "deepspeed":
            log.warning("resuming the DeepSpeed checkpoint %s in one process: the global batch changes",
                        found.describe())
            state, note = deepspeed_to_local(found, self.param_names), {"converted_from": found.describe()}
        self.load_start(state)
        loader.load_state_dict(state["loader"])
        return state, note


class DeepSpeedBackend:
    """DeepSpeed ZeRO 0-3 on the ranks a launcher started (fp32 weights; bf16 through autocast).

    DeepSpeed's own clipping stays off (deepspeed_engine.load_ds_config): grad_norms clips per module,
    as the local backend does. A non-finite gradient skips the step on every rank: ZeRO 1-3 detect it
    themselves (overflow), stage 0 drops the gradients so AdamW leaves every parameter alone.
    """

    def __init__(self, ds_config="configs/deepspeed/zero0.json", *, grad_accum: int | None = None,
                 offload_optimizer: bool = False, timeout_s: float | None = None, track_memory: bool = False):
        ctx = init_distributed(timeout_s=timeout_s)
        self.rank, self.world, self.device = ctx.rank, ctx.world_size, ctx.device
        self._ds_args = (ds_config, grad_accum, offload_optimizer)
        self.track_memory = track_memory
        self.memory: dict | None = None
        self._steps = 0

    def setup(self, model, cfg) -> None:
        ds_config, grad_accum, offload = self._ds_args
        o = cfg.optimization
        self.ds_config = DE.load_ds_config(ds_config, micro_batch=cfg.data.batch_size, world_size=self.world,
                                           grad_accum=grad_accum, offload_optimizer=offload)
        self.stage = DE.zero_stage(self.ds_config)
        if cfg.model.compile_model and self.stage == 3:
            raise ValueError(f"model.compile_model=true with DeepSpeed ZeRO stage 3 ({ds_config}): ZeRO-3's "
                             "per-module parameter hooks run inside every compiled block and recompile it until "
                             "torch.compile falls back to eager; use ZeRO stage 0-2, or model.compile_model=false")
        self.accum = int(self.ds_config["gradient_accumulation_steps"])
        self.model = model
        self.param_names = optimizer_names(model)
        self.engine = DE.initialize(model, self.ds_config, betas=o.betas, eps=o.eps)

    def set_lr_wd(self, lr: float, wd: float) -> None:
        apply_to_optimizer(self.engine.optimizer, lr, wd)

    def forward(self, clips, masks):
        return self.engine(clips, masks)

    def backward(self, loss) -> None:
        self.engine.backward(loss)   # scales by 1/accum

    def micro_step(self) -> None:
        self.engine.step()           # within the accumulation: DeepSpeed only counts it

    def grad_norms(self, clip: float | None) -> list[float]:
        return DE.grad_norms((self.model.encoder, self.model.predictor), clip)

    def step(self, apply: bool) -> bool:
        if self.track_memory and self._steps == 1:   # Adam's state exists and the gradients are alive
            self.memory = DE.memory_report(self.engine, self.model)
        self._steps += 1
        if not apply and self.stage == 0:
            for p in self.model.parameters():
                p.grad = None
        self.engine.step()
        return apply and self.engine.was_step_applied()

    def all_reduce(self, x: torch.Tensor, op: str = "sum") -> torch.Tensor:
        import torch.distributed as dist
        x = x.to(self.device)
        dist.all_reduce(x, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return x

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        return from_rank0(obj)

    def summary(self) -> dict:
        return {"zero_stage": self.stage, "memory": self.memory}

    # -- state ---------------------------------------------------------------------------------
    def save(self, out: Path, loop_state: dict, copy_name: str | None = None) -> str:
        # universal_checkpoint_info: lets DeepSpeed's ds_to_universal convert any stage (resume.py uses it)
        step = loop_state["step"]
        client = {"step": step, "epoch": loop_state["epoch"], "world_size": self.world, "zero_stage": self.stage,
                  "config": loop_state["config"], "universal_checkpoint_info": {"universal_checkpoint_version": 0.4}}
        rank_state = {k: loop_state[k] for k in ("loader", "step", "nonfinite", "rng")}
        return ds_checkpoint.save(self.engine, Path(out) / "ds_checkpoints", step, client, rank_state,
                                  copy_tag=copy_name)

    def latest(self, out: Path) -> str | None:
        return ds_checkpoint.read_latest(Path(out) / "ds_checkpoints")

    def load_start(self, state: dict) -> None:
        load_whole_state(self.engine, self.model, state, state["started_from"])

    def load_resume(self, found, loader) -> tuple[dict, dict | None]:
        """As LocalBackend.load_resume; a checkpoint of another world size or stage, or of one process,
        is resharded (engine.runtime.reshard), every rank together."""
        # written by one process, or by another number of ranks or ZeRO stage: DeepSpeed cannot load it as it is
        if found.kind == "local" or found.world_size != self.world or found.zero_stage != self.stage:
            state = load_resharded(found, self.engine, self.model, loader)
            return state, state["note"]
        _client, rank_state = ds_checkpoint.load(self.engine, found.path.parent, tag=found.path.name)
        loader.load_state_dict(rank_state["loader"])
        return rank_state, None
