"""The one kernel registry: op -> {backend: Impl}, one pick rule, one override.

    from kernels._registry import register, pick
    register("ema_", "triton", _ema_triton, devices=("cuda", "cpu"), runs_on=_ops.triton_runs_on,
             needs="triton (on CPU only under TRITON_INTERPRET=1)")
    impl = pick("ema_", t.device)      # an Impl: impl.backend, impl.fn
    impl.fn(targets, sources, m)

Pick rule, the same for every op:
  1. a forced backend (kernels.use_backend / JEPA_KERNEL_BACKEND) that the op has is used, or the call
     is an error saying why it cannot run it (wrong device, not built/installed, an input it does not
     take); an op that has no such backend picks as in 2 (forcing "triton" does not slow the data loader);
  2. else the first backend of PREFERENCE[device type] that the op has, that runs there and that takes
     the call; else the op's torch reference ("torch"), which takes every call (with one warning on CPU
     when the C++ extension is not built).
`fits(**call)` lets an impl refuse a call by its properties (dtype, head dim, block_causal...); callers
pass plain Python values, not tensors, so the pick is traceable by torch.compile (no data reads).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kernels import _ops
from kernels._backend import current_backend

# Fastest first. On CUDA, "cuda" (our CUDA kernels or the library kernels) leads: for the EMA it is the
# multi-tensor kernel, one launch for the whole parameter list.
PREFERENCE = {"cpu": ("cpp",), "cuda": ("cuda", "triton")}   # then "torch"


@dataclass(frozen=True)
class Impl:
    op: str
    backend: str
    fn: Callable
    devices: tuple[str, ...]
    runs_on: Callable | None = None     # device -> bool (built, installed, interpreter on)
    needs: str = ""                     # what runs_on requires, for the error message
    fits: Callable | None = None        # (**call) -> None, or a reason the call is not taken

    def refusal(self, device, call: dict) -> str | None:
        """None when this impl runs the call, else the reason it does not."""
        if device.type not in self.devices:
            return f"it runs on {'/'.join(self.devices)} tensors, got {device.type}"
        if self.runs_on is not None and not self.runs_on(device):
            return f"it needs {self.needs}"
        return self.fits(**call) if self.fits is not None else None


REGISTRY: dict[str, dict[str, Impl]] = {}


def register(op: str, backend: str, fn: Callable, *, devices=("cpu", "cuda"), runs_on=None, needs: str = "",
             fits=None) -> Callable:
    if backend not in ("torch", "cpp", "triton", "cuda"):
        raise ValueError(f"register: unknown backend {backend!r} for {op}")
    impls = REGISTRY.setdefault(op, {})
    if backend in impls:
        raise ValueError(f"register: {op} already has a {backend!r} implementation")
    impls[backend] = Impl(op, backend, fn, tuple(devices), runs_on, needs, fits)
    return fn


def pick(op: str, device, **call) -> Impl:
    """The implementation that runs this call of `op` on `device` (see the module docstring)."""
    impls = REGISTRY[op]
    forced = current_backend()
    if forced != "auto" and forced in impls:
        impl = impls[forced]
        why = impl.refusal(device, call)
        if why is not None:
            raise RuntimeError(f"{op}: backend {forced!r} is forced (kernels.use_backend / JEPA_KERNEL_BACKEND) "
                               f"but cannot run this call: {why}")
        return impl
    for name in PREFERENCE.get(device.type, ()):
        impl = impls.get(name)
        if impl is not None and impl.refusal(device, call) is None:
            return impl
    if device.type == "cpu" and "cpp" in impls and not _ops.cpp_available():   # not a call cpp refuses
        _ops.warn_fallback(op)
    return impls["torch"]


def backends(op: str) -> tuple[str, ...]:
    """The backends `op` has (for tests and bench/gpu_check.py)."""
    return tuple(REGISTRY[op])


def cpp_runs_on(device) -> bool:
    return _ops.cpp_available()


def cuda_runs_on(device) -> bool:
    return _ops.cuda_available()


CPP = dict(devices=("cpu",), runs_on=cpp_runs_on, needs=f"the C++ extension kernels._C ({_ops.BUILD_HINT})")
CUDA = dict(devices=("cuda",), runs_on=cuda_runs_on,
            needs="the CUDA extension kernels._C_cuda (built where torch has CUDA and nvcc exists)")
TRITON = dict(devices=("cuda", "cpu"), runs_on=_ops.triton_runs_on,
              needs="triton (on CPU tensors only under TRITON_INTERPRET=1)")

_ops.cpp_available()   # load the extensions now, so that a traced pick reads a filled cache
_ops.cuda_available()
