"""GELU's output and its gradient in one pass, for a layer that recomputes the GELU in its backward.

    y, dh = kernels.gelu_with_grad(h, g)      # y = gelu(h), dh = g * gelu'(h) (exact GELU, erf form)

engine.models.layers.GeluLinear keeps only a GELU's input h for the backward, which then needs both
gelu(h) (for the weight gradient) and gelu'(h) (for the input gradient). ATen computes them in two
passes with three exponentials per element (gelu, gelu_backward); the C++ kernel (csrc/cpu/gelu.cpp)
takes one pass and one exponential. `g` is overwritten with dh where the kernel runs: pass a gradient
that is not needed afterwards (the product g @ W of the layer's backward).

Backends (kernels/_registry.py): cpp (CPU fp32 or bf16, built; bf16 computed in fp32 and rounded once, as
ATen's bf16 GELU kernels), torch (the reference: every other call, CUDA included, where ATen's two
elementwise kernels run). Not a torch.library custom op: it runs inside an autograd Function's backward,
which torch.compile never traces (compiled graphs take the plain ops).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import _registry


def gelu_with_grad_ref(h: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-torch definition.

    Equivalent pytorch code::

        return F.gelu(h), torch.ops.aten.gelu_backward(g, h)
    """
    return F.gelu(h), torch.ops.aten.gelu_backward(g, h)


def _cpp(h, g):
    g = g.contiguous()
    return torch.ops.jepa_cpp.gelu_with_grad_(h.contiguous(), g), g


def _fp32_or_bf16(dtype):
    return None if dtype in (torch.float32, torch.bfloat16) else f"the C++ kernel takes fp32 or bf16, got {dtype}"


_registry.register("gelu_with_grad", "torch", gelu_with_grad_ref)
_registry.register("gelu_with_grad", "cpp", _cpp, **_registry.CPP, fits=_fp32_or_bf16)


def gelu_with_grad(h: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gelu(h), g * gelu'(h)) for same-shaped h and g on one device; g may be overwritten. Where the
    result is itself differentiated (grad mode on and an input requiring grad) it is the reference's."""
    if h.shape != g.shape:
        raise ValueError(f"gelu_with_grad: h has shape {tuple(h.shape)}, g {tuple(g.shape)}")
    if h.device != g.device or h.dtype != g.dtype:
        raise ValueError(f"gelu_with_grad: h is {h.dtype} on {h.device}, g {g.dtype} on {g.device}")
    if torch.is_grad_enabled() and (h.requires_grad or g.requires_grad):
        return gelu_with_grad_ref(h, g)   # differentiated (a double backward): the ATen ops have derivatives
    return _registry.pick("gelu_with_grad", h.device, dtype=h.dtype).fn(h, g)
