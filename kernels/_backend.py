"""Backend selection shared by every op in `kernels`.

The backend is picked per call from the input's device, unless forced:

    import kernels
    kernels.use_backend("torch")          # plain-torch references everywhere
    with kernels.backend("triton"): ...   # scoped
    JEPA_KERNEL_BACKEND=cpp python ...    # from the environment

Backends: "torch" (the `<op>_ref` definitions), "cpp" (csrc/cpu via the `jepa::` torch.library ops),
"triton" (GPU, or CPU under TRITON_INTERPRET=1), "cuda" (csrc/cuda, CUDA builds only).
"auto" (the default) picks the fastest available one for the device; the pick rule is in
kernels/_registry.py (an op without the forced backend picks as in "auto").
"""
from __future__ import annotations

import contextlib
import os

BACKENDS = ("auto", "torch", "cpp", "triton", "cuda")

_forced: str | None = None


def _check(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; expected one of {BACKENDS}")
    return name


def use_backend(name: str) -> None:
    """Force every op to one backend ("auto" restores device-based choice)."""
    global _forced
    _forced = None if _check(name) == "auto" else name


@contextlib.contextmanager
def backend(name: str):
    """Scoped `use_backend`."""
    global _forced
    previous = _forced
    use_backend(name)
    try:
        yield
    finally:
        _forced = previous


def current_backend() -> str:
    """The forced backend, else JEPA_KERNEL_BACKEND, else "auto"."""
    if _forced is not None:
        return _forced
    return _check(os.environ.get("JEPA_KERNEL_BACKEND", "auto").strip().lower() or "auto")
