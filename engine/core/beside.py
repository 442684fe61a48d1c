"""Two independent halves of a CPU step, run side by side, each on its share of the intra-op threads.

    with Beside(lambda: target_forward(x), enabled=beside_ok(x, model.target_encoder)) as target:
        p = online_forward(x)        # this thread, on the other share of the threads, meanwhile
    h = target.result                # the side half's return value (its exception re-raised here)

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
    """Context manager: on enter, `fn` starts on the side thread with half of this thread's intra-op
    threads (this thread keeps the rest); on exit, this thread waits for it and gets its threads back.
    With enabled=False, `fn` runs inline on enter, under no_grad. `.result` holds fn's return value."""

    def __init__(self, fn: Callable[[], object], enabled: bool):
        self.fn, self.enabled = fn, enabled
        self.result = None
        self._done: _Done | None = None

    def __enter__(self) -> "Beside":
        if not self.enabled:
            with torch.no_grad():
                self.result = self.fn()
            return self
        self._threads = torch.get_num_threads()
        side = self._threads // 2
        self._done = _Done()
        _side_thread().jobs.put((self.fn, side, self._done))
        torch.set_num_threads(self._threads - side)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._done is None:
            return False
        try:
            self._done.wait()
        finally:
            torch.set_num_threads(self._threads)
        if self._done.error is not None and exc is None:
            raise self._done.error
        self.result = self._done.value
        return False
