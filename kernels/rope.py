"""Rotary position embedding of q and k in one pass (V-JEPA 2's 3D RoPE, engine/models/rope.py).

    q_rot, k_rot = kernels.rope_qk(q, k, cos, sin)     # == rope_ref(q, cos, sin), rope_ref(k, cos, sin)

q, k: [..., H, Dh], same shape and dtype, any strides with a unit last one (the views that unbind the
fused qkv projection gives). cos, sin: fp32 [..., 1, R] tables (Rope3D.tables) whose leading dims are
q's trailing token dims: one row per token, or per position of a dense batch's sequence (then every
sample takes the same rows). The first R dims of each head (R even, <= Dh) turn as pairs (2i, 2i+1):

    y[2i]   = x[2i]   cos[2i]   - x[2i+1] sin[2i]
    y[2i+1] = x[2i+1] cos[2i+1] + x[2i]   sin[2i+1]

the rest of the head is copied. fp32 math, rounded once to x's dtype. The backward is the transposed
turn (`transpose=True`), one pass again. Written plainly (rope_ref) this is a slice, a cast, two strided
views, a stack, three products and a concatenation per tensor, each a pass over memory, and as many
again in autograd's backward: on a CPU they cost a third of a tiny V-JEPA 2 step, and on a GPU they are
the copies and concatenations compiling fuses away.

Backends (kernels/_registry.py): cpp (CPU fp32 / bf16, built), triton (CUDA; CPU under TRITON_INTERPRET=1;
fp32 / fp16 / bf16), torch (the reference: every other call). All go through the custom op
`jepa::rope_qk`, so torch.compile sees one node with its own backward (the engine's compiled blocks take
rope_ref's plain ops instead, which inductor fuses with their neighbours). The tables get no gradient.
"""
from __future__ import annotations

import math

import torch

from kernels import _registry


def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Plain-torch definition for one tensor x [..., H, Dh]; cos, sin broadcast against x[..., :R].

    Equivalent pytorch code::

        xr = x[..., :R].float()
        rot = torch.stack((-xr[..., 1::2], xr[..., 0::2]), -1).flatten(-2)   # pair (a, b) -> (-b, a)
        return torch.cat([(xr * cos + rot * sin).to(x.dtype), x[..., R:]], -1)
    """
    r = cos.shape[-1]
    xr = x[..., :r].float()
    x1, x2 = xr[..., 0::2], xr[..., 1::2]
    rot = torch.stack((-x2, x1), dim=-1).flatten(-2)
    out = (xr * cos + rot * sin).to(x.dtype)
    if r == x.shape[-1]:
        return out
    return torch.cat([out, x[..., r:]], dim=-1)


def _transposed_ref(x, cos, sin):
    """The backward's turn: y[2i] = x[2i] cos[2i] + x[2i+1] sin[2i+1], y[2i+1] = x[2i+1] cos[2i+1] - x[2i] sin[2i]."""
    r = cos.shape[-1]
    xr = x[..., :r].float()
    xs = xr * sin
    rot = torch.stack((xs[..., 1::2], -xs[..., 0::2]), dim=-1).flatten(-2)
    out = (xr * cos + rot).to(x.dtype)
    return out if r == x.shape[-1] else torch.cat([out, x[..., r:]], dim=-1)


# -- backends: q, k as [M, H, Dh] (unit last stride), cos, sin as [Mc, R] fp32 contiguous, M % Mc == 0 --
def _torch(q, k, cos, sin, transpose):
    turn = _transposed_ref if transpose else rope_ref
    M, Mc = q.shape[0], cos.shape[0]
    c = cos.repeat(M // Mc, 1)[:, None] if Mc != M else cos[:, None]
    s = sin.repeat(M // Mc, 1)[:, None] if Mc != M else sin[:, None]
    return turn(q, c, s).contiguous(), turn(k, c, s).contiguous()


def _cpp(q, k, cos, sin, transpose):
    return tuple(torch.ops.jepa_cpp.rope_qk(q, k, cos, sin, transpose))


def _triton(q, k, cos, sin, transpose):
    from kernels.triton_rope import rope_qk_triton
    return rope_qk_triton(q, k, cos, sin, transpose)


def _fp32_or_bf16(dtype):
    return None if dtype in (torch.float32, torch.bfloat16) else f"the C++ kernel takes fp32 or bf16, got {dtype}"


def _float(dtype):
    return None if dtype in (torch.float32, torch.float16, torch.bfloat16) else f"takes fp32/fp16/bf16, got {dtype}"


_registry.register("rope_qk", "torch", _torch)
_registry.register("rope_qk", "cpp", _cpp, **_registry.CPP, fits=_fp32_or_bf16)
_registry.register("rope_qk", "triton", _triton, **_registry.TRITON, fits=_float)


@torch.library.custom_op("jepa::rope_qk", mutates_args=())
def _rope_qk_op(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                transpose: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _registry.pick("rope_qk", q.device, dtype=q.dtype).fn(q, k, cos, sin, transpose)


@_rope_qk_op.register_fake
def _(q, k, cos, sin, transpose):
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _setup(ctx, inputs, output):
    _, _, cos, sin, transpose = inputs
    ctx.save_for_backward(cos, sin)
    ctx.transpose = transpose


def _backward(ctx, gq, gk):
    cos, sin = ctx.saved_tensors
    dq, dk = _rope_qk_op(gq, gk, cos, sin, not ctx.transpose)
    return dq, dk, None, None, None


_rope_qk_op.register_autograd(_backward, setup_context=_setup)


def rope_qk(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
            sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rope_ref(q, cos, sin), rope_ref(k, cos, sin)) in one pass, contiguous, with their backward."""
    if q.shape != k.shape or q.dtype != k.dtype or q.device != k.device:
        raise ValueError(f"rope_qk: q and k must match, got {tuple(q.shape)} {q.dtype} on {q.device} and "
                         f"{tuple(k.shape)} {k.dtype} on {k.device}")
    if q.dim() < 3:
        raise ValueError(f"rope_qk: q must be [..., H, Dh] with token dims in front, got shape {tuple(q.shape)}")
    H, Dh = q.shape[-2:]
    R = cos.shape[-1]
    if sin.shape != cos.shape or cos.shape[-2] != 1 or R % 2 or R > Dh:
        raise ValueError(f"rope_qk: cos and sin must be [..., 1, R] alike with R even and <= head dim {Dh}, got "
                         f"{tuple(cos.shape)} and {tuple(sin.shape)}")
    cos_R, sin_R = cos.reshape(-1, R), sin.reshape(-1, R)
    M, Mc = math.prod(q.shape[:-2]), cos_R.shape[0]
    lead = tuple(q.shape[:-2])
    if tuple(cos.shape[:-2]) != lead[len(lead) - (cos.dim() - 2):] or (Mc == 0) != (M == 0):
        raise ValueError(f"rope_qk: tables of shape {tuple(cos.shape)} do not match q's token dims {lead}")
    q3, k3 = q.reshape(M, H, Dh), k.reshape(M, H, Dh)
    if q3.stride(-1) != 1:
        q3 = q3.contiguous()
    if k3.stride(-1) != 1:
        k3 = k3.contiguous()
    qo, ko = _rope_qk_op(q3, k3, cos_R.float().contiguous(), sin_R.float().contiguous(), False)
    return qo.view(q.shape), ko.view(k.shape)
