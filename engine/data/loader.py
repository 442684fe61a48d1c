"""A resumable, deterministic, rank-sharded data loader over the datasets in engine.data.datasets.

Usage:
    loader = make_loader(dataset, batch_size=8, seed=0, mask_sampler=collator.sample, num_workers=2)
    for step, (clips_B3THW, labels_B, masks) in zip(range(num_steps), loader):   # endless, epoch by epoch
        ...
        ckpt["loader"] = loader.state_dict()           # {"epoch", "batch_in_epoch", ...}
    loader.load_state_dict(ckpt["loader"])            # then iter(loader): the batches not yet seen
    frac_waiting = loader.last_wait_seconds / step_seconds

Determinism: epoch e's order is a permutation drawn from (seed, e) (weighted draws with replacement
when the dataset has `sample_weights`), cut to a multiple of world_size (drop_last) or wrapped to
one, and rank r takes positions r, r+W, r+2W, ... (no overlap between ranks). Each sample gets a seed
hashed from (seed, e, its position in the epoch's order), which drives its clip choice and its
augmentation, so a sample's content does not depend on num_workers, timing or resume. The collate
(run in the workers) calls mask_sampler(batch_size, np.random.default_rng([seed, global_batch]))
with global_batch = (e * batches_per_epoch + batch_in_epoch) * world_size + rank (distinct per rank).
Hence a loader restored from state_dict() yields exactly the batches an uninterrupted one would.

The batch sampler yields lists of (index, sample_seed, global_batch) keys; the dataset sees
(index, sample_seed). Batches are (clips [B, 3, T, H, W] ([num_clips * B, ...] when
num_clips > 1: the clips of a video along the batch, clip-major, as the reference; the masks and labels
repeat with them), or [B, 3, H, W] for images), labels int64 [B], masks or None); trajectory samples
(engine.data.trajectories) bring {"actions", "states"} batches in the masks' place.

Clip transport: when the dataset's transform has a uint8 twin (engine.data.transforms: `as_uint8()`
and `normalize`), the workers run that twin over a shallow copy of the dataset and ship uint8 batches;
the floats are made where the batch is consumed: in this process, or on `device` after the (pinned)
uint8 copy. At 224 px that moves 9.6 MB instead of 38.5 MB per batch of 4 clips through shared memory
and skips the workers' float pass; the values are exactly the transform's own float output. On a GPU
pass device= (else the floats are made on the host, and pin_memory pins only the uint8 batch).
    loader = make_loader(ds, batch_size=8, seed=0, num_workers=2, device="cuda", pin_memory=True)
    loader = make_loader(ds, batch_size=8, seed=0, clip_dtype=torch.uint8)   # uint8 clips, then:
    clips_B3THW = loader.normalize(clips_B3THW_u8.to(device))                  # the same float32 values
"""
from __future__ import annotations

import atexit
import copy
import logging
import math
import signal
import time
import weakref

import numpy as np
import torch

logger = logging.getLogger(__name__)


def _splitmix64(x):
    """A strong 64-bit integer hash (vectorised); wraps around by design."""
    with np.errstate(over="ignore"):
        x = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def sample_seeds(seed: int, epoch: int, positions) -> np.ndarray:
    """Per-sample seeds (uint64 -> Python ints < 2**63) from (seed, epoch, position in the epoch's order)."""
    h = _splitmix64(_splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF)) ^ np.uint64(epoch))
    return (_splitmix64(h ^ np.asarray(positions, dtype=np.uint64)) >> np.uint64(1)).astype(np.int64)


