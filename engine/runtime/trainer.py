"""The training loop, one for every backend: one process, or DeepSpeed ZeRO 0-3 on many ranks.

    trainer = Trainer(cfg, output_dir)                                   # one process (device="cpu")
    trainer = Trainer(cfg, output_dir, deepspeed="configs/deepspeed/zero3.json", grad_accum=1)   # under a launcher
    summary = trainer.fit(max_steps=None, resume=False, overwrite=False)

Per optimizer step i (k micro-batches per rank; k = 1 in one process): lr/wd from the schedules; k
times {forward under autocast (bf16: no GradScaler), backward}; each module's gradient norm over every
rank, clipped per module after the warm-up epochs (as the reference); the optimizer step; the EMA of
the target with momentum(i) only when the step was applied. A non-finite loss or gradient norm skips
the update on every rank and is counted. The logged loss is the global batch's (mean over micro-batches
and ranks). The step's work runs in a backend (engine.runtime.backends); the rest is written once here.

A checkpoint holds everything a resume needs (weights, target, optimizer, step, data position, RNG),
so a resumed run's losses equal the uninterrupted run's, step for step. `resume` continues from the
newest checkpoint whatever wrote it; a new run may start from one (engine.runtime.start). User errors
(data, folders, disk) are RunError: one line, naming the path and what to do.

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

from engine.config import Config, save_config
from engine.runtime.backends import DeepSpeedBackend, LocalBackend
from engine.runtime.errors import RunError, checkpoint_write, data_errors
from engine.runtime.faults import NonFinitePolicy, StopSignals
from engine.runtime.flops import device_peak_flops, jepa_step_flops, peak_memory_mb
from engine.core.io import atomic_write_text
from engine.runtime.metrics import MetricsLogger, loss_summary, plot_loss
from engine.runtime.resume import check_config, find_checkpoint, record_changes
from engine.runtime.rundir import check_output, claim
from engine.core.schedules import Schedules
from engine.runtime.start import skip_batches, start_state
from engine.core.step import autocast

log = logging.getLogger("engine.train")


class Trainer:
    def __init__(self, cfg: Config, output_dir, device: str | torch.device = "cpu", progress: bool = True,
                 dataset=None, *, deepspeed=None, grad_accum: int | None = None, offload_optimizer: bool = False,
                 timeout_s: float | None = None, model=None, mask_sampler=None, track_memory: bool = False,
                 evaluate=None):
        """deepspeed: a DeepSpeed JSON (or ZeRO stage 0-3) to train under the launcher's ranks; None: one
        process on `device`. model / dataset / mask_sampler default to the builders' (tests pass their own).
        evaluate(step, target_encoder) -> dict: extra metric columns after each step (meta.eval_freq: the
        caller passes engine.eval.periodic's probe, as engine.train does; evaluation sits above the loop)."""
        if evaluate is None and cfg.meta.eval_freq and cfg.data.val_datasets:
            raise ValueError(f"meta.eval_freq={cfg.meta.eval_freq}: this Trainer has no evaluate hook to act on it; "
                             "pass evaluate=engine.eval.periodic.PeriodicProbe.from_config(cfg).maybe "
                             "(engine.train does) or set meta.eval_freq: 0")
        self.cfg = cfg
        self.evaluate = evaluate
        self.out = Path(output_dir)
        self.progress = progress
        self.backend = (LocalBackend(device) if deepspeed is None else
                        DeepSpeedBackend(deepspeed, grad_accum=grad_accum, offload_optimizer=offload_optimizer,
                                         timeout_s=timeout_s, track_memory=track_memory))
        b = self.backend
        self.rank, self.world, self.device = b.rank, b.world, b.device
        random.seed(cfg.meta.seed)   # the same seed on every rank: identical initial weights
        np.random.seed(cfg.meta.seed)
        torch.manual_seed(cfg.meta.seed)
        if model is None:
            from engine.builders import build_jepa
            model = build_jepa(cfg)
        self.model = model.to(self.device)
        # before setup: ZeRO-3 would leave the encoder's parameters partitioned
        latents_fp = None
        if cfg.data.latent_cache and dataset is None:
            from engine.data.latents import run_fingerprint
            latents_fp = run_fingerprint(self.model, cfg)
        b.setup(self.model, cfg)
        from engine.data.latents import LatentCacheError
        try:
            with data_errors(cfg):
                from engine.builders import build_dataset, build_loader, build_mask_sampler
                self.dataset = build_dataset(cfg, train=True) if dataset is None else dataset
                self.loader = build_loader(cfg, self.dataset, self.device, rank=self.rank, world_size=self.world,
                                           mask_sampler=mask_sampler if mask_sampler is not None or not cfg.uses_masks
                                           else build_mask_sampler(cfg))
            if latents_fp is not None:
                self.dataset.cache.check_fingerprint(latents_fp, f"this run's ({cfg.source or 'the config'})")
        except LatentCacheError as e:   # a missing, damaged or stale cache: rebuilt, not skipped
            raise RunError(str(e)) from None
        opt = cfg.optimization
        self.ipe = opt.ipe or max(1, self.loader.batches_per_epoch // b.accum)   # a step eats `accum` batches
        self.total_steps = opt.epochs * self.ipe
        self.sched = Schedules.from_config(opt, self.ipe)
        self.nonfinite = NonFinitePolicy(cfg.meta.max_nonfinite_in_a_row)
        self.ema = self.model.update_target   # the model's own EMA: AC-JEPA trains no encoder, H-JEPA has levels
        self.step = 0
        self._fault_kill, self._fault_raise = _fault_at("JEPA_FAULT_KILL"), _fault_at("JEPA_FAULT_RAISE")

    @property
    def optimizer(self):
        return self.backend.optimizer

    # -- one optimizer step ----------------------------------------------------------------------
    def train_step(self, micro_batches) -> dict:
        """micro_batches: `accum` (clips, masks) pairs of this rank."""
        b, i, o = self.backend, self.step, self.cfg.optimization
        lr, wd, m = self.sched.lr(i), self.sched.wd(i), self.sched.momentum(i)
        b.set_lr_wd(lr, wd)
        row = {"lr": lr, "wd": wd, "momentum": m}
        loss_sum = tokens = flops = 0.0
        for j, (clips, masks) in enumerate(micro_batches):
            clips = (clips.to(self.device, non_blocking=True) if torch.is_tensor(clips)
                     else [c.to(self.device, non_blocking=True) for c in clips])  # num_clips > 1
            with autocast(self.cfg.dtype, self.device):
                loss, info = b.forward(clips, masks)
            value = float(loss.detach())
            # Every rank takes the same branch: a non-finite loss on any rank skips the step on all.
            if b.all_reduce(torch.tensor([0.0 if math.isfinite(value) else math.inf]), "max").item() != 0:
                if j > 0:   # the backend already holds part of this step's gradients
                    raise RunError(f"step {i}: a non-finite loss in micro-batch {j} of {len(micro_batches)} "
                                   "(gradient accumulation) cannot be skipped alone; lower optimization.lr or check "
                                   "the data, then --resume from the last checkpoint")
                self.nonfinite.skip(i, value if not math.isfinite(value) else math.nan)
                self.step += 1
                return {**row, "loss": value if self.world == 1 else math.nan, "enc_grad_norm": math.nan,
                        "pred_grad_norm": math.nan, "nonfinite_skipped": self.nonfinite.skipped}
            self.nonfinite.skip(i, value)   # a finite loss ends a run of skipped steps
            b.backward(loss)
            if j < len(micro_batches) - 1:
                b.micro_step()
            loss_sum += value
            tokens += float(info.get("ctx_tokens", math.nan) + info.get("tgt_tokens", math.nan))
            flops += jepa_step_flops(self.model, masks, len(clips) if torch.is_tensor(clips) else sum(map(len, clips)))
        # Both norms every step (finite from step 0); clipped only after the warm-up, as the reference.
        clip = o.clip_grad if o.clip_grad is not None and i // self.ipe > o.warmup else None
        enc_norm, pred_norm = b.grad_norms(clip)
        if b.step(not self.nonfinite.skip(i, math.hypot(enc_norm, pred_norm), "gradient norm")):
            self.ema(m)
        self.step += 1
        # one collective: the global batch's loss, tokens and FLOPs
        total = b.all_reduce(torch.tensor([loss_sum / len(micro_batches), tokens, flops], dtype=torch.float64))
        return {**row, "loss": float(total[0]) / self.world, "enc_grad_norm": enc_norm, "pred_grad_norm": pred_norm,
                "tokens": float(total[1]), "flops": float(total[2]), "nonfinite_skipped": self.nonfinite.skipped,
                **{k: float(v) for k, v in info.items()}}

    # -- state --------------------------------------------------------------------------------------
    def loop_state(self) -> dict:
        """What the loop itself needs to resume exactly (the backend adds weights and optimizer)."""
        return {"step": self.step, "epoch": self.step // self.ipe, "loader": self.loader.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
                "config": self.cfg.to_dict(), "nonfinite": self.nonfinite.state_dict()}

    def load_loop_state(self, state: dict) -> None:
        """The loop's state but the data position (the backend restores the loader: it may reshard it)."""
        self.step = int(state["step"])
        self.nonfinite.load_state_dict(state.get("nonfinite", {}))
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])

    def save(self, copy_name: str | None = None) -> str:
        where = self.out / ("ds_checkpoints" if isinstance(self.backend, DeepSpeedBackend) else "checkpoints")
        with checkpoint_write(where, self.step):
            return self.backend.save(self.out, self.loop_state(), copy_name)

    def save_epoch_copy(self) -> None:
        """meta.save_every_freq: at the end of epoch e with e % freq == 0, keep a copy named e{e} for good
        (the reference's e{epoch}.pt beside latest.pt; never removed by the keep-last rotation)."""
        freq = self.cfg.meta.save_every_freq
        if freq <= 0 or self.step % self.ipe:
            return
        e = self.step // self.ipe - 1
        if e % freq == 0:
            self.save(copy_name=f"e{e}")

    def resume(self) -> bool:
        """Continue from the newest checkpoint in the output folder, whatever wrote it (one process
        converts a DeepSpeed one; DeepSpeed reshards another world size, stage or a one-process one)."""
        found = find_checkpoint(self.out)
        if found is None:
            if self.rank == 0:
                log.warning("--resume: no checkpoint in %s; starting from step 0", self.out)
            return False
        changes = check_config(found.config, self.cfg.to_dict(), found.describe())
        state, note = self.backend.load_resume(found, self.loader)
        self.load_loop_state(state)
        if self.rank == 0:
            record_changes(self.out, self.step, changes, note)
        log.info("rank %d resumed from %s at step %d", self.rank, found.describe(), self.step)
        return True

    def start(self) -> None:
        """A new run's starting point (engine.runtime.start): weights, optimizer, step, data position."""
        state = start_state(self.cfg, self.model, self.backend.param_names, self.ipe)
        if state is None:
            return
        self.backend.load_start(state)
        self.step = int(state["step"])
        if state["loader"] is not None:
            self.loader.load_state_dict(state["loader"], strict=False)
        if self.rank == 0:
            record_changes(self.out, self.step, {}, {"started_from": state["started_from"]})

    def _claim(self, resume: bool, overwrite: bool) -> None:
        # Rank 0 checks and claims the folder; the others wait for its verdict, so a refused folder
        # stops every rank with the same one-line reason.
        verdict = None
        if self.rank == 0:
            try:
                claim(self.out, resume=resume, overwrite=overwrite)
            except RunError as e:
                verdict = str(e)
        verdict = self.backend.broadcast(verdict)
        if verdict is not None:
            raise RunError(verdict)
        check_output(self.out)

    # -- the loop --------------------------------------------------------------------------------
    def fit(self, max_steps: int | None = None, resume: bool = False, overwrite: bool = False) -> dict:
        meta, lead = self.cfg.meta, self.rank == 0
        # meta.load_checkpoint without read_checkpoint: the reference's "resume from the run's latest"
        # and optimization.resume_anneal: continue an interrupted cool-down from the run's own checkpoint
        resume = bool(resume or (meta.load_checkpoint and not meta.read_checkpoint)
                      or (self.cfg.optimization.is_anneal and self.cfg.optimization.resume_anneal))
        self._claim(resume, overwrite)
        if not (resume and self.resume()):
            self.start()
        skip_batches(self.loader, meta.skip_batches)
        metrics = None
        if lead:
            save_config(self.cfg, self.out / "config.yaml")
            metrics = MetricsLogger.from_config(self.out, self.cfg)
            metrics.csv.truncate_after(self.step)
            _truncate_jsonl(self.out / "losses.jsonl", self.step)
        peak_flops, _ = device_peak_flops(self.device, self.cfg.dtype)
        stop = self.total_steps if max_steps is None else min(self.total_steps, max_steps)
        every = meta.checkpoint_every or self.ipe
        bar = None
        if self.progress and lead:
            from tqdm import tqdm
            bar = tqdm(total=stop, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        it = iter(self.loader)
        B = self.cfg.data.batch_size * self.backend.accum * self.world   # the global batch
        losses, t_run = [], time.perf_counter()
        wait_total = step_total = 0.0
        signals = StopSignals()
        try:
            signals.__enter__()
            while self.step < stop:
                if self._fault_kill == (self.rank, self.step):
                    os.kill(os.getpid(), signal.SIGKILL)  # test hook: a rank that dies mid-run
                if self._fault_raise == (self.rank, self.step):
                    raise RuntimeError("JEPA_FAULT_RAISE: injected failure")
                t0 = time.perf_counter()
                micro = [(clips, masks) for clips, _labels, masks in
                         (next_batch(it, self.dataset) for _ in range(self.backend.accum))]
                t1 = time.perf_counter()
                row = self.train_step(micro)
                t2 = time.perf_counter()
                if self.evaluate is not None:
                    row.update(self.evaluate(self.step, self.model.target_encoder))
                wait_total += t1 - t0
                step_total += t2 - t0
                losses.append(row["loss"])
                step_s, s = max(t2 - t0, 1e-9), self.step - 1
                if lead:
                    metrics.write({"step": s, "epoch": s // self.ipe, "itr": s % self.ipe, "step_ms": 1e3 * (t2 - t0),
                                   "data_wait_ms": 1e3 * (t1 - t0), "samples_per_s": B / step_s,
                                   "tokens_per_s": row.pop("tokens", math.nan) / step_s,
                                   "mfu": row.pop("flops", math.nan) / step_s / (peak_flops * self.world),
                                   "peak_mem_mb": peak_memory_mb(self.device), **row})
                    with open(self.out / "losses.jsonl", "a") as f:  # full precision, for resume checks
                        f.write(json.dumps({"step": s, "loss": row["loss"]}) + "\n")
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", clips_s=f"{B / step_s:.1f}",
                                        wait=f"{wait_total / max(step_total, 1e-9):.0%}")
                    elif self.step % max(1, meta.log_every) == 0 or self.step == stop:
                        log.info("step %d epoch %d loss %.5f lr %.3e samples/s %.1f", s, s // self.ipe, row["loss"],
                                 row["lr"], B / step_s)
                # every rank stops after the same step, whichever got the signal, and they save together
                stopping = signals.requested(lambda flag: float(self.backend.all_reduce(torch.tensor([flag]), "max")))
                if self.step % every == 0 or self.step == stop or stopping:
                    self.save()
                self.save_epoch_copy()
                if stopping:
                    if lead:
                        log.warning("%s: stopped after step %d with a checkpoint; continue with --resume",
                                    signals.name or "a stop signal on another rank", s)
                    break
        except Exception as e:
            if isinstance(self.backend, DeepSpeedBackend):
                log.error("rank %d/%d failed at step %d: %s: %s", self.rank, self.world, self.step,
                          type(e).__name__, e)
                for h in logging.getLogger().handlers:   # on record before the launcher kills this process
                    h.flush()
            raise
        finally:
            signals.__exit__(None, None, None)
            if bar is not None:
                bar.close()
            if metrics is not None:
                metrics.close()
        if lead and (self.out / "metrics.csv").exists():
            plot_loss(self.out / "metrics.csv", self.out / "loss.png")
        elapsed = time.perf_counter() - t_run
        return {"steps": self.step, "steps_this_run": len(losses), "world_size": self.world, "losses": losses,
                **loss_summary(losses),
                "steps_per_s": len(losses) / elapsed if elapsed > 0 else math.nan,
                "data_wait_fraction": wait_total / step_total if step_total > 0 else math.nan,
                "peak_mem_mb": peak_memory_mb(self.device),
                "checkpoint": self.backend.latest(self.out), "stopped_by": signals.name,
                "nonfinite_skipped": self.nonfinite.skipped, **self.backend.summary()}


def next_batch(it, dataset):
    """The loader's next batch; a data set with no readable file left is a RunError naming its source."""
    from engine.data.datasets import NoReadableFiles
    try:
        return next(it)
    except NoReadableFiles as e:
        # From a DataLoader worker the message is the worker's traceback: its last line is the error.
        last = str(e).strip().splitlines()[-1]
        raise RunError(last.partition("NoReadableFiles: ")[2] or last) from None


def _fault_at(env: str) -> tuple[int, int] | None:
    """(rank, step) of a test hook's RANK:STEP, None when it is not set."""
    spec = os.environ.get(env)
    return tuple(map(int, spec.split(":"))) if spec else None


def _truncate_jsonl(path: Path, step: int) -> None:
    if not path.exists():
        return
    rows = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] < step]
    atomic_write_text(path, "".join(r + "\n" for r in rows))
