"""The DeepSpeed training loop: the single-process Trainer's step on many ranks, ZeRO 0-3.

    # under a launcher (deepspeed / torchrun / a spawn helper that sets RANK, WORLD_SIZE, ...):
    trainer = DSTrainer(cfg, output_dir, ds_config="configs/deepspeed/zero3.json", grad_accum=1)
    summary = trainer.fit(max_steps=None, resume=False)

Per optimizer step i (k = gradient_accumulation_steps micro-batches of cfg.data.batch_size per rank):
set lr/wd from the schedules and the clip threshold (0 during warm-up, as the reference), k times
{forward under autocast, engine.backward (scales by 1/k), engine.step()}, then the EMA of the target
with momentum(i) on this rank's local shards, only when DeepSpeed applied the step. The logged loss is
the mean over micro-batches and ranks (one scalar all-reduce): the global batch's loss.

Checkpoints: DeepSpeed's own format in <out>/ds_checkpoints/step_XXXXXXX/ plus per-rank resume state
(loader position, RNG states) and an atomically written `latest`; see engine.runtime.ds_checkpoint.
`python -c "from engine.runtime.ds_checkpoint import export_fp32; export_fp32('<out>/ds_checkpoints', 'model.pth.tar')"`
writes one consolidated fp32 file in the reference layout (engine.save_reference_checkpoint), which
engine.load_reference_checkpoint and the reference train scripts read; any stage, any world size.

Test hooks: JEPA_FAULT_KILL="RANK:STEP" makes that rank SIGKILL itself at the start of that step;
JEPA_FAULT_RAISE="RANK:STEP" makes it raise there (a rank that fails while its peers run on).
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from engine.config import Config, save_config
from engine.runtime import deepspeed_engine as DE, ds_checkpoint
from engine.runtime.ema import TargetEMA
from engine.runtime.launch import init_distributed
from engine.runtime.errors import RunError, checkpoint_write, data_errors
from engine.runtime.faults import NonFinitePolicy, StopSignals
from engine.runtime.flops import peak_memory_mb
from engine.runtime.metrics import MetricsLogger, loss_summary
from engine.runtime.reshard import load_resharded, resharding_needed
from engine.runtime.resume import check_config, find_checkpoint, record_changes
from engine.runtime.rundir import claim, check_output
from engine.runtime.schedules import Schedules, apply_to_optimizer
from engine.runtime.start import skip_batches, start_path
from engine.runtime.trainer import _progress, autocast, next_batch, seed_everything

log = logging.getLogger("engine.train")


class DSTrainer:
    def __init__(self, cfg: Config, output_dir, ds_config="configs/deepspeed/zero0.json", *,
                 grad_accum: int | None = None, offload_optimizer: bool = False, progress: bool = True,
                 timeout_s: float | None = None, model=None, dataset=None, mask_sampler=None,
                 track_memory: bool = False):
        """model / dataset / mask_sampler default to the builders' (tests and benches pass their own)."""
        self.cfg = cfg
        self.out = Path(output_dir)
        self.progress = progress
        if start_path(cfg) is not None or cfg.meta.save_every_freq > 0:
            key = ("optimization.is_anneal" if cfg.optimization.is_anneal else "meta.read_checkpoint"
                   if cfg.meta.read_checkpoint else "meta.save_every_freq")
            raise RunError(f"{key}: not supported under DeepSpeed yet (the one-process trainer, `python -m "
                           "engine.train` without a launcher, supports it); unset it to train under DeepSpeed")
        self.ctx = init_distributed(timeout_s=timeout_s)
        self.rank, self.world = self.ctx.rank, self.ctx.world_size
        self.device = self.ctx.device
        seed_everything(cfg.meta.seed)  # same seed on every rank: identical initial weights
        if model is None:
            from engine.builders import build_jepa
            model = build_jepa(cfg)
        self.model = model.to(self.device)
        opt = cfg.optimization
        B = cfg.data.batch_size
        self.ds_config = DE.load_ds_config(ds_config, micro_batch=B, world_size=self.world, grad_accum=grad_accum,
                                           offload_optimizer=offload_optimizer)
        self.stage = DE.zero_stage(self.ds_config)
        self.engine = DE.initialize(self.model, self.ds_config, betas=opt.betas, eps=opt.eps)
        self.accum = int(self.ds_config["gradient_accumulation_steps"])
        with data_errors(cfg):
            if dataset is None:
                from engine.builders import build_dataset
                dataset = build_dataset(cfg, train=True)
            if mask_sampler is None:
                from engine.builders import build_mask_sampler
                mask_sampler = build_mask_sampler(cfg)
            from engine.builders import build_loader
            self.loader = build_loader(cfg, dataset, self.device, mask_sampler=mask_sampler, rank=self.rank,
                                       world_size=self.world, batch_size=B)
        self.dataset = dataset
        # An optimizer step eats `accum` micro-batches per rank.
        self.ipe = opt.ipe or max(1, self.loader.batches_per_epoch // self.accum)
        self.total_steps = opt.epochs * self.ipe
        self.sched = Schedules.from_config(opt, self.ipe)
        self.nonfinite = NonFinitePolicy(cfg.meta.max_nonfinite_in_a_row)
        self.ema = TargetEMA(self.model)
        self.track_memory = track_memory
        self.memory: dict | None = None
        self.step = 0
        self._fault = _parse_fault(os.environ.get("JEPA_FAULT_KILL"))
        self._fault_raise = _parse_fault(os.environ.get("JEPA_FAULT_RAISE"))

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "ds_checkpoints"

    # -- one optimizer step --------------------------------------------------------------------------
    def train_step(self, micro_batches) -> dict:
        """micro_batches: `accum` (clips, masks) pairs of this rank."""
        cfg, i = self.cfg, self.step
        opt = cfg.optimization
        lr, wd, m = self.sched.lr(i), self.sched.wd(i), self.sched.momentum(i)
        apply_to_optimizer(self.engine.optimizer, lr, wd)
        clip = opt.clip_grad if opt.clip_grad is not None and i // self.ipe > opt.warmup else 0.0
        DE.set_grad_clip(self.engine, clip)
        losses, info = [], {}
        for j, (clips, masks) in enumerate(micro_batches):
            clips = (clips.to(self.device, non_blocking=True) if torch.is_tensor(clips)
                     else [c.to(self.device, non_blocking=True) for c in clips])  # num_clips > 1
            with autocast(cfg.dtype, self.device):
                loss, info = self.engine(clips, masks)
            # Every rank must take the same branch: a non-finite loss on any rank skips the step on all.
            worst = _all_reduce_max(0.0 if torch.isfinite(loss) else math.inf, self.device)
            if j == 0 and self.nonfinite.skip(i, float(loss) if worst == 0 else math.nan):
                self.step += 1
                return {"loss": math.nan, "lr": lr, "wd": wd, "momentum": m, "enc_grad_norm": math.nan,
                        "nonfinite_skipped": self.nonfinite.skipped}
            if worst != 0:   # mid-accumulation: DeepSpeed already holds part of this step's gradients
                raise RunError(f"step {i}: a non-finite loss in micro-batch {j} of {len(micro_batches)} (gradient "
                               "accumulation) cannot be skipped alone; lower optimization.lr or check the data, "
                               "then --resume from the last checkpoint")
            self.engine.backward(loss)
            if self.track_memory and i == 1 and j == len(micro_batches) - 1:  # Adam state exists
                self.memory = DE.memory_report(self.engine, self.model)  # grads are alive here
            self.engine.step()
            losses.append(loss.detach().float())
        if self.engine.was_step_applied():
            self.ema(m)
        loss_g = torch.stack(losses).mean().to(self.device)
        dist.all_reduce(loss_g)
        self.step += 1
        gn = self.engine.get_global_grad_norm()
        return {"loss": float(loss_g) / self.world, "lr": lr, "wd": wd, "momentum": m,
                "enc_grad_norm": float(gn) if gn is not None else math.nan, "nonfinite_skipped": self.nonfinite.skipped,
                **{k: float(v) for k, v in info.items()}}

    # -- state ----------------------------------------------------------------------------------------
    def save(self) -> str:
        # universal_checkpoint_info: lets DeepSpeed's ds_to_universal convert any stage (resume.py uses it)
        client = {"step": self.step, "epoch": self.step // self.ipe, "world_size": self.world,
                  "zero_stage": self.stage, "config": self.cfg.to_dict(),
                  "universal_checkpoint_info": {"universal_checkpoint_version": 0.4}}
        rank_state = {"loader": self.loader.state_dict(), "step": self.step, "nonfinite": self.nonfinite.state_dict(),
                      "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                              "python": random.getstate()}}
        with checkpoint_write(self.ckpt_dir, self.step):
            return ds_checkpoint.save(self.engine, self.ckpt_dir, self.step, client, rank_state)

    def load(self) -> bool:
        """Resume from the newest checkpoint, after checking what wrote it (before DeepSpeed reads a byte)."""
        found = find_checkpoint(self.out)
        if found is None:
            return False
        self._changes = check_config(found.config, self.cfg.to_dict(), found.describe())
        if resharding_needed(found, self.world, self.stage):   # another world size, ZeRO stage, or one process
            rank_state = load_resharded(found, self.engine, self.model, self.loader)
            self._note = rank_state["note"]
        else:
            _client, rank_state = ds_checkpoint.load(self.engine, self.ckpt_dir, tag=found.path.name)
            self.loader.load_state_dict(rank_state["loader"])
        self.step = int(rank_state["step"])
        self.nonfinite.load_state_dict(rank_state.get("nonfinite", {}))
        torch.set_rng_state(rank_state["rng"]["torch"])
        np.random.set_state(rank_state["rng"]["numpy"])
        random.setstate(rank_state["rng"]["python"])
        return True

    # -- the loop -------------------------------------------------------------------------------------
    def fit(self, max_steps: int | None = None, resume: bool = False, overwrite: bool = False) -> dict:
        lead = self.rank == 0
        # Rank 0 checks and claims the folder; the others wait for its verdict (one collective), so a
        # refused folder stops every rank with the same one-line reason.
        verdict = [None]
        if lead:
            try:
                claim(self.out, resume=resume, overwrite=overwrite)
            except RunError as e:
                verdict = [str(e)]
        dist.broadcast_object_list(verdict, src=0)
        if verdict[0] is not None:
            raise RunError(verdict[0])
        check_output(self.out)
        self._changes, self._note = {}, None
        if resume:
            if self.load():
                log.info("rank %d resumed from %s at step %d", self.rank, ds_checkpoint.read_latest(self.ckpt_dir),
                         self.step)
            elif self.rank == 0:
                log.warning("--resume: no checkpoint in %s; starting from step 0", self.out)
        skip_batches(self.loader, self.cfg.meta.skip_batches)
        metrics = None
        if lead:
            record_changes(self.out, self.step, self._changes, self._note)
            save_config(self.cfg, self.out / "config.yaml")
            metrics = MetricsLogger.from_config(self.out, self.cfg)
            metrics.truncate_after(self.step)
            _truncate_jsonl(self.out / "losses.jsonl", self.step)
        stop = self.total_steps if max_steps is None else min(self.total_steps, max_steps)
        every = self.cfg.meta.checkpoint_every or self.ipe
        bar = _progress(self.progress and lead, total=stop, initial=self.step)
        it = iter(self.loader)
        B_global = self.cfg.data.batch_size * self.accum * self.world
        losses, t_run = [], time.perf_counter()
        signals = StopSignals()
        try:
            signals.__enter__()
            while self.step < stop:
                if self._fault and self._fault == (self.rank, self.step):
                    os.kill(os.getpid(), signal.SIGKILL)  # test hook: a rank that dies mid-run
                if self._fault_raise and self._fault_raise == (self.rank, self.step):
                    raise RuntimeError("JEPA_FAULT_RAISE: injected failure")
                t0 = time.perf_counter()
                micro = [(clips, masks) for clips, _labels, masks in
                         (next_batch(it, self.dataset) for _ in range(self.accum))]
                t1 = time.perf_counter()
                row = self.train_step(micro)
                t2 = time.perf_counter()
                losses.append(row["loss"])
                if lead:
                    s = self.step - 1
                    metrics.write({"step": s, "epoch": s // self.ipe, "itr": s % self.ipe, "step_ms": 1e3 * (t2 - t0),
                                   "data_wait_ms": 1e3 * (t1 - t0), "samples_per_s": B_global / max(t2 - t0, 1e-9),
                                   **row})
                    with open(self.out / "losses.jsonl", "a") as f:  # full precision, for resume checks
                        f.write(json.dumps({"step": s, "loss": row["loss"]}) + "\n")
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                    elif self.step % max(1, self.cfg.meta.log_every) == 0 or self.step == stop:
                        log.info("step %d epoch %d loss %.5f lr %.3e samples/s %.1f", s, s // self.ipe, row["loss"],
                                 row["lr"], B_global / max(t2 - t0, 1e-9))
                # every rank stops after the same step, whichever got the signal, and they save together
                stopping = signals.requested(lambda flag: _all_reduce_max(flag, self.device))
                if self.step % every == 0 or self.step == stop or stopping:
                    self.save()
                if stopping:
                    if lead:
                        log.warning("%s: stopped after step %d with a checkpoint; continue with --resume",
                                    signals.name or "a stop signal on another rank", self.step - 1)
                    break
        except Exception as e:
            log.error("rank %d/%d failed at step %d: %s: %s", self.rank, self.world, self.step, type(e).__name__, e)
            for h in logging.getLogger().handlers:   # on record before the launcher kills this process
                h.flush()
            raise
        finally:
            signals.__exit__(None, None, None)
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
        elapsed = time.perf_counter() - t_run
        return {"steps": self.step, "steps_this_run": len(losses), "world_size": self.world, "zero_stage": self.stage,
                "losses": losses, **loss_summary(losses),
                "steps_per_s": len(losses) / elapsed if elapsed > 0 else math.nan,
                "peak_mem_mb": peak_memory_mb(self.device),
                "checkpoint": ds_checkpoint.read_latest(self.ckpt_dir), "memory": self.memory, "stopped_by": signals.name,
                "nonfinite_skipped": self.nonfinite.skipped}


def _all_reduce_max(value: float, device) -> float:
    t = torch.tensor([float(value)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _parse_fault(spec):
    if not spec:
        return None
    r, s = spec.split(":")
    return int(r), int(s)


def _truncate_jsonl(path: Path, step: int) -> None:
    if not path.exists():
        return
    rows = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] < step]
    from engine.runtime.io import atomic_write_text
    atomic_write_text(path, "".join(r + "\n" for r in rows))
