"""A linear layer whose products run on the C++ register-blocked loop on AVX-512 CPUs.

    y = kernels.linear(x, weight, bias)          # = F.linear(x, weight, bias), differentiable
    y = kernels.linear(x, weight, bias, residual=r)   # = r + F.linear(x, weight, bias): r added as y is stored
    dx, dw, db = kernels.linear_grads(g, x, weight, need_b=True)  # g @ weight, g^T x and g summed over x's rows

At a ViT block's widths BLAS's sgemm spends part of every call packing both operands; the loop of
csrc/cpu/gemm_avx512.h reads them in place and adds the bias as it stores the rows (csrc/cpu/linear.cpp).
It runs fp32 CPU tensors on CPUs with AVX-512, outside autocast and compiled graphs, and weights that are
whole tensors (not ZeRO-3 partitions, which DeepSpeed gathers around F.linear), with the kernel backend
"auto" or "cpp", and outside torch function and dispatch modes (FlopCounterMode and other tools that read
aten's GEMMs see them as before); every other call, and every call under JEPA_LINEAR_BLAS=1, is F.linear
(the reference). The products sum in another order than BLAS's: results agree with F.linear to float
rounding, not bit for bit.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from kernels import _ops
from kernels._backend import current_backend


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-torch definition: F.linear(x, weight, bias)."""
    return F.linear(x, weight, bias)


_on: dict = {}   # filled once: a plain dict, read as a constant


def cpp_runs() -> bool:
    """Whether this process runs the C++ loop: built, AVX-512, and not JEPA_LINEAR_BLAS=1."""
    on = _on.get("on")
    if on is None:
        on = _on["on"] = (_ops.cpp_available() and os.environ.get("JEPA_LINEAR_BLAS", "0") in ("", "0")
                          and bool(torch.ops.jepa_cpp.linear_ok()))
    return on


def fits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether a call takes the C++ loop (see the module's docstring); the cheap checks first, as it runs on
    every layer's every call."""
    f32 = torch.float32
    return (x.dtype is f32 and weight.dtype is f32 and (bias is None or bias.dtype is f32) and x.is_cpu
            and cpp_runs() and not torch._C._len_torch_dispatch_stack() and not torch._C._len_torch_function_stack()
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()
            and current_backend() in ("auto", "cpp") and not hasattr(weight, "ds_tensor"))


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t as [rows, features] with unit inner stride (a view where its layout allows)."""
    t2 = t.reshape(t.shape[:-1].numel(), t.shape[-1])   # not -1: ambiguous where a width is 0
    return t2 if t2.stride(-1) == 1 or t2.shape[-1] <= 1 else t2.contiguous()


def _forward(x, weight, bias, residual=None):
    y = torch.ops.jepa_cpp.linear_fwd(_rows(x), weight.contiguous(), None if bias is None else bias.contiguous(),
                                      None if residual is None else _rows(residual))
    return y.view(*x.shape[:-1], weight.shape[0])


def linear_grads(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, need_x: bool = True,
                 need_w: bool = True, fitted: bool = False, need_b: bool = False
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(g @ weight shaped as x, g^T x over the rows, g summed over the rows) of y = x weight^T (+ bias): the
    C++ loop where fits(), else torch's ops, which also run where the result is itself differentiated (a
    backward with create_graph=True: the C++ ops have no derivative). g: [..., out] as y; x: [..., in].
    fitted: the forward took the loop (its backward then skips fits()). The bias gradient (need_b) is
    summed in the weight gradient's pass over g."""
    g2, x2 = g.reshape(g.shape[:-1].numel(), g.shape[-1]), x.reshape(x.shape[:-1].numel(), x.shape[-1])
    differentiated = torch.is_grad_enabled() and (g.requires_grad or x.requires_grad or weight.requires_grad)
    if differentiated or not (fitted or fits(g, weight, None)):
        dx = (g2 @ weight).view(x.shape) if need_x else None
        return dx, (g2.t() @ x2 if need_w else None), (g2.sum(0) if need_b else None)
    g2 = _rows(g)
    dx = torch.ops.jepa_cpp.linear_dx(g2, weight.contiguous()).view(x.shape) if need_x else None
    if not need_w:
        return dx, None, (g2.sum(0) if need_b else None)
    dw, db = torch.ops.jepa_cpp.linear_dw(g2, _rows(x), need_b)
    return dx, dw, (db if need_b else None)


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual):
        ctx.save_for_backward(x, weight)   # x as given: saved-tensor hooks (a norm's recipe) see the caller's
        ctx.has_bias = bias is not None
        return _forward(x, weight, bias, residual)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b, need_r = ctx.needs_input_grad
        dx, dw, db = linear_grads(g, x, weight, need_x, need_w, fitted=True, need_b=ctx.has_bias and need_b)
        return dx, dw, db, (g if need_r else None)   # the residual's gradient is the output's, as an add's


def residual_fits(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the C++ loop adds `residual` as it stores the product: an fp32 CPU tensor of the output's
    shape (no broadcast, no type promotion); the add is a separate op otherwise."""
    return (residual.dtype is torch.float32 and residual.is_cpu
            and residual.shape == (*x.shape[:-1], weight.shape[0]))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) (x [..., in], weight [out, in], bias [out] or None), plus `residual` (the
    output's shape; a block's residual stream) where given, on the C++ loop where fits(): the residual is
    added as the product's rows are stored, the same sum residual + (x weight^T + bias) as a separate add,
    without its pass over memory or the product's own tensor. A backward with create_graph=True takes
    torch's matmuls (linear_grads), so it differentiates again."""
    if not fits(x, weight, bias) or (residual is not None and not residual_fits(residual, x, weight)):
        y = F.linear(x, weight, bias)
        return y if residual is None else residual + y
    grads = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                         or (bias is not None and bias.requires_grad)
                                         or (residual is not None and residual.requires_grad))
    if not grads:
        return _forward(x, weight, bias, residual)
    return _LinearFn.apply(x, weight, bias, residual)