class EpochBatchSampler:
    """Yields this rank's batches of one epoch, from a settable (epoch, first batch) position."""

    def __init__(self, num_samples, batch_size, seed, *, shuffle=True, drop_last=True, rank=0, world_size=1,
                 weights=None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.n, self.batch_size, self.seed = int(num_samples), int(batch_size), int(seed)
        self.shuffle, self.drop_last, self.rank, self.world_size = shuffle, drop_last, rank, world_size
        self.weights = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
        self.positions = self.positions_from(0)  # this rank's positions in the epoch order
        self.batches_per_epoch = self.batches_from(0)
        # start_sample: the first positions of epoch `epoch` that a run on another number of ranks
        # consumed (see state_for_world); this epoch then continues from there, the next from 0.
        self.epoch, self.start_batch, self.start_sample = 0, 0, 0

    def positions_from(self, start_sample: int) -> np.ndarray:
        """This rank's positions in an epoch whose first `start_sample` positions are consumed: start_sample
        + rank, + W, + 2W, ..., as many on every rank (the rest cut (drop_last) or wrapped to a multiple of W)."""
        rest, W = max(0, self.n - start_sample), self.world_size
        count = rest // W if self.drop_last else math.ceil(rest / W)
        return start_sample + self.rank + W * np.arange(count)

    def batches_from(self, start_sample: int) -> int:
        m = len(self.positions_from(start_sample))
        return m // self.batch_size if self.drop_last else math.ceil(m / self.batch_size)

    def epoch_order(self, epoch: int, positions=None) -> np.ndarray:
        """Dataset indices of epoch `epoch`, all ranks (length >= every position of `positions`)."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.weights is not None:
            order = rng.choice(self.n, size=self.n, replace=True, p=self.weights)
        else:
            order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        positions = self.positions if positions is None else positions
        reps = math.ceil((positions[-1] + 1) / self.n) if len(positions) else 1
        return np.tile(order, reps)  # wraps around when padding to a multiple of world_size

    def global_batch(self, epoch: int, batch: int) -> int:
        return (epoch * self.batches_per_epoch + batch) * self.world_size + self.rank

    def __len__(self):
        return self.batches_from(self.start_sample) - self.start_batch

    def __iter__(self):
        epoch, B = self.epoch, self.batch_size
        positions = self.positions_from(self.start_sample)
        order = self.epoch_order(epoch, positions)
        for b in range(self.start_batch, self.batches_from(self.start_sample)):
            pos = positions[b * B:(b + 1) * B]
            seeds = sample_seeds(self.seed, epoch, pos)
            gb = self.global_batch(epoch, b)
            yield [(int(order[p]), int(s), gb) for p, s in zip(pos, seeds)]


class _Fetch(torch.utils.data.Dataset):
    """Wraps a dataset so each item also carries the files skipped to produce it and its global batch."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, key):
        index, seed, gb = key
        if hasattr(self.dataset, "get"):
            x, label, skipped = self.dataset.get((index, seed))
        else:
            (x, label), skipped = self.dataset[(index, seed)], []
        return x, label, skipped, gb


def _stack(xs):
    """torch.stack; in a worker process straight into shared memory, as torch's default_collate does:
    the batch then crosses to the main process without another copy (38 MB per batch of 4 clips at 224)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.stack(xs)
    x = xs[0]
    storage = x.untyped_storage()._new_shared(len(xs) * x.numel() * x.element_size(), device=x.device)
    out = x.new(storage).resize_(len(xs), *x.shape)
    return torch.stack(xs, out=out)


class Collate:
    """Stacks samples; draws the batch's masks from a generator seeded by (seed, global batch)."""

    def __init__(self, seed: int, mask_sampler=None):
        self.seed, self.mask_sampler = int(seed), mask_sampler

    def __call__(self, samples):
        xs, labels, skipped, gbs = zip(*samples)
        labels_B = torch.as_tensor(labels, dtype=torch.int64)
        if hasattr(xs[0], "actions"):  # trajectories (engine.data.trajectories): their arrays take the masks' place
            traj = {"actions": torch.stack([x.actions for x in xs]), "states": torch.stack([x.states for x in xs])}
            return _stack([x.clip for x in xs]), labels_B, traj, [p for s in skipped for p in s]
        num_clips = len(xs[0]) if isinstance(xs[0], (list, tuple)) else 1
        if num_clips > 1:
            # the reference's layout: the clips of a video concatenated along the batch, clip-major
            # ([clip 0 of every sample, clip 1 of every sample, ...]), each clip with its video's masks
            clips = _stack([x[k] for k in range(num_clips) for x in xs])
            labels_B = labels_B.repeat(num_clips)
        else:
            clips = _stack(xs)
        masks = self.masks(len(samples), gbs[0])
        if masks is not None and num_clips > 1:
            masks = masks.repeat(num_clips)
        return clips, labels_B, masks, [p for s in skipped for p in s]

    def masks(self, batch_size: int, global_batch: int):
        """A batch's masks, from a generator seeded by (seed, global batch); None without a mask sampler."""
        if self.mask_sampler is None:
            return None
        return self.mask_sampler(batch_size, np.random.default_rng([self.seed, global_batch]))


def uint8_twin(dataset):
    """(dataset to read from, Normalize or None): a shallow copy whose transform yields uint8 clips, and the
    normalisation that turns them into the transform's float output; (dataset, None) if there is none."""
    tf = getattr(dataset, "transform", None)
    norm = getattr(tf, "normalize", None)
    if norm is None or not hasattr(tf, "as_uint8"):
        return dataset, None
    if tf.dtype == torch.uint8:  # already a uint8 transform: its batches are normalised the same way
        return dataset, norm
    twin = copy.copy(dataset)
    twin.transform = tf.as_uint8()
    return twin, norm


def batch_sampler_for(dataset, batch_size, seed, *, shuffle=True, drop_last=True, rank=0, world_size=1):
    """The dataset's own `make_batch_sampler(...)` when it has one (ShardVideoDataset: each rank reads its
    own shards), else an EpochBatchSampler over its indices (weighted by its `sample_weights`)."""
    if hasattr(dataset, "make_batch_sampler"):
        return dataset.make_batch_sampler(batch_size, seed, shuffle=shuffle, drop_last=drop_last, rank=rank,
                                          world_size=world_size)
    return EpochBatchSampler(len(dataset), batch_size, seed, shuffle=shuffle, drop_last=drop_last, rank=rank,
                             world_size=world_size, weights=getattr(dataset, "sample_weights", None))


class LoaderPosition:
    """An endless loader's place in its batch sampler's stream (epoch, batch in epoch), the files skipped
    so far and the time spent waiting for batches; state_dict()/load_state_dict() resume exactly. The
    PyAV loader (ResumableLoader) and the DALI loader (engine.data.dali) both build on it."""

    def __init__(self, sampler):
        if sampler.batches_per_epoch == 0:
            raise ValueError(f"{sampler.n} samples over {sampler.world_size} rank(s) make no batch of "
                             f"{sampler.batch_size}")
        self.sampler, self.batches_per_epoch = sampler, sampler.batches_per_epoch
        self.epoch, self.batch_in_epoch, self.start_sample = 0, 0, 0
        self.skipped_files, self.bad_paths = 0, set()
        self.wait_seconds, self.last_wait_seconds = 0.0, 0.0

    def takes_start_sample(self) -> bool:
        """Whether the sampler walks global positions (EpochBatchSampler), so that an epoch can continue
        from any position on any number of ranks; a per-rank shard sampler cannot."""
        return hasattr(self.sampler, "positions_from")

    def position(self) -> tuple[int, int, int]:
        """(epoch, batch, start_sample) of the next batch; the end of an epoch is the start of the next."""
        in_epoch = self.sampler.batches_from(self.start_sample) if self.start_sample else self.batches_per_epoch
        if self.batch_in_epoch >= in_epoch:
            return self.epoch + 1, 0, 0
        return self.epoch, self.batch_in_epoch, self.start_sample

    def enter_epoch(self, epoch: int) -> None:
        """The stream moved on to `epoch` (>= the current one): a new epoch starts at its first sample."""
        if epoch != self.epoch:
            self.epoch, self.batch_in_epoch, self.start_sample = epoch, 0, 0

    def record_batch(self, wait_started: float, skipped_paths) -> None:
        """Count a delivered batch: its wait since `wait_started` (perf_counter) and the files skipped for it."""
        self.last_wait_seconds = time.perf_counter() - wait_started
        self.wait_seconds += self.last_wait_seconds
        self.skipped_files += len(skipped_paths)
        for p in skipped_paths:
            if p not in self.bad_paths:
                self.bad_paths.add(p)
                logger.warning("skipped unreadable file %s (%d skips so far)", p, self.skipped_files)

    def state_dict(self) -> dict:
        s = self.sampler
        epoch, batch, start = self.position()
        state = {"epoch": epoch, "batch_in_epoch": batch, "seed": s.seed, "rank": s.rank,
                 "world_size": s.world_size, "batch_size": s.batch_size, "num_samples": s.n,
                 "skipped_files": self.skipped_files}
        if self.takes_start_sample():
            state["start_sample"] = start
        return state

    def load_state_dict(self, state: dict, strict: bool = True):
        """Resume at (epoch, batch_in_epoch). strict: refuse a state from a differently shaped loader."""
        if strict:
            mine = self.state_dict()
            bad = [k for k in ("seed", "world_size", "batch_size", "num_samples") if k in state and state[k] != mine[k]]
            if bad:
                raise ValueError("loader state does not match this loader: "
                                 + ", ".join(f"{k}={state[k]} (here {mine[k]})" for k in bad))
        start = int(state.get("start_sample", 0))
        if start and not self.takes_start_sample():
            raise ValueError(f"loader state starts epoch {state['epoch']} at sample {start}, but this loader's "
                             f"{type(self.sampler).__name__} deals samples per rank and cannot start there")
        self.epoch, self.batch_in_epoch, self.start_sample = int(state["epoch"]), int(state["batch_in_epoch"]), start
        self.skipped_files = int(state.get("skipped_files", self.skipped_files))


def state_for_world(state: dict, world_size: int, rank: int) -> dict:
    """A loader state saved on W ranks (any rank's: they hold the same position) as rank `rank` of
    `world_size` continues it: the samples the epoch has consumed stay consumed, none is repeated.

    W ranks at batch b of an epoch that began at position s have consumed its positions [0, c) with
    c = s + b * B * W. The new ranks continue at batch c / (B * world_size) when that is whole, else at
    position c (start_sample): rank r then takes c + r, c + r + world_size, ... ValueError for a state
    whose sampler deals samples per rank (tar shards: no start_sample in its state) when W changes.
    """
    B, W = int(state["batch_size"]), int(state["world_size"])
    if W == world_size:
        return {**state, "rank": int(rank)}
    if "start_sample" not in state:
        raise ValueError(f"the loader state of {W} rank(s) has no global sample position (its sampler deals "
                         f"samples per rank, e.g. tar shards), so it cannot continue on {world_size}")
    consumed = int(state["start_sample"]) + int(state["batch_in_epoch"]) * B * W
    batch, rest = divmod(consumed, B * world_size)
    return {**state, "world_size": int(world_size), "rank": int(rank),
            "batch_in_epoch": batch if rest == 0 else 0, "start_sample": 0 if rest == 0 else consumed}


def _close_at_exit(ref) -> None:
    loader = ref()
    if loader is not None:
        loader.close()


STOP_GRACE_S = 120.0  # how long data workers outlive SIGTERMs after the first: the last step and its checkpoint


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers ignore SIGUSR1 and outlive every SIGTERM for STOP_GRACE_S seconds after the first.
    srun and scancel signal every process of a job step, workers included, and a wrapper such as `timeout`
    passes on a signal it got to its whole process group, so a worker can get the same stop twice. A worker
    killed by it fails the step the training process is finishing before its checkpoint (the DataLoader raises
    there when a worker dies). The training process handles the signal; a SIGTERM after the grace ends the
    worker as usual. Workers are stopped at exit through their queues, not by signals."""
    first_at = []

    def outlive_for_a_while(signum, _frame):
        if not first_at:
            first_at.append(time.monotonic())
        elif time.monotonic() - first_at[0] > STOP_GRACE_S:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    signal.signal(signal.SIGTERM, outlive_for_a_while)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class ResumableLoader(LoaderPosition):
    """Endless iterator of batches, epoch after epoch; state_dict()/load_state_dict() resume exactly."""

    def __init__(self, dataset, *, batch_size, seed, mask_sampler=None, num_workers=0, drop_last=True, shuffle=True,
                 rank=0, world_size=1, pin_memory=False, persistent_workers=True, prefetch_factor=2,
                 multiprocessing_context=None, clip_dtype=torch.float32, device=None):
        """See the module docstring; `mask_sampler` is any picklable callable (batch_size, rng) -> masks.
        The batches come from batch_sampler_for(dataset, ...): the tar-shard data set deals its own.

        multiprocessing_context: None (fork on Linux: fast start) or "forkserver"/"spawn" (workers start
        clean, ~1 s each, for parents holding threads that are not fork-safe).

        clip_dtype: torch.float32 (normalised clips, the transform's own output) or torch.uint8 (the raw
        pixels after crop/resize/flip; `loader.normalize(clips)` gives the floats). device: where clips are
        normalised and yielded (e.g. "cuda": uint8 goes over the bus, 4x fewer bytes); None = this process.
        """
        if clip_dtype not in (torch.float32, torch.uint8):
            raise ValueError(f"clip_dtype must be torch.float32 (normalised) or torch.uint8, got {clip_dtype}")
        self.dataset = dataset
        super().__init__(batch_sampler_for(dataset, batch_size, seed, shuffle=shuffle, drop_last=drop_last, rank=rank,
                                           world_size=world_size))
        if hasattr(dataset, "warn_on_skip"):
            dataset.warn_on_skip = False  # skips are logged once here, not once per worker
        source, self.normalize = uint8_twin(dataset)
        if clip_dtype == torch.uint8 and self.normalize is None:
            raise ValueError(f"clip_dtype=torch.uint8 needs a transform with a uint8 twin (VideoTransform, "
                             f"ImageTransform, ...), got {getattr(dataset, 'transform', None)!r}")
        self.clip_dtype, self.device = clip_dtype, None if device is None else torch.device(device)
        self._dl = torch.utils.data.DataLoader(
            _Fetch(source), batch_sampler=self.sampler, collate_fn=Collate(seed, mask_sampler),
            num_workers=num_workers, pin_memory=pin_memory,
            persistent_workers=persistent_workers and num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers > 0 else None,
            multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
            worker_init_fn=ignore_stop_signals,
            generator=torch.Generator().manual_seed(seed))  # leave the global torch RNG untouched
        self._live_iter = None
        if num_workers > 0:
            # Before Python's exit stops torch's own shutdown: the workers are told to stop, not signalled.
            atexit.register(_close_at_exit, weakref.ref(self))

    def __iter__(self):
        while True:
            self.epoch, self.batch_in_epoch, self.start_sample = self.position()
            self.sampler.epoch, self.sampler.start_batch = self.epoch, self.batch_in_epoch
            if self.takes_start_sample():
                self.sampler.start_sample = self.start_sample
            it = self._live_iter = iter(self._dl)
            while True:
                t0 = time.perf_counter()
                try:
                    clips, labels, masks, skipped = next(it)
                except StopIteration:
                    break
                clips = [self._deliver(c) for c in clips] if isinstance(clips, list) else self._deliver(clips)
                self.record_batch(t0, skipped)
                self.batch_in_epoch += 1
                yield clips, labels, masks
            self.enter_epoch(self.epoch + 1)

    def close(self) -> None:
        """Stop the worker processes now (iterating again starts new ones)."""
        it, self._live_iter = self._live_iter, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
            self._dl._iterator = None

    def _deliver(self, x):
        """A batch of clips as the consumer wants it: on `device`, normalised unless uint8 was asked for."""
        if self.device is not None:
            x = x.to(self.device, non_blocking=True)
        if self.normalize is not None and self.clip_dtype == torch.float32:
            x = self.normalize(x)
        return x


make_loader = ResumableLoader   # the name the package exports (engine.data.make_loader)
