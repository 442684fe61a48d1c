"""The single-process training loop (the DeepSpeed engine wraps the same step for many ranks).

    trainer = Trainer(cfg, output_dir)
    summary = trainer.fit(max_steps=None, resume=False, overwrite=False)

Per optimizer step i: set lr/wd from the schedules, forward the JEPA step under autocast (bf16:
no GradScaler), backward, clip (after the warm-up epochs, as the reference), AdamW step, EMA of the
target with momentum(i), log a row, checkpoint every `meta.checkpoint_every` steps. A checkpoint
holds everything a resume needs (models, target, optimizer, step, data-stream position, RNG
states), so a resumed run's losses equal the uninterrupted run's, step for step.

The output folder is claimed first (engine.runtime.rundir: a folder holding a run needs `resume` or
`overwrite`); `resume` continues from the newest checkpoint whatever wrote it (engine.runtime.resume:
a DeepSpeed one is converted), refusing a config change that cannot continue and recording the rest.
User errors (data, folders, disk) are RunError: one line, naming the path and what to do.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from engine.builders import build_dataset, build_jepa, build_loader, build_mask_sampler
from engine.config import Config, save_config
from engine.eval.periodic import PeriodicProbe
from engine.runtime.checkpoint import latest_path, save_checkpoint
from engine.runtime.errors import RunError, checkpoint_write, data_errors
from engine.runtime.faults import NonFinitePolicy, StopSignals
from engine.runtime.flops import device_peak_flops, jepa_step_flops, peak_memory_mb
from engine.runtime.metrics import MetricsLogger, loss_summary, plot_loss
from engine.runtime.resume import check_config, deepspeed_to_local, find_checkpoint, record_changes
from engine.runtime.io import atomic_torch_save
from engine.runtime.rundir import claim
from engine.runtime.start import skip_batches, start_state
from engine.runtime.schedules import Schedules, apply_to_optimizer

log = logging.getLogger("engine.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def param_groups(named_modules, zero_init_bias_wd: bool = True) -> list[dict]:
    """AdamW groups as the reference: no weight decay on biases and 1-D parameters."""
    groups = []
    for module in named_modules:
        decay = [p for n, p in module.named_parameters() if p.requires_grad and "bias" not in n and p.ndim != 1]
        no_decay = [p for n, p in module.named_parameters() if p.requires_grad and ("bias" in n or p.ndim == 1)]
        groups.append({"params": decay})
        groups.append({"params": no_decay, "WD_exclude": zero_init_bias_wd, "weight_decay": 0.0})
    return groups


def grad_norm(parameters, clip: float | None = None) -> float:
    """The global L2 norm of the parameters' gradients; with `clip`, they are then scaled to at most it
    (what clip_grad_norm_ does, with the norm computed whether or not it clips)."""
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if clip is not None:   # scales each p.grad (it takes the parameters, not the grads)
        torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
    return float(norm)


def autocast(dtype: torch.dtype, device: torch.device):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    if dtype == torch.bfloat16 and device.type == "cpu":
        warn_if_slow_cpu_bf16()
    return torch.autocast(device_type=device.type, dtype=dtype)


@functools.lru_cache(maxsize=None)
def cpu_gemm_ms() -> tuple[float, float]:
    """Best-of-3 ms of one 2048x192x768 GEMM (a ViT-tiny MLP's) in float32 and in bfloat16 on this CPU."""
    a, b = torch.randn(2048, 192), torch.randn(192, 768)
    out = []
    for x, y in ((a, b), (a.bfloat16(), b.bfloat16())):
        x @ y
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - t0)
        out.append(min(times) * 1e3)
    return out[0], out[1]


