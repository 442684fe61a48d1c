"""Loading the compiled extensions, shared by every op module.

    from kernels import _ops
    if _ops.cpp_available(): torch.ops.jepa_cpp.gather_rows(x_MD, rows_T)
    _ops.require_cpp("gather_tokens")     # raises with the build command when it is missing

`kernels._C` (csrc/cpu/*.cpp) registers `torch.ops.jepa_cpp.*` when imported; `kernels._C_cuda`
(csrc/cuda, CUDA builds only) registers `torch.ops.jepa_cuda.*`. A fresh clone with nothing built still
imports: ops fall back to their torch reference with one warning. The public `jepa::<op>` custom ops
are defined in each op module with torch.library.custom_op; which backend runs a call is decided by
kernels/_registry.py.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
import weakref

BUILD_HINT = "build it with `pip install --no-build-isolation -e .` (or `make build`)"


_loaded: dict = {}   # a plain dict, not lru_cache: torch.compile reads it as a constant once filled


def _load(name: str):
    if name not in _loaded:
        try:
            _loaded[name] = importlib.import_module(name), None
        except ImportError as e:   # not built (or built against another torch)
            _loaded[name] = None, e
    return _loaded[name]


def cpp_available() -> bool:
    return _load("kernels._C")[0] is not None


def cuda_available() -> bool:
    return _load("kernels._C_cuda")[0] is not None


def require_cpp(op: str):
    mod, err = _load("kernels._C")
    if mod is None:
        raise RuntimeError(f"{op}: the C++ extension kernels._C is not built ({err}); {BUILD_HINT}")
    return mod


def require_cuda(op: str):
    mod, err = _load("kernels._C_cuda")
    if mod is None:
        raise RuntimeError(f"{op}: the CUDA extension kernels._C_cuda is not built ({err}); "
                           f"it is built only where torch has CUDA and nvcc exists")
    return mod


_warned = False


def warn_fallback(op: str) -> None:
    """Once per process: the C++ ops are missing, so CPU calls use the torch reference."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"kernels: C++ extension not built, {op} and other CPU ops use the slower torch "
                      f"reference; {BUILD_HINT}", RuntimeWarning, stacklevel=3)


def debug() -> bool:
    """JEPA_KERNEL_DEBUG=1 turns on extra (slow, syncing) checks such as index uniqueness."""
    return os.environ.get("JEPA_KERNEL_DEBUG", "0") not in ("", "0")


_TRITON = importlib.util.find_spec("triton") is not None   # resolved once: traced code reads a constant


def triton_available() -> bool:
    return _TRITON


def triton_runs_on(device) -> bool:
    """Triton runs on CUDA tensors, and on CPU tensors only under its interpreter (TRITON_INTERPRET=1)."""
    return _TRITON and (device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1")


_bf16_flash: dict = {}   # filled on first use; a plain dict for the same reason as _loaded


def compute_dtype(t):
    """The dtype ops on t compute in: the autocast dtype of t's device where autocast is on, else t's."""
    import torch
    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.dtype


def cpu_bf16_flash_ok() -> bool:
    """Whether ATen's fused CPU flash attention runs in bf16 in this process.

    On a CPU with AVX512-BF16/AMX, the bf16 flash kernel packs its operands with an AVX-512 routine
    that is compiled out of the lower-ISA kernels; when ATEN_CPU_CAPABILITY selects one (avx2, default)
    the call raises for key lengths >= 64. Such a process computes bf16 attention another way."""
    if "ok" not in _bf16_flash:
        import torch
        x = torch.zeros(1, 1, 64, 8, dtype=torch.bfloat16)
        try:
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(x, x, x)
            _bf16_flash["ok"] = True
        except RuntimeError:
            _bf16_flash["ok"] = False
    return _bf16_flash["ok"]


def memo(store: dict, tensors: tuple, extra: tuple, make, limit: int = 64):
    """make(), remembered in `store` for these tensor objects at their current versions (and `extra`): what
    a model's layers derive from one packing's index tensors is computed once, not once per layer. An
    in-place change of a tensor is a new entry; inference tensors (no version counter) are not remembered."""
    try:
        versions = tuple(t._version for t in tensors)
    except RuntimeError:
        return make()
    key = tuple(id(t) for t in tensors) + tuple(extra)
    hit = store.get(key)
    if hit is not None and all(r() is t for r, t in zip(hit[0], tensors)) and hit[1] == versions:
        return hit[2]
    value = make()
    if len(store) >= limit:
        store.clear()
    store[key] = (tuple(weakref.ref(t) for t in tensors), versions, value)
    return value
