"""Two independent halves of a CPU step, run side by side, each on its share of the intra-op threads.

    with Beside(lambda: target_forward(x), enabled=beside_ok(x, model.target_encoder)) as target:
        p = online_forward(x)        # this thread, on the other share of the threads, meanwhile
    h = target.result                # the side half's return value (its exception re-raised here)

    # or in parts, whichever thread is free taking the next: the halves then end together
    with Beside([partial(target_forward, x_part) for x_part in x.split(1)], enabled=...,
                combine=torch.cat) as target:

Why: on a few CPU cores, a ViT-tiny step's many small and mid-sized ops (LayerNorms, GELUs, 192-wide
GEMMs), each split over every core, wait on each other at the end of every parallel region; two
independent forwards on a core each do the same work without those barriers. The V-JEPA step's target
encoder (no grad) and its context encoder + predictor are such halves, of about equal cost.

The side half runs on one long-lived thread (per process) with torch's grad mode off. Its thread starts
with none of this thread's thread-local state, so the split is only taken where none is needed:
`beside_ok` says no off the CPU, with one intra-op thread, under autocast or inference mode, under a torch
function or dispatch mode (FlopCounterMode, a tracer), under torch.profiler (which records the calling
thread's ops only), while compiling, with compiled blocks, and for parameters that DeepSpeed ZeRO-3
partitions (their forward hooks gather them in a fixed order on every rank), nor on the side thread
itself (a nested split would wait for its own thread). Otherwise the side half runs inline, first,
exactly as sequential code would. The side half must draw no random numbers (the global
generator's order between two threads is not fixed); a target encoder draws none.
"""
from __future__ import annotations

import os
import queue
import threading
from functools import partial
from typing import Callable

import torch


def beside_ok(x: torch.Tensor, module: torch.nn.Module) -> bool:
    """Whether `module`'s forward on `x` may run on the side thread (see the module's docstring)."""
    if x.device.type != "cpu" or torch.get_num_threads() < 2:
        return False
    if threading.current_thread().name == _SIDE_NAME:   # a side job's own split would wait on itself
        return False
    if torch.is_autocast_enabled("cpu") or torch.is_inference_mode_enabled() or torch.compiler.is_compiling():
        return False
    if torch._C._len_torch_function_stack() or torch._C._len_torch_dispatch_stack():
        return False
    if torch._C._autograd._profiler_enabled():   # it records this thread's ops only
        return False
    if any(getattr(m, "_compiled_call_impl", None) is not None for m in module.modules()):
        return False
    return not any(hasattr(p, "ds_tensor") for p in module.parameters())   # ZeRO-3 partitioned


_SIDE_NAME = "engine-beside"


class _SideThread:
    """One daemon thread taking (fn, threads) jobs from a queue; a forked child makes its own."""

    def __init__(self):
        self.pid = os.getpid()
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=_SIDE_NAME, daemon=True).start()

    def _serve(self):
        while True:
            fn, threads, done = self.jobs.get()
            torch.set_num_threads(threads)
            try:
                with torch.no_grad():
                    done.value = fn()
            except BaseException as e:   # handed to the caller's thread, raised there
                done.error = e
            done.set()


_side: _SideThread | None = None
_side_lock = threading.Lock()


def _side_thread() -> _SideThread:
    global _side
    with _side_lock:
        if _side is None or _side.pid != os.getpid():
            _side = _SideThread()
        return _side


class _Done(threading.Event):
    value = None
    error: BaseException | None = None


class Beside:
    """Context manager: on enter, the side thread starts on `parts` (callables, or one callable; the first is
    always its own) with half of this thread's intra-op threads (this thread keeps the rest); on exit, this
    thread takes the parts no thread has started yet, one at a time, under no_grad, then waits for the side
    thread's last part and gets its threads back (after an error here, the side thread ends with the part it
    holds). `.result` is `combine` of the parts' values in their order (one callable: its
    value). With enabled=False, every part runs inline on enter, under no_grad.

    Parts let the two halves share the longer one's work: whichever thread is free takes the next part,
    so the step ends when both are done rather than when the slower half is. This thread takes parts on
    the side thread's share of the threads, so a part's values do not depend on which thread ran it."""

    def __init__(self, parts, enabled: bool, combine: Callable[[list], object] | None = None):
        self.parts = [parts] if callable(parts) else list(parts)
        self.combine = combine if combine is not None else (lambda values: values[0])
        self.enabled = enabled
        self.result = None
        self._done: _Done | None = None
        self._values: list = [None] * len(self.parts)
        self._next = 0
        self._stop = False
        self._lock = threading.Lock()

    def _take(self, first: int | None = None):
        """Run part `first` (if given), then parts until none is left or a thread failed; run by both threads."""
        i = first
        while True:
            if i is None:
                with self._lock:
                    if self._stop or self._next >= len(self.parts):
                        return
                    i, self._next = self._next, self._next + 1
            try:
                self._values[i] = self.parts[i]()
            except BaseException:
                self._stop = True
                raise
            i = None

    def __enter__(self) -> "Beside":
        if not self.enabled or not self.parts:
            with torch.no_grad():
                self._take()
            self.result = self.combine(self._values)
            return self
        self._threads = torch.get_num_threads()
        side = self._threads // 2
        self._done = _Done()
        self._next = 1   # the first part is the side thread's, whenever it starts
        _side_thread().jobs.put((partial(self._take, 0), side, self._done))
        torch.set_num_threads(self._threads - side)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._done is None:
            return False
        try:
            if exc is None:   # on the side thread's share of threads, so no value depends on who took it
                torch.set_num_threads(self._threads // 2)
                with torch.no_grad():
                    self._take()
            else:
                self._stop = True   # the side thread finishes the part it holds and takes no other
        except BaseException:
            self._stop = True
            raise
        finally:
            self._done.wait()
            torch.set_num_threads(self._threads)
        if exc is not None:   # the body's error goes on; the parts left undone have no value to combine
            return False
        if self._done.error is not None:
            raise self._done.error
        self.result = self.combine(self._values)
        return False
