"""Transformer pieces shared by the encoder and the predictor. Parameter names follow the reference
modules (qkv, proj, fc1/fc2[/fc3], norm1/norm2) so reference checkpoints load key for key.

Every block runs on one of two token layouts (`Tokens`):
- dense  [B, N, D]: every sample holds the same N tokens (the target encoder): batched SDPA;
- packed [T, D]: ragged sequences back to back with cu_seqlens (context, predictor): each sequence
  attends only within itself through `kernels.block_attention`; no padding, no dense T x T mask.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from kernels._ops import compute_dtype
from engine.models.rope import Rope3D


@dataclass
class QueryRows:
    """The rows a block's output is wanted for (a subset of its input rows, grouped by sequence as the
    input is): the block attends from these rows only and returns them alone, in this order."""
    rows: torch.Tensor          # int64 [Tq]: input rows, sequence by sequence
    cu_seqlens: torch.Tensor    # int32 [S+1], S as the input's sequences
    max_seqlen: int


@dataclass
class Tokens:
    """How the rows of x are grouped, and where each token sits in the grid (for RoPE)."""
    ids: torch.Tensor                        # grid ids: [B, N] or [N] (dense), [T] (packed)
    cu_seqlens: Optional[torch.Tensor] = None  # int32 [S+1]: packed layout when set
    max_seqlen: int = 0
    rope: Optional[tuple] = None             # (cos, sin) tables for ids, built once per forward
    frames: Optional[torch.Tensor] = None    # packed only: frame id per row; a row sees rows of frames <= its own

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None


def patch_tokens(x, weight, bias):
    """A conv with stride = kernel (patchify) as one GEMM over the patches: [B, C, (T,) H, W] -> [B, N, D],
    the conv's sums, tokens in its (T', H', W') order; sizes that do not divide are cropped as it does.
    oneDNN's conv runs 3-10x slower than the GEMM here in bf16 and its backward slower in fp32, and the
    GEMM's output is already token-major (a transposed conv output would carry its layout into the
    residual stream, every add keeping it and every LayerNorm copying it back)."""
    B, C = x.shape[:2]
    k = weight.shape[2:]                                        # (t,) p, p
    n = [size // kk for size, kk in zip(x.shape[2:], k)]        # whole patches per axis
    x = x[(slice(None), slice(None), *(slice(0, nn_ * kk) for nn_, kk in zip(n, k)))]
    x = x.reshape(B, C, *[d for nn_, kk in zip(n, k) for d in (nn_, kk)])   # (T', t, H', p, W', p)
    grid, inner = list(range(2, 2 + 2 * len(k), 2)), list(range(3, 3 + 2 * len(k), 2))
    x = x.permute(0, *grid, 1, *inner).reshape(-1, weight[0].numel())     # [B * N, C*(t)*p*p]
    return F.linear(x, weight.reshape(weight.shape[0], -1), bias).view(B, -1, weight.shape[0])   # one addmm


class PatchConv2d(nn.Conv2d):
    """Conv2d parameters (reference names and shapes; ZeRO-3 gathers them when this module runs) whose
    forward is patch_tokens: [B, C, H, W] -> [B, N, D]."""

    def forward(self, x):
        return patch_tokens(x, self.weight, self.bias)


class PatchConv3d(nn.Conv3d):
    """Conv3d parameters whose forward is patch_tokens: [B, C, T, H, W] -> [B, N, D]."""

    def forward(self, x):
        return patch_tokens(x, self.weight, self.bias)


class PatchEmbed(nn.Module):
    """Patchify: images [B, C, H, W] (2D) or videos [B, C, T, H, W] (3D tubelets) -> [B, N, D]."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3, tubelet_size: Optional[int] = None):
        super().__init__()
        if tubelet_size is None:
            self.proj = PatchConv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        else:
            k = (tubelet_size, patch_size, patch_size)
            self.proj = PatchConv3d(in_chans, embed_dim, kernel_size=k, stride=k)

    def forward(self, x):
        want = self.proj.weight.dim()
        if x.dim() != want:
            raise ValueError(f"PatchEmbed: expected a {want}-D input ({'[B,C,T,H,W]' if want == 5 else '[B,C,H,W]'}), "
                             f"got shape {tuple(x.shape)}")
        return self.proj(x)


