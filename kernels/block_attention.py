"""Block-diagonal attention over packed variable-length sequences.

    o_THD = kernels.block_attention(q_THD, k_THD, v_THD, cu_seqlens_q, cu_seqlens_k,
                                    max_seqlen_q=Lq, max_seqlen_k=Lk)
    o_THD = kernels.block_attention(q, k, v, cu, cu, max_seqlen_q=L, max_seqlen_k=L, block_causal=frame_T)

`q/k/v` hold S sequences packed along T (sequence s is rows cu_seqlens[s]:cu_seqlens[s+1]); each
sequence attends only within itself, so no FLOP is spent on padding and no dense T x T mask exists.
`block_causal` (optional) gives a frame id per token (int tensors [Tq] and [Tk], or one tensor when
q and k share cu_seqlens): a query attends to keys whose frame id is <= its own. A query row that
sees no key (an empty key sequence, or no key of an earlier-or-equal frame) gets a zero output.

Backends (kernels/_registry.py: "auto" picks by device; kernels.use_backend / JEPA_KERNEL_BACKEND force):
  CPU  "cpp" (auto): csrc/cpu/block_attention.cpp, per sequence (or per (sequence, head) when there are
       few), all inside ONE OpenMP region with a dynamic longest-first schedule: fp32 sequences of at most
       256 queries and keys take its short-sequence kernel (a head's whole score matrix in cache, BLAS
       GEMMs on the packed rows; block_causal frames in time order: each query frame's scores against the
       keys it sees only, otherwise -inf scores: 1.13-1.3x the flash kernel on the tiny step's contexts and
       predictor, bench/results/attention_cpu.csv; 1.3-2.1x it with the world models' frame masks), every
       other one ATen's fused CPU flash kernel on zero-copy views (frames in time order: one call per query
       frame on the keys it sees, no mask; 1.3-1.4x at 300-1040 tokens). Without the built
       extension: kernels/cpu_attention.py (length buckets over the same ATen kernels, from Python).
       Measurements behind the choice: that module.
  CUDA "cuda" (auto when it fits): FlashAttention-2 varlen for fp16/bf16, Dh % 8 == 0, Dh <= 256, no
       block_causal: flash_attn_varlen_func when flash_attn is installed, else the same kernel as torch
       ships it (aten._flash_attention_forward with cu_seqlens, sm80+); else xformers
       memory_efficient_attention with a BlockDiagonalMask (no block_causal). block_causal fp16/bf16 calls
       with Dh 16/32/64/128: torch's FlexAttention with a block mask of the sequences and frames
       (kernels/flex_attention.py), with JEPA_FLEX_ATTENTION=1 (opt-in: not yet run on a GPU). Else
       "triton": kernels/triton_attention.py (any dtype, head dim and mask). On an H200
       (bench/results/gpu_ops.csv) torch's flash kernel ran the V-JEPA mixes at 2.4-4.3x our Triton
       kernel's speed.
  "torch": block_attention_ref below.
max_seqlen_q/k smaller than the longest sequence is an error on every device (the host reads the
lengths once per cu_seqlens tensor: one sync per packing off CPU, not one per layer).
The cpp and triton paths go through the custom ops `jepa::block_attention_fwd` / `_bwd` (fake impls
and registered autograd, so torch.compile traces them); eager fp32 CPU calls outside torch function and
dispatch modes call the same C++ ops from a plain autograd Function (`_direct`), without the custom ops'
Python dispatch. Under autocast, q/k/v are cast to the
autocast dtype (as SDPA is); outside it, mixed dtypes are promoted.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels import _ops, _registry
from kernels import flex_attention as flex

# The library kernels are resolved once, at import: torch.compile must not trace an import (without
# flash_attn that import fails and breaks a fullgraph compile). Only torch builds with CUDA look.
flash_attn_varlen_func = fmha = None
if torch.cuda.is_available():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        pass
    try:
        from xformers.ops import fmha
    except ImportError:
        pass


def _frame_ids(block_causal, T_q: int, T_k: int):
    if block_causal is None:
        return None, None
    if isinstance(block_causal, (tuple, list)):
        fq, fk = block_causal
    else:
        fq = fk = block_causal
    for name, f in (("block_causal (query frames)", fq), ("block_causal (key frames)", fk)):
        if not isinstance(f, torch.Tensor) or f.is_floating_point() or f.is_complex() or f.dtype == torch.bool:
            raise TypeError(f"block_attention: {name} must be an integer tensor of frame ids, got "
                            f"{getattr(f, 'dtype', type(f).__name__)}")
    if fq.shape != (T_q,) or fk.shape != (T_k,):
        raise ValueError(
            f"block_attention: block_causal frame ids must have shapes ({T_q},) and ({T_k},), got {tuple(fq.shape)} and {tuple(fk.shape)}")
    return fq, fk


def check_packed(q, k, v, cu_seqlens_q, cu_seqlens_k):
    """Shape/dtype checks shared by every backend: errors name the argument."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"block_attention: {name} must be [T, H, Dh], got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"block_attention: {name} must be floating point, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"block_attention: {name} is on {t.device}, q on {q.device}")
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(cu, torch.Tensor) or cu.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"block_attention: {name} must be an int32/int64 tensor, got "
                            f"{getattr(cu, 'dtype', type(cu).__name__)}")
    if k.shape != v.shape or q.shape[1:] != k.shape[1:]:
        raise ValueError(f"block_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} disagree")
    # the values once per packing (a model's layers share its cu_seqlens): each read is a small op
    _ops.memo(_cu_checked, (cu_seqlens_q, cu_seqlens_k), (q.shape[0], k.shape[0]),
              lambda: _check_cu(cu_seqlens_q, cu_seqlens_k, q.shape[0], k.shape[0]))


