"""Masked-token gather and scatter (+ a gather fused with the target layer norm).

    y_BKD = kernels.gather_tokens(x_BND, idx_BK)        # padded form
    y_TD  = kernels.gather_tokens(x_BND, rows_T)        # packed form: flat row ids into B*N
    x_BND = kernels.scatter_tokens(y_TD, rows_T, B, N)  # inverse: rows placed into zeros
    h_TD  = kernels.gather_layer_norm(h_BND, rows_T)    # == F.layer_norm(h_BND, (D,))[rows] (forward only)

Indices are unique per sample (mask generators guarantee it), so the backward of the gather is a
scatter without atomics. Bad indices are errors on every backend: out of range (for 2-D ids: out of
their own sample), or repeated where the scatter would need atomics (the C++ kernels check both for
free; elsewhere a check costs one device sync). `gather_tokens(..., accumulate=True)` takes repeats. All go through the custom ops `jepa::gather_rows`, `jepa::scatter_rows`,
`jepa::gather_layer_norm`, whose backend is picked per call by kernels/_registry.py: cpp on CPU when
built, cuda then triton on CUDA, torch otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import _ops, _registry


def _check_x(x_BND):
    if x_BND.dim() != 3:
        raise ValueError(f"gather_tokens: x must be [B, N, D], got shape {tuple(x_BND.shape)}")


def gather_tokens_ref(x_BND: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Plain-torch definition.

    Equivalent pytorch code::

        if idx.dim() == 2:   # idx_BK -> [B, K, D]
            return torch.gather(x_BND, 1, idx[..., None].expand(-1, -1, D))
        return x_BND.reshape(B * N, D)[idx]   # rows_T -> [T, D]
    """
    _check_x(x_BND)
    B, N, D = x_BND.shape
    if idx.dim() == 2:
        if idx.shape[0] != B:
            raise ValueError(f"gather_tokens: idx_BK has batch {idx.shape[0]}, x has {B}")
        return torch.gather(x_BND, 1, idx[..., None].expand(-1, -1, D))
    if idx.dim() != 1:
        raise ValueError(f"gather_tokens: idx must be [B, K] or flat rows [T], got shape {tuple(idx.shape)}")
    return x_BND.reshape(B * N, D)[idx]


def scatter_tokens_ref(y_TD: torch.Tensor, rows_T: torch.Tensor, B: int, N: int) -> torch.Tensor:
    """Plain-torch definition: place packed rows into a zero [B, N, D] buffer.

    Equivalent pytorch code::

        out = y_TD.new_zeros(B * N, D); out[rows_T] = y_TD; return out.view(B, N, D)
    """
    out = y_TD.new_zeros(B * N, y_TD.shape[-1])
    out = out.index_copy(0, rows_T, y_TD)
    return out.view(B, N, -1)