class Linear(nn.Linear):
    """nn.Linear (its parameters, names and ZeRO-3 gathering) whose product runs on kernels.linear: the C++
    loop on AVX-512 CPUs in fp32, F.linear elsewhere."""

    def forward(self, x, residual=None):
        """x W^T + b, plus `residual` (the output's shape: a block's residual stream) where given: on the C++
        loop it is added as the product is stored (kernels.linear)."""
        return kernels.linear(x, self.weight, self.bias, residual)


class _SplitQKV(torch.autograd.Function):
    """q, k, v: the three [..., H, Dh] views of a fused projection's output [..., 3 H Dh], as unflatten and
    unbind take them. Backward: where the three gradients are already those slices of one buffer (the
    attention backward lays them out so: kernels.block_attention), that buffer is the input's gradient as it
    stands; otherwise they are stacked, as unbind's backward does."""

    @staticmethod
    def forward(ctx, qkv, heads: int):
        ctx.width = qkv.shape[-1] // 3
        return tuple(qkv.unflatten(-1, (3, heads, ctx.width // heads)).unbind(-3))

    @staticmethod
    def backward(ctx, dq, dk, dv):
        if _slices_of_one(dq, dk, dv, ctx.width):
            lead = dq.shape[:-2]
            return dq.as_strided((*lead, 3 * ctx.width), (*dq.stride()[:-2], 1), dq.storage_offset()), None
        return torch.stack([dq, dk, dv], dim=-3).flatten(-3), None


def _slices_of_one(dq, dk, dv, width: int) -> bool:
    """Whether dq, dk, dv [..., H, Dh] are the q, k, v slices of one [..., 3, H, Dh] buffer, rows of 3 * width."""
    if not (dq.shape == dk.shape == dv.shape and dq.dtype == dk.dtype == dv.dtype and dq.device == dk.device == dv.device
            and dq.stride() == dk.stride() == dv.stride() and dq.dim() >= 3):
        return False
    H, Dh = dq.shape[-2:]
    lead_rows = dq.shape[:-2].numel()
    if dq.stride()[-2:] != (Dh, 1) or lead_rows == 0 or _storage_ptr(dq) is None:
        return False
    if not (_storage_ptr(dq) == _storage_ptr(dk) == _storage_ptr(dv)
            and dk.storage_offset() == dq.storage_offset() + width
            and dv.storage_offset() == dq.storage_offset() + 2 * width):
        return False
    step = 3 * width   # the lead dims row-major over rows of 3 * width
    for size, stride in zip(reversed(dq.shape[:-2]), reversed(dq.stride()[:-2])):
        if size > 1 and stride != step:
            return False
        step *= size
    return True


def split_qkv(qkv, heads: int):
    """(q, k, v), each [..., heads, Dh], of a fused projection's output [..., 3 heads Dh] (_SplitQKV).
    Compiled graphs take unflatten and unbind themselves."""
    if torch.compiler.is_compiling() or not qkv.requires_grad:
        width = qkv.shape[-1] // 3
        return qkv.unflatten(-1, (3, heads, width // heads)).unbind(-3)
    return _SplitQKV.apply(qkv, heads)


class Attention(nn.Module):
    # False turns q and k one at a time the plain-torch way (kernels.rope_ref), as the reference does (for
    # benchmarks). Compiled graphs take those plain ops too: inductor fuses them with their neighbours.
    fused_rope = True

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_scale: Optional[float] = None,
                 rope: Optional[Rope3D] = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale  # None: 1/sqrt(head_dim), as SDPA's default
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = Linear(dim, dim)
        self.rope = rope

    def forward(self, x, tok: Tokens, out: Optional[QueryRows] = None, residual=None):
        """residual: added to the output (the projection's store: Linear.forward), rows as the output's."""
        lead = x.shape[:-1]                                         # (B, N) or (T,)
        q, k, v = split_qkv(self.qkv(x), self.num_heads)                 # [..., H, Dh]
        if self.rope is not None:
            cos, sin = tok.rope
            if self.fused_rope and not torch.compiler.is_compiling():
                q, k = kernels.rope_qk(q, k, cos, sin)
            else:
                q, k = kernels.rope_ref(q, cos, sin), kernels.rope_ref(k, cos, sin)
        if out is not None:   # queries from the wanted rows only (packed, no frame mask)
            q = q.index_select(0, out.rows)
            o = kernels.block_attention(q, k, v, out.cu_seqlens, tok.cu_seqlens, max_seqlen_q=out.max_seqlen,
                                        max_seqlen_k=tok.max_seqlen, scale=self.scale)
            return self.proj(o.reshape(q.shape[0], self.num_heads * self.head_dim), residual)
        if tok.packed:
            o = kernels.block_attention(q, k, v, tok.cu_seqlens, tok.cu_seqlens, max_seqlen_q=tok.max_seqlen,
                                        max_seqlen_k=tok.max_seqlen, scale=self.scale, block_causal=tok.frames)
        else:
            o = kernels.sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                             scale=self.scale).transpose(1, 2)
        return self.proj(o.reshape(*lead, self.num_heads * self.head_dim), residual)   # -1: ambiguous for no rows


class _GeluLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias, residual):
        # Under autocast the product runs in the autocast dtype, as F.linear would, and the backward (which
        # runs outside autocast) uses the same cast weight; the gradients return in each input's dtype.
        dev = h.device.type
        dtype = compute_dtype(h)
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        h = h.to(dtype)
        ctx.save_for_backward(h, w)
        ctx.has_bias = bias is not None
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        with torch.autocast(dev, enabled=False):
            return kernels.linear(F.gelu(h), w, b, residual)

    @staticmethod
    def backward(ctx, g):
        h, weight = ctx.saved_tensors
        g_out, g = g, g.to(h.dtype)
        g_RO = g.reshape(-1, g.shape[-1])
        d_weight = d_bias = d_h = None
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[0]:   # gelu(h) and gelu'(h) in one pass (g @ weight becomes d_h)
            a, d_h = kernels.gelu_with_grad(h, kernels.linear_grads(g, h, weight, need_w=False)[0])
        elif ctx.needs_input_grad[1]:
            a = F.gelu(h)
        if ctx.needs_input_grad[1]:   # the bias gradient in the same pass over g
            _, d_weight, d_bias = kernels.linear_grads(g, a, weight, need_x=False, need_b=need_b)
            d_weight = d_weight.to(ctx.dtypes[0])
        elif need_b:
            d_bias = g_RO.sum(0)
        if d_bias is not None:
            d_bias = d_bias.to(ctx.dtypes[1])
        return d_h, d_weight, d_bias, (g_out if ctx.needs_input_grad[3] else None)   # an add's gradient


class GeluLinear(nn.Linear):
    """linear(gelu(h)): an MLP's activation and output layer, keeping only h for the backward.

    Autograd would keep both h (for GELU's backward) and gelu(h) (for the weight gradient), the two
    largest activations of a block; the GELU is recomputed in the backward instead, in the same pass
    as GELU's own backward (kernels.gelu_with_grad). A Linear subclass, so its parameters keep the
    reference's names and ZeRO-3 gathers them when this module runs. Compiled graphs (which plan their
    own memory) take the plain ops."""

    # True where every input is the caller's own scratch (an MLP's fc1 output): without gradients the GELU
    # then runs in place, one pass over the block's widest activation instead of a new tensor.
    overwrites_input = False

    def forward(self, h, residual=None):
        """linear(gelu(h)), plus `residual` where given (added as the product is stored: kernels.linear)."""
        if torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return _GeluLinearFn.apply(h, self.weight, self.bias, residual)
        if self.overwrites_input and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return kernels.linear(torch.ops.aten.gelu_(h), self.weight, self.bias, residual)
        y = F.linear(F.gelu(h), self.weight, self.bias)
        return y if residual is None else residual + y


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Linear(dim, hidden)
        self.fc2 = GeluLinear(hidden, dim)   # GELU inside
        self.fc2.overwrites_input = True     # its input is fc1's output, used nowhere else

    def forward(self, x, residual=None):
        return self.fc2(self.fc1(x), residual)


class SwiGLU(nn.Module):
    """silu(fc1 x) * fc2 x -> fc3; `wide` shrinks the hidden size to 2/3 (rounded up to 8), as the reference."""

    def __init__(self, dim: int, hidden: int, wide: bool = True):
        super().__init__()
        if wide:
            hidden = (int(2 * hidden / 3) + 7) // 8 * 8
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(dim, hidden)
        self.fc3 = Linear(hidden, dim)

    def forward(self, x, residual=None):
        if not torch.is_grad_enabled() and not torch.compiler.is_compiling():   # in place: both are our own
            return self.fc3(F.silu(self.fc1(x), inplace=True).mul_(self.fc2(x)), residual)
        return self.fc3(F.silu(self.fc1(x)) * self.fc2(x), residual)


class _RecomputedNorm:
    """Saved-tensor hooks under which a saved view of a norm's output `y_TD` is kept as a recipe (the norm
    module and its input) and recomputed in the backward by calling the module again.

    The linear layer after a LayerNorm saves the norm's output for its weight gradient, while the norm's
    own backward keeps only its input (the residual stream, which the block keeps anyway): dropping that
    output saves a token's width per norm, two of a block's twelve widths. Calling the module again (not
    F.layer_norm on its parameters) recomputes the same values bit for bit and lets ZeRO-3 gather the
    norm's parameters in the backward as activation checkpointing does."""

    def __init__(self, norm: nn.Module, x, ptr: int, dtype):
        self.norm, self.x, self.ptr, self.dtype = norm, x, ptr, dtype

    def pack(self, t):
        if t.dtype == self.dtype and _storage_ptr(t) == self.ptr:
            return t.shape, t.stride(), t.storage_offset()   # the view to take of the recomputed output
        return t

    def unpack(self, saved):
        if isinstance(saved, torch.Tensor):
            return saved
        with torch.no_grad():
            return self.norm(self.x).as_strided(*saved)


def _storage_ptr(t) -> Optional[int]:
    """The address that identifies t's storage, or None where none does: torch.func's wrapped tensors have
    no storage, and empty tensors all sit at address 0."""
    try:
        return t.untyped_storage().data_ptr() or None
    except NotImplementedError:
        return None


def normed(norm: nn.Module, x, recompute: bool = True):
    """(norm(x), the saved-tensor hooks to run its consumer under): the hooks drop the output from what
    the consumer saves (`_RecomputedNorm`) when it would otherwise be kept, i.e. with gradients on, not
    while compiling (a compiled graph plans its own memory), and not under hooks already set (activation
    checkpointing or offloading, which decide what is kept themselves), nor under torch.func transforms."""
    y = norm(x)
    plain = (not recompute or not torch.is_grad_enabled() or torch.compiler.is_compiling()
             or torch._C._autograd._top_saved_tensors_default_hooks(False) is not None)
    ptr = None if plain else _storage_ptr(y)
    if ptr is None:
        return y, contextlib.nullcontext()
    r = _RecomputedNorm(norm, x, ptr, y.dtype)
    return y, torch.autograd.graph.saved_tensors_hooks(r.pack, r.unpack)


class Block(nn.Module):
    # False keeps the norms' outputs for the backward, as plain autograd (the reference's way, for benchmarks)
    recompute_norms = True

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, norm_eps: float = 1e-6, use_silu: bool = False,
                 wide_silu: bool = True, rope: Optional[Rope3D] = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, rope=rope)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = SwiGLU(dim, hidden, wide_silu) if use_silu else MLP(dim, hidden)

    def forward(self, x, tok: Tokens, out: Optional[QueryRows] = None):
        """out: return only these rows (packed input without a frame mask): every row still serves as a
        key and value, but the queries, the projection and the MLP run on the wanted rows alone."""
        y, hooks = normed(self.norm1, x, self.recompute_norms)
        r = x.index_select(0, out.rows) if out is not None else x
        with hooks:   # x + attn and x + mlp: each residual added as its projection's rows are stored
            x = self.attn(y, tok, out, residual=r) if out is not None else self.attn(y, tok, residual=r)
        y, hooks = normed(self.norm2, x, self.recompute_norms)
        with hooks:
            return self.mlp(y, residual=x)


def run_blocks(blocks: nn.ModuleList, x, tok: Tokens, checkpoint: bool, out: Optional[QueryRows] = None):
    """Apply the blocks; with activation checkpointing each block's activations are recomputed in
    the backward instead of kept (non-reentrant, so the non-tensor `tok` passes through). out: the last
    block returns only these rows (Block.forward)."""
    last = len(blocks) - 1
    for i, blk in enumerate(blocks):
        args = (x, tok) if out is None or i < last else (x, tok, out)
        if checkpoint and torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint(blk, *args, use_reentrant=False)
        else:
            x = blk(*args)
    return x


def compile_blocks(module: nn.Module) -> int:
    """torch.compile every Block of `module` in place (model.compile_model): dynamic shapes, so a new
    packed length or batch reuses the compiled graph instead of compiling again (one graph per block
    width and grad mode). Returns the number of blocks compiled."""
    blocks = [m for m in module.modules() if isinstance(m, Block)]
    for blk in blocks:
        blk.compile(dynamic=True)
    return len(blocks)


def init_reference_weights(module: nn.Module, blocks: nn.ModuleList, std: float = 0.02) -> None:
    """The reference init: truncated normal (std, cut at +-2) for Linear and conv weights, zero biases,
    unit LayerNorms, then each block's output projections divided by sqrt(2 * layer)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for layer_id, blk in enumerate(blocks, start=1):
            blk.attn.proj.weight.div_((2.0 * layer_id) ** 0.5)
            # fc2 even for SwiGLU (where it is an input projection): the reference does so.
            blk.mlp.fc2.weight.div_((2.0 * layer_id) ** 0.5)


class PredictorTrunk(nn.Module):
    """What the JEPA predictor and the action-conditioned one share, under the reference's names
    (predictor_blocks, predictor_norm, predictor_proj) so its checkpoints load strictly: the block stack
    over the tokens, then a norm and a projection back to the encoder's width. A subclass registers its
    own input layers first and calls add_trunk last, so parameters keep the reference's order (the
    optimizer state's layout follows it)."""

    def add_trunk(self, width: int, out_dim: int, depth: int, num_heads: int, mlp_ratio: float, qkv_bias: bool,
                  norm_eps: float, use_silu: bool, wide_silu: bool, rope: Optional[Rope3D], init_std: float,
                  use_activation_checkpointing: bool) -> None:
        self.use_activation_checkpointing = use_activation_checkpointing
        self.predictor_blocks = nn.ModuleList([
            Block(width, num_heads, mlp_ratio, qkv_bias, None, norm_eps, use_silu, wide_silu, rope)
            for _ in range(depth)])
        self.predictor_norm = nn.LayerNorm(width, eps=norm_eps)
        self.predictor_proj = Linear(width, out_dim, bias=True)
        init_reference_weights(self, self.predictor_blocks, init_std)

    def run_trunk(self, x_TP, tok: Tokens, out: Optional[QueryRows] = None) -> torch.Tensor:
        return run_blocks(self.predictor_blocks, x_TP, tok, self.use_activation_checkpointing, out)

    def project(self, x_P) -> torch.Tensor:
        """Norm and projection, per token: run them on the output rows only."""
        return self.predictor_proj(self.predictor_norm(x_P))