_cu_checked: dict = {}


def _check_cu(cu_seqlens_q, cu_seqlens_k, T_q: int, T_k: int) -> bool:
    for name, cu, T in (("cu_seqlens_q", cu_seqlens_q, T_q), ("cu_seqlens_k", cu_seqlens_k, T_k)):
        if cu.dim() != 1 or cu.numel() < 1:
            raise ValueError(f"block_attention: {name} must be 1-D [S+1], got shape {tuple(cu.shape)}")
        if int(cu[0]) != 0 or int(cu[-1]) != T:
            raise ValueError(f"block_attention: {name} must start at 0 and end at {T} (the tokens of "
                             f"{'q' if name == 'cu_seqlens_q' else 'k'}), got {int(cu[0])}..{int(cu[-1])}")
        if cu.numel() > 1 and bool((cu[1:] < cu[:-1]).any()):
            raise ValueError(f"block_attention: {name} must be non-decreasing (sequence lengths >= 0)")
    if cu_seqlens_q.numel() != cu_seqlens_k.numel():
        raise ValueError("block_attention: cu_seqlens_q and cu_seqlens_k hold different sequence counts")
    return True


def block_attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, *, max_seqlen_q=None, max_seqlen_k=None,
                        scale=None, block_causal=None):
    """Plain-torch definition of correct: one SDPA per sequence.

    Equivalent pytorch code::

        out = torch.empty_like(q)
        for s in range(len(cu_seqlens_q) - 1):
            qs, ks, vs = (t[cu[s]:cu[s+1]].transpose(0, 1) for t, cu in ((q, cu_q), (k, cu_k), (v, cu_k)))
            mask = frame_q[:, None] >= frame_k[None, :] if block_causal is not None else None
            out[cu_q[s]:cu_q[s+1]] = F.scaled_dot_product_attention(qs, ks, vs, mask, scale=scale).transpose(0, 1)
    """
    check_packed(q, k, v, cu_seqlens_q, cu_seqlens_k)
    fq, fk = _frame_ids(block_causal, q.shape[0], k.shape[0])
    out = torch.empty_like(q)
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    for s in range(len(cq) - 1):
        q0, q1, k0, k1 = cq[s], cq[s + 1], ck[s], ck[s + 1]
        if q1 == q0:
            continue
        if k1 == k0:  # nothing to attend to: define the output as zeros
            out[q0:q1] = 0
            continue
        mask = None
        if fq is not None:
            mask = fq[q0:q1, None] >= fk[None, k0:k1]
        o = F.scaled_dot_product_attention(q[q0:q1].transpose(0, 1), k[k0:k1].transpose(0, 1),
                                           v[k0:k1].transpose(0, 1), attn_mask=mask, scale=scale)
        out[q0:q1] = o.transpose(0, 1)
    return out