def gather_layer_norm_ref(x_BND: torch.Tensor, idx: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Plain-torch definition: the target path's layer norm (no affine), then the gather.

    Equivalent pytorch code::

        gather_tokens_ref(F.layer_norm(x_BND, (D,), eps=eps), idx)   # eps 1e-5 = F.layer_norm default
    """
    _check_x(x_BND)
    return gather_tokens_ref(F.layer_norm(x_BND, (x_BND.shape[-1],), eps=eps), idx)


# -- checks shared by all backends ---------------------------------------------------------------
def _check_rows(rows_T, M: int, op: str, unique: bool = False):
    """Rows in [0, M), and with `unique` none twice. Every device: the Triton/CUDA kernels would only mask a
    bad row (a silent zero), and a repeated row would make the atomic-free scatter keep one of them. Off CPU
    the whole check is one host read (one device sync); under torch.compile, async device asserts."""
    if rows_T.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{op}: indices must be int64 or int32, got {rows_T.dtype}")
    if rows_T.dim() != 1:
        raise ValueError(f"{op}: rows must be 1-D [T], got shape {tuple(rows_T.shape)}")
    if not rows_T.numel():
        return
    if torch.compiler.is_compiling():
        torch._assert_async(((rows_T >= 0) & (rows_T < M)).all(), f"{op}: index out of range (rows in [0, {M}))")
        if unique:
            torch._assert_async((_row_counts(rows_T, M) <= 1).all(), f"{op}: indices are not unique")
        return
    stats = list(torch.aminmax(rows_T))
    if unique:
        counts_M = _row_counts(rows_T, M)
        stats.append(counts_M.max())
    lo, hi, *most = torch.stack([t.to(torch.int64) for t in stats]).tolist()
    if lo < 0 or hi >= M:
        raise IndexError(f"{op}: index out of range: indices span [{lo}, {hi}] but there are {M} rows "
                         f"({'tokens per sample' if op.endswith('(per sample)') else 'B*N'})")
    if most and most[0] > 1:
        dup = int(torch.nonzero(counts_M > 1)[0, 0])
        raise ValueError(f"{op}: row {dup} appears more than once; indices must be unique per sample "
                         f"(the backward scatter has no atomics){_ACCUMULATE_HINT.get(op, '')}")


def _row_counts(rows_T, M: int) -> torch.Tensor:
    """How often each of the M rows appears (rows clamped into range: the range is checked beside it)."""
    return torch.zeros(M, dtype=torch.int32, device=rows_T.device).index_add_(
        0, rows_T.long().clamp(0, M - 1), torch.ones_like(rows_T, dtype=torch.int32))


_ACCUMULATE_HINT = {"gather_tokens": "; pass accumulate=True to gather repeated rows"}


def _to_rows(x_BND, idx, op: str):
    """idx_BK (per-sample token ids) or rows_T (flat ids) -> flat rows into [B*N, D]."""
    _check_x(x_BND)
    B, N, _ = x_BND.shape
    if idx.dim() == 2:
        if idx.shape[0] != B:
            raise ValueError(f"{op}: idx_BK has batch {idx.shape[0]}, x has {B}")
        _check_rows(idx.reshape(-1), N, f"{op} (per sample)")   # so a bad id cannot land in another sample
        offs_B1 = torch.arange(B, device=idx.device, dtype=idx.dtype)[:, None] * N
        return (idx + offs_B1).reshape(-1)
    if idx.dim() != 1:
        raise ValueError(f"{op}: idx must be [B, K] or flat rows [T], got shape {tuple(idx.shape)}")
    return idx


# -- backends (kernels/_registry.py picks one per call) ------------------------------------------------
def _triton(name):
    def run(*args):
        import kernels.triton_gather as tg
        return getattr(tg, name)(*args)
    return run


def _torch_gather(x_MD, rows_T):
    return x_MD.index_select(0, rows_T)


def _torch_scatter(y_TD, rows_T, M):
    return y_TD.new_zeros(M, y_TD.shape[-1]).index_copy_(0, rows_T.long(), y_TD)


def _torch_gather_ln(x_MD, rows_T, eps):
    return F.layer_norm(x_MD.index_select(0, rows_T), (x_MD.shape[-1],), eps=eps)


def _cpp_gather(x_MD, rows_T):
    return torch.ops.jepa_cpp.gather_rows(x_MD, rows_T)


def _cpp_scatter(y_TD, rows_T, M):
    return torch.ops.jepa_cpp.scatter_rows(y_TD, rows_T, M)


def _cpp_gather_ln(x_MD, rows_T, eps):
    return torch.ops.jepa_cpp.gather_layer_norm(x_MD, rows_T, eps)


def _cuda_gather(x_MD, rows_T):
    return torch.ops.jepa_cuda.gather_rows(x_MD.contiguous(), rows_T.long())


def _cuda_scatter(y_TD, rows_T, M):
    return torch.ops.jepa_cuda.scatter_rows(y_TD.contiguous(), rows_T.long(), M)


def _cuda_gather_ln(x_MD, rows_T, eps):
    return torch.ops.jepa_cuda.gather_layer_norm(x_MD.contiguous(), rows_T.long(), eps)


for _op, (_torch, _cpp, _cuda, _tri) in {
        "gather_rows": (_torch_gather, _cpp_gather, _cuda_gather, "gather_rows_triton"),
        "scatter_rows": (_torch_scatter, _cpp_scatter, _cuda_scatter, "scatter_rows_triton"),
        "gather_layer_norm": (_torch_gather_ln, _cpp_gather_ln, _cuda_gather_ln, "gather_layer_norm_triton")}.items():
    _registry.register(_op, "torch", _torch)
    _registry.register(_op, "cpp", _cpp, **_registry.CPP)
    _registry.register(_op, "cuda", _cuda, **_registry.CUDA)
    _registry.register(_op, "triton", _triton(_tri), **_registry.TRITON)


def _gather_impl(x_MD, rows_T):
    return _registry.pick("gather_rows", x_MD.device).fn(x_MD, rows_T)


def _scatter_impl(y_TD, rows_T, M: int):
    return _registry.pick("scatter_rows", y_TD.device).fn(y_TD, rows_T, M)


@torch.library.custom_op("jepa::gather_rows", mutates_args=())
def gather_rows(x_MD: torch.Tensor, rows_T: torch.Tensor) -> torch.Tensor:
    """y_TD = x_MD[rows_T] (rows unique when a backward is needed)."""
    return _gather_impl(x_MD, rows_T)


@torch.library.custom_op("jepa::scatter_rows", mutates_args=())
def scatter_rows(y_TD: torch.Tensor, rows_T: torch.Tensor, M: int) -> torch.Tensor:
    """x_MD = zeros(M, D); x_MD[rows_T] = y_TD."""
    return _scatter_impl(y_TD, rows_T, M)


@torch.library.custom_op("jepa::gather_layer_norm", mutates_args=())
def gather_layer_norm_rows(x_MD: torch.Tensor, rows_T: torch.Tensor, eps: float) -> torch.Tensor:
    """y_TD = layer_norm(x_MD[rows_T]) without affine params. Forward only (targets carry no grad)."""
    return _registry.pick("gather_layer_norm", x_MD.device).fn(x_MD, rows_T, eps)


@gather_rows.register_fake
def _(x_MD, rows_T):
    return x_MD.new_empty(rows_T.shape[0], x_MD.shape[1])


@scatter_rows.register_fake
def _(y_TD, rows_T, M):
    return y_TD.new_empty(M, y_TD.shape[1])


@gather_layer_norm_rows.register_fake
def _(x_MD, rows_T, eps):
    return x_MD.new_empty(rows_T.shape[0], x_MD.shape[1])


def _gather_setup(ctx, inputs, output):
    x_MD, rows_T = inputs
    ctx.save_for_backward(rows_T)
    ctx.M = x_MD.shape[0]


def _gather_backward(ctx, grad_TD):
    (rows_T,) = ctx.saved_tensors
    return scatter_rows(grad_TD.contiguous(), rows_T, ctx.M), None


def _scatter_setup(ctx, inputs, output):
    _, rows_T, _ = inputs
    ctx.save_for_backward(rows_T)


def _scatter_backward(ctx, grad_MD):
    (rows_T,) = ctx.saved_tensors
    return gather_rows(grad_MD.contiguous(), rows_T), None, None


gather_rows.register_autograd(_gather_backward, setup_context=_gather_setup)
scatter_rows.register_autograd(_scatter_backward, setup_context=_scatter_setup)


# Eager fast path: the same impls under a plain autograd.Function, which skips the custom-op
# dispatch (~100 us per call, as much as the copy itself for small shapes). torch.compile uses the ops.
class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_MD, rows_T):
        ctx.save_for_backward(rows_T)
        ctx.M = x_MD.shape[0]
        return _gather_impl(x_MD, rows_T)

    @staticmethod
    def backward(ctx, grad_TD):
        (rows_T,) = ctx.saved_tensors
        return _ScatterRows.apply(grad_TD.contiguous(), rows_T, ctx.M), None


class _ScatterRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y_TD, rows_T, M):
        ctx.save_for_backward(rows_T)
        return _scatter_impl(y_TD, rows_T, M)

    @staticmethod
    def backward(ctx, grad_MD):
        (rows_T,) = ctx.saved_tensors
        return _GatherRows.apply(grad_MD.contiguous(), rows_T), None, None


def _gather(x_MD, rows_T):
    return gather_rows(x_MD, rows_T) if torch.compiler.is_compiling() else _GatherRows.apply(x_MD, rows_T)


def _scatter(y_TD, rows_T, M):
    return scatter_rows(y_TD, rows_T, M) if torch.compiler.is_compiling() else _ScatterRows.apply(y_TD, rows_T, M)


def _cpp_checks_rows(t) -> bool:
    """The C++ kernels check every row (range, and uniqueness in the scatter) for free: skip the Python
    passes then. Under torch.compile the Python checks become device asserts."""
    return not torch.compiler.is_compiling() and t.device.type == "cpu" and _registry.pick("gather_rows", t.device).backend == "cpp"


# -- public API ------------------------------------------------------------------------------------
def gather_tokens(x_BND: torch.Tensor, idx: torch.Tensor, cu_seqlens=None, *, accumulate: bool = False) -> torch.Tensor:
    """Gather token rows: idx_BK -> [B, K, D] (padded) or flat rows_T -> [T, D] (packed).

    `cu_seqlens` (the packing of rows_T) is accepted for symmetry with block_attention; the gather
    itself does not need it. Differentiable w.r.t. x: the backward is a scatter without atomics, so
    rows must be unique when x needs a gradient (an error otherwise); `accumulate=True` takes repeated
    rows and sums their gradients (torch index_select, whose backward adds with atomics)."""
    rows_T = _to_rows(x_BND, idx, "gather_tokens")
    B, N, D = x_BND.shape
    # uniqueness checked here, not in the backward, so the error points at the call; without it, flat rows
    # the C++ op range-checks itself need no check here
    unique = x_BND.requires_grad and torch.is_grad_enabled() and not accumulate
    if unique or (idx.dim() == 1 and not _cpp_checks_rows(x_BND)):
        _check_rows(rows_T, B * N, "gather_tokens", unique=unique)
    elif idx.dim() == 1 and rows_T.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"gather_tokens: indices must be int64 or int32, got {rows_T.dtype}")
    x_MD = x_BND.reshape(B * N, D)
    if accumulate:
        y_TD = x_MD.index_select(0, rows_T)
    else:
        y_TD = _gather(x_MD, rows_T)
    return y_TD.view(B, idx.shape[1], D) if idx.dim() == 2 else y_TD


def scatter_tokens(y_TD: torch.Tensor, rows_T: torch.Tensor, B: int, N: int) -> torch.Tensor:
    """Inverse of the packed gather: [T, D] rows placed at rows_T of a zero [B, N, D] (rows unique)."""
    if y_TD.dim() != 2 or rows_T.dim() != 1 or rows_T.shape[0] != y_TD.shape[0]:
        raise ValueError(f"scatter_tokens: need y [T, D] and rows [T], got {tuple(y_TD.shape)} and "
                         f"{tuple(rows_T.shape)}")
    if not _cpp_checks_rows(y_TD):
        _check_rows(rows_T, B * N, "scatter_tokens", unique=True)
    return _scatter(y_TD, rows_T, B * N).view(B, N, y_TD.shape[-1])


def gather_layer_norm(x_BND: torch.Tensor, idx: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """layer_norm (no affine, eps 1e-5 as F.layer_norm(h, (D,))) of only the gathered rows.

    Forward only: the target path runs under no_grad. Same idx forms as gather_tokens."""
    rows_T = _to_rows(x_BND, idx, "gather_layer_norm")
    B, N, D = x_BND.shape
    if idx.dim() == 1:
        _check_rows(rows_T, B * N, "gather_layer_norm")
    y_TD = gather_layer_norm_rows(x_BND.reshape(B * N, D), rows_T, float(eps))
    return y_TD.view(B, idx.shape[1], D) if idx.dim() == 2 else y_TD
