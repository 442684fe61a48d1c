"""Fused ops for JEPA training, usable on any tensor.

Each op module holds its plain-torch reference `<op>_ref`, its fast kernels and the dispatch:

    import kernels
    y_TD = kernels.gather_tokens(x_BND, rows_T)
    o_THD = kernels.block_attention(q, k, v, cu_q, cu_k, max_seqlen_q=Lq, max_seqlen_k=Lk)
    kernels.ema_(target_params, source_params, momentum)   # or one flat buffer each
    y, dh = kernels.gelu_with_grad(h, g)                   # gelu(h), g * gelu'(h): one pass
    y = kernels.linear(x, weight, bias)                    # F.linear on the C++ loop (AVX-512)
    q, k = kernels.rope_qk(q, k, cos, sin)                 # rotary position embedding, both in one pass
    rgb_3HW = kernels.yuv_resized_crop(y_HW, u_hw, v_hw, box=(top, left, h, w), size=(64, 64))
    kernels.use_backend("torch")   # or JEPA_KERNEL_BACKEND=torch|cpp|triton|cuda
"""
from kernels._backend import BACKENDS, backend, current_backend, use_backend
from kernels.block_attention import block_attention, block_attention_ref, sdpa
from kernels.ema import ema_, ema_ref
from kernels.gelu import gelu_with_grad, gelu_with_grad_ref
from kernels.linear import linear, linear_grads, linear_ref
from kernels.rope import rope_qk, rope_ref
from kernels.gather import (gather_layer_norm, gather_layer_norm_ref, gather_tokens, gather_tokens_ref,
                            scatter_tokens, scatter_tokens_ref)
from kernels.yuv_resize import (normalize_u8, normalize_u8_ref, yuv_coeffs, yuv_resized_crop, yuv_resized_crop_frames,
                                yuv_resized_crop_ref)

__all__ = [
    "BACKENDS", "backend", "current_backend", "use_backend",
    "block_attention", "block_attention_ref", "sdpa",
    "ema_", "ema_ref",
    "gelu_with_grad", "gelu_with_grad_ref",
    "linear", "linear_grads", "linear_ref",
    "gather_layer_norm", "gather_layer_norm_ref",
    "rope_qk", "rope_ref",
    "gather_tokens", "gather_tokens_ref", "scatter_tokens", "scatter_tokens_ref",
    "normalize_u8", "normalize_u8_ref", "yuv_coeffs", "yuv_resized_crop", "yuv_resized_crop_frames",
    "yuv_resized_crop_ref",
]