# -- backends (kernels/_registry.py picks one per call) -----------------------------------------------------
_torch_flash: dict = {}   # "ok": whether torch's own FlashAttention-2 varlen kernel runs here; filled on first use


def torch_flash_ok() -> bool:
    """torch's bundled FlashAttention-2 (`aten._flash_attention_forward` with cu_seqlens, the kernel under
    SDPA's flash backend): a torch built with CUDA, a GPU of compute capability >= 8.0, SDPA's flash
    backend enabled. Asked only for calls on CUDA tensors, so CUDA is already initialised then."""
    if "ok" not in _torch_flash:
        ok = torch.cuda.is_available() and torch.backends.cuda.flash_sdp_enabled()
        _torch_flash["ok"] = bool(ok and torch.cuda.get_device_capability() >= (8, 0))
    return _torch_flash["ok"]


# A compiled graph asks once, at trace time, and keeps the answer: what torch._dynamo.assume_constant_result
# does (it sets this attribute), without importing torch._dynamo here (a second of every import of kernels).
torch_flash_ok._dynamo_marked_constant = True


def _flash_fits(dtype, head_dim: int) -> bool:
    return dtype in (torch.float16, torch.bfloat16) and head_dim % 8 == 0 and head_dim <= 256


# "ok": whether block-causal calls take FlexAttention (kernels/flex_attention.py); filled on first use
_flex: dict = {}


def flex_runs() -> bool:
    """torch's FlexAttention (2.5+) on a GPU of compute capability >= 8.0."""
    return bool(torch.cuda.is_available() and flex.available() and torch.cuda.get_device_capability() >= (8, 0))


def flex_ok() -> bool:
    """Whether block-causal calls on CUDA take FlexAttention: where it runs and JEPA_FLEX_ATTENTION=1. Opt-in
    until bench/gpu_check.py's `[flex]` cases and timings have run on a GPU; our Triton kernel otherwise.
    Asked only for calls on CUDA tensors, as torch_flash_ok."""
    if "ok" not in _flex:
        _flex["ok"] = os.environ.get("JEPA_FLEX_ATTENTION", "0") == "1" and flex_runs()
    return _flex["ok"]


flex_ok._dynamo_marked_constant = True


def _library(dtype, head_dim: int, causal: bool) -> str | None:
    """The library kernel that takes this call on CUDA, or None: FlashAttention varlen (fp16/bf16,
    Dh % 8 == 0, Dh <= 256) from flash_attn, else the same kernel as torch ships it, else xformers'
    BlockDiagonalMask; block_causal calls (fp16/bf16, Dh 16/32/64/128): torch's FlexAttention with a block
    mask of the sequences and frames (kernels/flex_attention.py)."""
    if causal:
        fits = dtype in (torch.float16, torch.bfloat16) and head_dim in flex.HEAD_DIMS
        return "flex" if fits and flex_ok() else None
    if _flash_fits(dtype, head_dim):
        if flash_attn_varlen_func is not None:
            return "flash_attn"
        if torch_flash_ok():
            return "torch_flash"
    return "xformers" if fmha is not None else None


def _library_fits(dtype, head_dim: int, causal: bool):
    if _library(dtype, head_dim, causal) is None:
        if causal:
            return (f"FlexAttention (fp16/bf16, Dh 16/32/64/128, torch >= 2.5, sm80+; JEPA_FLEX_ATTENTION=1) does "
                    f"not take {dtype}, Dh {head_dim}")
        return (f"neither FlashAttention (flash_attn or torch's own, fp16/bf16, Dh % 8 == 0, Dh <= 256, sm80+; "
                f"flash_attn installed: {flash_attn_varlen_func is not None}) nor xformers (installed: "
                f"{fmha is not None}) takes {dtype}, Dh {head_dim}")
    return None