@functools.lru_cache(maxsize=None)
def warn_if_slow_cpu_bf16() -> None:
    """bf16 on CPU is only as fast as oneDNN's bf16 GEMM on the CPU at hand: on some CPUs and builds it
    is several times faster than fp32, on others several times slower (same torch wheel). Measured
    once per process, warned once."""
    fp32, bf16 = cpu_gemm_ms()
    if bf16 > fp32:
        warnings.warn(f"meta.dtype: bfloat16 on this CPU runs torch's GEMMs {bf16 / fp32:.1f}x slower than "
                      f"float32 ({bf16:.1f} vs {fp32:.1f} ms for 2048x192x768): this CPU/build has no fast bf16 "
                      f"path in oneDNN, so a bf16 step is slower here; use meta.dtype: float32 on this machine",
                      stacklevel=2)


class Trainer:
    def __init__(self, cfg: Config, output_dir, device: str | torch.device = "cpu", progress: bool = True,
                 dataset=None):
        """dataset defaults to the builders' (tests pass their own in-memory one)."""
        self.cfg = cfg
        self.out = Path(output_dir)
        self.device = torch.device(device)
        self.progress = progress
        seed_everything(cfg.meta.seed)
        self.model = build_jepa(cfg).to(self.device)
        opt = cfg.optimization
        self.optimizer = torch.optim.AdamW(param_groups([self.model.encoder, self.model.predictor]),
                                           betas=tuple(opt.betas), eps=opt.eps)
        with data_errors(cfg):
            self.dataset = build_dataset(cfg, train=True) if dataset is None else dataset
            self.loader = build_loader(cfg, self.dataset, self.device, mask_sampler=build_mask_sampler(cfg))
        self.ipe = opt.ipe or max(1, len(self.dataset) // cfg.data.batch_size)
        self.total_steps = opt.epochs * self.ipe
        self.sched = Schedules.from_config(opt, self.ipe)
        self.nonfinite = NonFinitePolicy(cfg.meta.max_nonfinite_in_a_row)
        self.step = 0

    # -- state for exact resume ----------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "encoder": self.model.encoder.state_dict(),
            "predictor": self.model.predictor.state_dict(),
            "target_encoder": self.model.target_encoder.state_dict(),
            "opt": self.optimizer.state_dict(),
            "step": self.step,
            "epoch": self.step // self.ipe,
            "loader": self.loader.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "config": self.cfg.to_dict(),
            "nonfinite": self.nonfinite.state_dict(),
        }

    def param_names(self) -> list[list[str]]:
        """The names (encoder.* / predictor.*) of each optimizer group's parameters, in order."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return [[names[id(p)] for p in g["params"]] for g in self.optimizer.param_groups]

    def load_optimizer(self, opt: dict) -> None:
        """An AdamW state dict; its param_groups may be bare id lists (converted from DeepSpeed or the
        reference layout), which then take this optimizer's hyper-parameters."""
        if opt["param_groups"] and not isinstance(opt["param_groups"][0], dict):
            opt = {"state": opt["state"], "param_groups": [
                {**{k: v for k, v in g.items() if k != "params"}, "params": ids}
                for g, ids in zip(self.optimizer.param_groups, opt["param_groups"])]}
        self.optimizer.load_state_dict(opt)

    def load_state_dict(self, state: dict) -> None:
        self.model.encoder.load_state_dict(state["encoder"])
        self.model.predictor.load_state_dict(state["predictor"])
        self.model.target_encoder.load_state_dict(state["target_encoder"])
        self.load_optimizer(state["opt"])
        self.loader.load_state_dict(state["loader"])
        self.step = int(state["step"])
        self.nonfinite.load_state_dict(state.get("nonfinite", {}))
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])

    def save_epoch_copy(self) -> None:
        """meta.save_every_freq: at the end of epoch e with e % freq == 0, keep checkpoints/e{e}.pt for good
        (the reference's e{epoch}.pt beside latest.pt; never removed by the keep-last rotation)."""
        freq = self.cfg.meta.save_every_freq
        if freq <= 0 or self.step % self.ipe:
            return
        e = self.step // self.ipe - 1
        if e % freq == 0:
            with checkpoint_write(self.out / "checkpoints", self.step):
                atomic_torch_save(self.state_dict(), self.out / "checkpoints" / f"e{e}.pt")

    def save(self) -> Path:
        with checkpoint_write(self.out / "checkpoints", self.step):
            return save_checkpoint(self.out, self.step, self.state_dict())

    def load_start(self, state: dict) -> None:
        """A new run's starting point (engine.runtime.start): weights, optimizer, step, data position."""
        self.model.encoder.load_state_dict(state["encoder"])
        self.model.predictor.load_state_dict(state["predictor"])
        self.model.target_encoder.load_state_dict(state["target_encoder"])
        if "opt" in state:
            self.load_optimizer(state["opt"])
        self.step = int(state["step"])
        if state["loader"] is not None:
            self.loader.load_state_dict(state["loader"], strict=False)

    def resume(self) -> bool:
        """Continue from the newest checkpoint in the output folder, converting a DeepSpeed one."""
        found = find_checkpoint(self.out)
        if found is None:
            log.warning("--resume: no checkpoint in %s; starting from step 0", self.out)
            return False
        changes = check_config(found.config, self.cfg.to_dict(), found.describe())
        note = None
        if found.kind == "deepspeed":
            state = deepspeed_to_local(found, self.param_names())
            note = {"converted_from": found.describe()}
            log.warning("resuming the DeepSpeed checkpoint %s in one process: the global batch is now %d",
                        found.describe(), self.cfg.data.batch_size)
        else:
            state = found.state
        self.load_state_dict(state)
        record_changes(self.out, self.step, changes, note)
        log.info("resumed from %s at step %d", found.describe(), self.step)
        return True

    # -- one optimizer step ----------------------------------------------------------------------
    def train_step(self, clips, masks) -> dict:
        cfg, i = self.cfg, self.step
        lr, wd, m = self.sched.lr(i), self.sched.wd(i), self.sched.momentum(i)
        apply_to_optimizer(self.optimizer, lr, wd)
        clips = clips.to(self.device, non_blocking=True)
        with autocast(cfg.dtype, self.device):
            loss, info = self.model(clips, masks)
        row = {"loss": float(loss.detach()), "lr": lr, "wd": wd, "momentum": m}
        enc_norm = pred_norm = math.nan
        # A non-finite loss or gradient skips the update (weights, Adam state and EMA untouched) and is
        # counted; NonFinitePolicy stops the run after meta.max_nonfinite_in_a_row in a row.
        if not self.nonfinite.skip(i, row["loss"]):
            loss.backward()
            # Both norms every step (finite from step 0); clipped only after the warm-up, as the reference.
            o = cfg.optimization
            clip = o.clip_grad if o.clip_grad is not None and i // self.ipe > o.warmup else None
            enc_norm = grad_norm(self.model.encoder.parameters(), clip)
            pred_norm = grad_norm(self.model.predictor.parameters(), clip)
            if not self.nonfinite.skip(i, math.hypot(enc_norm, pred_norm), "gradient norm"):
                self.optimizer.step()
                self.model.update_target(m)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {**row, "enc_grad_norm": enc_norm, "pred_grad_norm": pred_norm,
                "flops": jepa_step_flops(self.model, masks, clips.shape[0]),
                "nonfinite_skipped": self.nonfinite.skipped, **{k: float(v) for k, v in info.items()}}

    # -- the loop --------------------------------------------------------------------------------
    def fit(self, max_steps: int | None = None, resume: bool = False, overwrite: bool = False) -> dict:
        meta = self.cfg.meta
        # meta.load_checkpoint without read_checkpoint: the reference's "resume from the run's latest"
        # and optimization.resume_anneal: continue an interrupted cool-down from the run's own checkpoint
        resume = (resume or (meta.load_checkpoint and not meta.read_checkpoint)
                  or (self.cfg.optimization.is_anneal and self.cfg.optimization.resume_anneal))
        claim(self.out, resume=resume, overwrite=overwrite)
        if not (resume and self.resume()):
            start = start_state(self.cfg, self.model, self.param_names(), self.ipe)
            if start is not None:
                self.load_start(start)
                record_changes(self.out, self.step, {}, {"started_from": start["started_from"]})
        skip_batches(self.loader, meta.skip_batches)
        save_config(self.cfg, self.out / "config.yaml")
        metrics = MetricsLogger.from_config(self.out, self.cfg)
        peak_flops, _ = device_peak_flops(self.device, self.cfg.dtype)
        metrics.truncate_after(self.step)
        stop = self.total_steps if max_steps is None else min(self.total_steps, max_steps)
        every = self.cfg.meta.checkpoint_every or self.ipe
        bar = _progress(self.progress, total=stop, initial=self.step)
        it = iter(self.loader)
        probe = PeriodicProbe.from_config(self.cfg)   # meta.eval_freq
        B = self.cfg.data.batch_size
        losses, t_run = [], time.perf_counter()
        wait_total = step_total = 0.0
        with StopSignals() as signals:
            while self.step < stop:
                t0 = time.perf_counter()
                clips, _labels, masks = next_batch(it, self.dataset)
                t1 = time.perf_counter()
                row = self.train_step(clips, masks)
                t2 = time.perf_counter()
                if probe is not None:
                    row.update(probe.maybe(self.step, self.model.target_encoder))
                wait_total += t1 - t0
                step_total += t2 - t0
                losses.append(row["loss"])
                step_s = max(t2 - t0, 1e-9)
                tokens = row.get("ctx_tokens", math.nan) + row.get("tgt_tokens", math.nan)   # NaN: a step without masks
                metrics.write({"step": self.step - 1, "epoch": (self.step - 1) // self.ipe,
                               "itr": (self.step - 1) % self.ipe, "step_ms": 1e3 * (t2 - t0),
                               "data_wait_ms": 1e3 * (t1 - t0), "samples_per_s": B / step_s,
                               "tokens_per_s": tokens / step_s, "mfu": row.pop("flops") / step_s / peak_flops,
                               "peak_mem_mb": peak_memory_mb(self.device), **row})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", clips_s=f"{B / step_s:.1f}",
                                    wait=f"{wait_total / max(step_total, 1e-9):.0%}")
                elif self.step % max(1, self.cfg.meta.log_every) == 0 or self.step == stop:
                    log.info("step %d epoch %d loss %.5f lr %.3e samples/s %.1f", self.step - 1,
                             (self.step - 1) // self.ipe, row["loss"], row["lr"], B / step_s)
                stopping = signals.requested()
                if self.step % every == 0 or self.step == stop or stopping:
                    self.save()
                self.save_epoch_copy()
                if stopping:
                    log.warning("%s: stopped after step %d with a checkpoint; continue with --resume",
                                signals.name, self.step - 1)
                    break
        if bar is not None:
            bar.close()
        metrics.close()
        if (self.out / "metrics.csv").exists():
            plot_loss(self.out / "metrics.csv", self.out / "loss.png")
        elapsed = time.perf_counter() - t_run
        steps_done = len(losses)
        return {
            "steps": self.step,
            "steps_this_run": steps_done,
            **loss_summary(losses),
            "steps_per_s": steps_done / elapsed if elapsed > 0 else math.nan,
            "data_wait_fraction": wait_total / step_total if step_total > 0 else math.nan,
            "peak_mem_mb": peak_memory_mb(self.device),
            "checkpoint": str(latest_path(self.out)) if latest_path(self.out) else None,
            "stopped_by": signals.name,
            "nonfinite_skipped": self.nonfinite.skipped,
        }


def next_batch(it, dataset):
    """The loader's next batch; a data set with no readable file left is a RunError naming its source."""
    from engine.data.datasets import NoReadableFiles
    try:
        return next(it)
    except NoReadableFiles as e:
        # From a DataLoader worker the message is the worker's traceback: its last line is the error.
        last = str(e).strip().splitlines()[-1]
        raise RunError(last.partition("NoReadableFiles: ")[2] or last) from None


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
