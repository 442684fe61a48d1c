"""Surviving preemption and bad steps: stop signals and the non-finite loss policy.

    with StopSignals() as stop:              # SIGTERM / SIGUSR1 (what SLURM and Kubernetes send before a kill)
        while ...:
            train one step
            if stop.requested(all_reduce): checkpoint, return     # the step in flight always finishes
    policy = NonFinitePolicy(max_in_a_row=3)    # meta.max_nonfinite_in_a_row
    if policy.skip(step, loss): ...          # a non-finite loss: skip this update (counted); RunError at
                                             # the `max_in_a_row`-th such step in a row, naming the step

`requested` takes the maximum over ranks (the backend's all_reduce: the identity in one process), so every
rank stops after the same step and they write one checkpoint together, whichever rank got the signal.
"""
from __future__ import annotations

import logging
import math
import signal
import threading

from engine.runtime.errors import RunError

log = logging.getLogger("engine.train")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_honoured: list[int] = []   # the stop signals that finished StopSignals blocks of this process received


class StopSignals:
    """Turn SIGTERM / SIGUSR1 into a flag the loop polls between steps (handlers restored on exit)."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def _handle(self, signum, frame):
        if self.received is None:
            log.warning("received %s: finishing the current step, then writing a checkpoint and exiting",
                        signal.Signals(signum).name)
        self.received = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():   # handlers can only be set there
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        if self.received is not None:
            _honoured.append(self.received)
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old.clear()
        return False

    def requested(self, all_reduce) -> bool:
        """True when a stop signal arrived on any rank (all_reduce(flag): its max over the ranks)."""
        return all_reduce(1.0 if self.received is not None else 0.0) > 0

    @property
    def name(self) -> str | None:
        return signal.Signals(self.received).name if self.received is not None else None


def ignore_repeats_after_a_stop() -> None:
    """For a process that runs one training job (the command line): a stop signal that comes after the run
    stopped on one, its checkpoint written and the process on its way out, is ignored, so a repeat (`timeout`
    passing on the signal it got to its whole group, scancel twice) cannot turn a clean stop into a kill.
    Before a run has stopped, one ends the process as it would by default; during the run StopSignals
    handles them."""
    def end_unless_stopped(signum, _frame):
        if not _honoured:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)

    for s in STOP_SIGNALS:
        signal.signal(s, end_unless_stopped)


class NonFinitePolicy:
    """Skip an update whose loss (or gradient norm) is not finite; stop at the `max_in_a_row`-th in a row
    (1: stop at the first, as the reference does)."""

    def __init__(self, max_in_a_row: int):
        self.max_in_a_row = int(max_in_a_row)
        self.in_a_row = 0
        self.skipped = 0

    def skip(self, step: int, value: float, what: str = "loss") -> bool:
        if math.isfinite(value):
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        self.skipped += 1
        if self.in_a_row >= self.max_in_a_row:
            raise RunError(f"step {step}: the {what} is {value}, {self.in_a_row} step(s) in a row "
                           f"(meta.max_nonfinite_in_a_row={self.max_in_a_row}); stopped without applying them: "
                           "lower optimization.lr or check the data, then --resume from the last checkpoint")
        log.warning("step %d: %s is %s; update skipped (%d in a row, %d in all)", step, what, value,
                    self.in_a_row, self.skipped)
        return True

    def state_dict(self) -> dict:
        return {"in_a_row": self.in_a_row, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.in_a_row, self.skipped = int(state.get("in_a_row", 0)), int(state.get("skipped", 0))