def _run_library(q, k, v, cu_q, cu_k, max_q, max_k, scale, fq, fk):
    lib = _library(q.dtype, q.shape[-1], fq is not None)
    if lib == "flex":
        if q.shape[0] == 0 or k.shape[0] == 0:   # nothing to launch on; ours returns the defined zeros
            return _run_op("triton")(q, k, v, cu_q, cu_k, max_q, max_k, scale, fq, fk)
        return flex.flex_block_attention(q, k, v, cu_q, cu_k, scale, fq, fk)
    if lib == "flash_attn":
        return flash_attn_varlen_func(q, k, v, cu_q.int(), cu_k.int(), max_q, max_k, softmax_scale=scale,
                                      causal=False)
    if lib == "torch_flash":
        if q.shape[0] == 0 or k.shape[0] == 0:   # nothing to launch on; ours returns the defined zeros
            return _run_op("triton")(q, k, v, cu_q, cu_k, max_q, max_k, scale, fq, fk)
        # differentiable: autograd runs aten._flash_attention_backward
        return torch.ops.aten._flash_attention_forward(q, k, v, cu_q.int(), cu_k.int(), max_q, max_k, 0.0, False,
                                                       False, scale=scale)[0]
    # BlockDiagonalMask wants Python lengths (a sync); it keeps the packed layout as batch 1. Empty
    # sequences are not representable there: those calls take our Triton kernel instead.
    lq, lk = torch.diff(cu_q).tolist(), torch.diff(cu_k).tolist()
    if not lq or min(lq) == 0 or min(lk) == 0:
        return _run_op("triton")(q, k, v, cu_q, cu_k, max_q, max_k, scale, fq, fk)
    bias = fmha.BlockDiagonalMask.from_seqlens(lq, lk)
    return fmha.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias, scale=scale)[0]


def _run_op(backend: str):
    def run(q, k, v, cu_q, cu_k, max_q, max_k, scale, fq, fk):
        if backend == "cpp" and _direct(q):
            if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
                return _CppAttentionFn.apply(q, k, v, cu_q, cu_k, scale, fq, fk)
            return torch.ops.jepa_cpp.block_attention_fwd(q, k, v, cu_q, cu_k, scale, fq, fk)[0]
        return _fwd_op(q, k, v, cu_q, cu_k, max_q, max_k, scale, fq, fk, backend)[0]
    return run


def _direct(q) -> bool:
    """Whether an eager fp32 CPU call goes straight to the C++ ops: the custom ops' Python dispatch (its
    autograd wrapper, defaults and redispatch) costs ~0.3 ms a call with its backward, ten times the kernels'
    own time at a predictor's widths. Compiled graphs and torch function / dispatch modes (FlopCounterMode)
    keep seeing the custom ops."""
    return (q.dtype is torch.float32 and not torch.compiler.is_compiling() and _ops.cpp_available()
            and not torch._C._len_torch_dispatch_stack() and not torch._C._len_torch_function_stack())


class _CppAttentionFn(torch.autograd.Function):
    """The custom ops' forward and backward (the same C++ kernels, the same saved tensors), as one plain
    autograd Function."""

    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, scale, fq, fk):
        out, lse = torch.ops.jepa_cpp.block_attention_fwd(q, k, v, cu_q, cu_k, scale, fq, fk)
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, fq, fk)
        ctx.scale = scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out, lse, cu_q, cu_k, fq, fk = ctx.saved_tensors
        dq, dk, dv = torch.ops.jepa_cpp.block_attention_bwd(dout, q, k, v, out, lse, cu_q, cu_k, ctx.scale, fq, fk)
        return dq, dk, dv, None, None, None, None, None


def _run_ref(q, k, v, cu_q, cu_k, max_q, max_k, scale, fq, fk):
    return block_attention_ref(q, k, v, cu_q, cu_k, scale=scale, block_causal=None if fq is None else (fq, fk))


# -- custom ops: forward returns (out, lse); the backward is its own op --------------------------------
def _lse_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _needs_fp32(dtype) -> bool:
    """bf16 where ATen's CPU flash kernel cannot run it (_ops.cpu_bf16_flash_ok): computed in fp32, which
    is what that kernel accumulates in anyway."""
    return dtype == torch.bfloat16 and not _ops.cpu_bf16_flash_ok()


def _bwd_needs_fp32(dtype) -> bool:
    """bf16 backward on CPU runs in fp32 always: ATen's bf16 flash backward is 2.5-3.5x slower than its fp32
    one at the engine's shapes even on an AMX CPU, whose forward is 1.5-2x faster in bf16 (docs/benchmarks.md,
    "bf16 on a CPU with AMX"), and it accumulates in fp32 anyway; the casts cost a pass over q, k, v, out, dout."""
    return dtype == torch.bfloat16


def sdpa(q, k, v, **kwargs):
    """F.scaled_dot_product_attention on dense [..., H, L, Dh] inputs. On CPU, bf16 (or bf16 autocast)
    that will be differentiated runs in fp32 and returns bf16 (the backward is the slow part in bf16,
    _bwd_needs_fp32); bf16 without a backward goes to the math backend where ATen's flash kernel cannot
    run it (_ops.cpu_bf16_flash_ok)."""
    if q.device.type == "cpu":
        dtype = _ops.compute_dtype(q)
        if (_bwd_needs_fp32(dtype) and torch.is_grad_enabled()
                and any(t.requires_grad for t in (q, k, v, kwargs.get("attn_mask")) if t is not None)):
            with torch.autocast("cpu", enabled=False):
                mask = kwargs.get("attn_mask")
                if mask is not None and mask.is_floating_point():
                    kwargs = {**kwargs, "attn_mask": mask.float()}
                return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs).to(dtype)
        if _needs_fp32(dtype):
            with sdpa_kernel(SDPBackend.MATH):
                return F.scaled_dot_product_attention(q, k, v, **kwargs)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


@torch.library.custom_op("jepa::block_attention_fwd", mutates_args=())
def _fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
            max_q: int, max_k: int, scale: float, fq: torch.Tensor | None,
            fk: torch.Tensor | None, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "cpp" and _needs_fp32(q.dtype):
        out, lse = _fwd_op(q.float(), k.float(), v.float(), cu_q, cu_k, max_q, max_k, scale, fq, fk, backend)
        return out.to(q.dtype), lse
    if backend == "cpp":
        if _ops.cpp_available():
            out, lse = torch.ops.jepa_cpp.block_attention_fwd(q, k, v, cu_q, cu_k, scale, fq, fk)
        else:
            _ops.warn_fallback("block_attention")
            from kernels.cpu_attention import block_attention_cpu_fwd
            out, lse = block_attention_cpu_fwd(q, k, v, cu_q, cu_k, scale, fq, fk)
    else:
        from kernels.triton_attention import block_attention_triton_fwd
        out, lse = block_attention_triton_fwd(q, k, v, cu_q, cu_k, max_q, max_k, scale, fq, fk)
    return out.contiguous(), lse.to(_lse_dtype(q.dtype)).contiguous()


@_fwd_op.register_fake
def _(q, k, v, cu_q, cu_k, max_q, max_k, scale, fq, fk, backend):
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(q.shape[:2], dtype=_lse_dtype(q.dtype))


@torch.library.custom_op("jepa::block_attention_bwd", mutates_args=())
def _bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor, max_q: int, max_k: int, scale: float,
            fq: torch.Tensor | None, fk: torch.Tensor | None, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "cpp" and _bwd_needs_fp32(q.dtype):
        g = _bwd_op(dout.float(), q.float(), k.float(), v.float(), out.float(), lse, cu_q, cu_k, max_q, max_k,
                    scale, fq, fk, backend)
        return tuple(t.to(q.dtype) for t in g)
    if backend == "cpp":
        if _ops.cpp_available():
            g = torch.ops.jepa_cpp.block_attention_bwd(dout, q, k, v, out, lse, cu_q, cu_k, scale, fq, fk)
        else:
            from kernels.cpu_attention import block_attention_cpu_bwd
            g = block_attention_cpu_bwd(dout, q, k, v, out, lse, cu_q, cu_k, scale, fq, fk)
    else:
        from kernels.triton_attention import block_attention_triton_bwd
        g = block_attention_triton_bwd(dout, q, k, v, out, lse.float(), cu_q, cu_k, max_q, max_k, scale, fq, fk)
    return tuple(t.contiguous() for t in g)


@_bwd_op.register_fake
def _(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale, fq, fk, backend):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _setup(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, scale, fq, fk, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, fq, fk)
    ctx.meta = (max_q, max_k, scale, backend)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, cu_q, cu_k, fq, fk = ctx.saved_tensors
    max_q, max_k, scale, backend = ctx.meta
    dq, dk, dv = _bwd_op(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale, fq, fk, backend)
    return dq, dk, dv, None, None, None, None, None, None, None, None


_fwd_op.register_autograd(_backward, setup_context=_setup)

_registry.register("block_attention", "torch", _run_ref)
# cpp: the C++ extension, or kernels/cpu_attention.py (the same ATen kernels from Python) when not built
_registry.register("block_attention", "cpp", _run_op("cpp"), devices=("cpu",))
_registry.register("block_attention", "triton", _run_op("triton"), **_registry.TRITON)
_registry.register("block_attention", "cuda", _run_library, devices=("cuda",), fits=_library_fits)


# -- public entry point --------------------------------------------------------------------------------
def _common_dtype(q, k, v):
    """SDPA's autocast rule (cast to the autocast dtype), else type promotion for mixed inputs."""
    dev = q.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
    else:
        dt = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    return tuple(t if t.dtype == dt else t.to(dt) for t in (q, k, v))


_longest_seen: dict = {}   # one host read per cu_seqlens tensor (_ops.memo)


def _longest(cu) -> int:
    """The longest sequence in cu_seqlens (a device sync off CPU, once per tensor: the layers of a model
    reuse one cu_seqlens, so a step syncs once per packing, not once per layer)."""
    return _ops.memo(_longest_seen, (cu,), (), lambda: int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0)


def _max_len(cu, given, name: str) -> int:
    """max_seqlen sizes the kernels' grids: one smaller than the longest sequence would drop its tail
    rows silently, so it is checked on every device (under torch.compile: a device assert)."""
    if torch.compiler.is_compiling():
        if given is None:
            return int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
        if cu.numel() > 1:
            torch._assert_async((cu[1:] - cu[:-1]).max() <= given,
                                f"block_attention: {name} is smaller than the longest sequence")
        return int(given)
    longest = _longest(cu)
    if given is None:
        return longest
    if int(given) < longest:
        raise ValueError(f"block_attention: {name}={int(given)} but the longest sequence in "
                         f"cu_seqlens_{name[-1]} has {longest} tokens; pass at least {longest} (or None)")
    return int(given)


def block_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, *, max_seqlen_q=None, max_seqlen_k=None,
                    scale=None, block_causal=None):
    """o_THD for packed q/k/v [T, H, Dh] (see module docstring); differentiable w.r.t. q, k, v.

    max_seqlen_q/k: at least the longest sequence (the kernels' grid; computed from cu_seqlens when
    None; a smaller value is an error). scale: softmax scale, default 1/sqrt(Dh).
    block_causal: frame ids (tensor or (fq, fk) pair)."""
    compiling = torch.compiler.is_compiling()
    if not compiling and (q.device.type == "cpu" or _ops.debug()):
        check_packed(q, k, v, cu_seqlens_q, cu_seqlens_k)   # reads cu values: a sync off CPU
    elif any(t.dim() != 3 for t in (q, k, v)):
        raise ValueError(f"block_attention: q/k/v must be [T, H, Dh], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    fq, fk = _frame_ids(block_causal, q.shape[0], k.shape[0])
    q, k, v = _common_dtype(q, k, v)
    scale = float(scale) if scale is not None else q.shape[-1] ** -0.5
    max_q = _max_len(cu_seqlens_q, max_seqlen_q, "max_seqlen_q")
    max_k = _max_len(cu_seqlens_k, max_seqlen_k, "max_seqlen_k")
    impl = _registry.pick("block_attention", q.device, dtype=q.dtype, head_dim=q.shape[-1], causal=fq is not None)
    return impl.fn(q, k, v, cu_seqlens_q, cu_seqlens_k, max_q, max_k, scale, fq, fk)
