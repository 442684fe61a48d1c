"""Model FLOPs of one JEPA training step, from the model's shapes and the batch's masks, and the device
peak they are compared with (MFU = achieved model FLOP/s / peak).

    flops = jepa_step_flops(model, masks, batch_size)     # one optimizer step (one micro-batch)
    peak = device_peak_flops(device, dtype)               # FLOP/s: a spec table on known GPUs, else a measured GEMM
    mfu = flops / step_seconds / peak

What is counted (matmul FLOPs, 2 per multiply-add; norms, activations and the loss are left out):
- a transformer over packed sequences: 2 * tokens * (weights of its Linear layers) + 4 * dim * sum(L_i^2)
  per attention layer (QK^T and AV over each sequence of length L_i; every token attends to its own
  sequence only, as block_attention does);
- the patch embedding's conv: 2 * weights per token, over every token of the clip (both encoders embed all);
- the predictor: its input projection on the context tokens, its blocks on context + mask tokens but the
  last one's queries, projection and MLP on the mask (target) tokens only (rounded up as it runs them:
  engine.models.predictor.query_row_padding), its output projection on the mask tokens;
- the target encoder: forward only, all B*N tokens; the context encoder and the predictor: forward +
  backward = 3x forward (the usual 6 FLOPs per weight per token).
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn


def _weights(module: nn.Module, kinds=nn.Linear) -> int:
    """Weights of `module`'s layers of `kinds` (biases left out)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, kinds))


def transformer_flops(module: nn.Module, seqlens: list[int], attention: bool = True) -> float:
    """Forward matmul FLOPs of `module`'s Linear layers (and, with attention=True, of its attention)
    over packed sequences of lengths `seqlens`."""
    tokens = sum(seqlens)
    sq = sum(L * L for L in seqlens) if attention else 0
    widths = [m.out_features // 3 for name, m in module.named_modules()   # of each attention layer's fused qkv
              if isinstance(m, nn.Linear) and name.split(".")[-1] == "qkv"]
    return 2.0 * tokens * _weights(module) + sum(4.0 * d * sq for d in widths)


def jepa_forward_flops(model: nn.Module, masks, batch_size: int, attention: bool = True) -> dict[str, float]:
    """Forward matmul FLOPs of engine.jepa.JEPA's parts on `batch_size` clips with `masks`
    (engine.masks.BatchMasks: per-sample context / target index sets and the (context, target) pairs)."""
    enc, pred = model.encoder, model.predictor
    N, B = enc.num_patches, batch_size
    embed = 2.0 * B * N * _weights(enc, (nn.Conv2d, nn.Conv3d))   # the patch embedding
    ctx_lens = [int(s.numel()) for sets in masks.ctx for s in sets]
    pair_ctx = [int(masks.ctx[c][b].numel()) for c, _ in masks.pairs for b in range(B)]
    pair_tgt = [int(masks.tgt[m][b].numel()) for _, m in masks.pairs for b in range(B)]
    predictor = (2.0 * sum(pair_ctx) * pred.predictor_embed.weight.numel()
                 + _predictor_blocks_flops(pred.predictor_blocks, pair_ctx, pair_tgt, attention)
                 + 2.0 * sum(pair_tgt) * pred.predictor_proj.weight.numel())
    return {"target": embed + transformer_flops(enc, [N] * B, attention),
            "context": embed + transformer_flops(enc, ctx_lens, attention),
            "predictor": predictor}


def _predictor_blocks_flops(blocks: nn.ModuleList, ctx_lens: list[int], tgt_lens: list[int], attention: bool) -> float:
    """The predictor's blocks over sequences of context + target tokens, the last block's queries and
    per-row layers on the target rows alone (engine.models.predictor: its qkv still runs on every row)."""
    from engine.models.predictor import query_row_padding
    if not len(blocks):
        return 0.0
    seqs = [c + t for c, t in zip(ctx_lens, tgt_lens)]
    q_lens = list(tgt_lens)
    if q_lens:
        q_lens[-1] += query_row_padding(sum(q_lens))
    last = blocks[-1]
    w_qkv = last.attn.qkv.weight.numel()
    width = last.attn.qkv.out_features // 3
    last_flops = 2.0 * sum(seqs) * w_qkv + 2.0 * sum(q_lens) * (_weights(last) - w_qkv)
    if attention:
        last_flops += 4.0 * width * sum(q * L for q, L in zip(q_lens, seqs))
    return transformer_flops(blocks[:-1], seqs, attention) + last_flops


def jepa_step_flops(model: nn.Module, masks, batch_size: int) -> float:
    """Model FLOPs of one training step (one micro-batch): target forward + 3x (context + predictor).
    NaN for steps this count does not describe (the action-conditioned step: no mask sets)."""
    if not (hasattr(masks, "ctx") and hasattr(model.predictor, "predictor_blocks")):
        return math.nan
    f = jepa_forward_flops(model, masks, batch_size)
    return f["target"] + 3.0 * (f["context"] + f["predictor"])


# Dense peak FLOP/s from the vendors' data sheets (no sparsity), by a substring of the device name.
GPU_PEAK = {
    "H200": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12},
    "H100": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12},
    "A100": {torch.bfloat16: 312e12, torch.float16: 312e12, torch.float32: 19.5e12},
}
_measured: dict = {}


def measured_gemm_flops(device, dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 5) -> float:
    """The best FLOP/s of an n x n x n matmul on `device` (measured once per process and kept)."""
    key = (str(device), dtype)
    if key not in _measured:
        # Its own generator: the first measurement of a process must not move the global RNG, whose
        # draws (SIGReg's directions) a resumed run replays.
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
        best = float("inf")
        sync = (lambda: torch.cuda.synchronize(a.device)) if a.is_cuda else (lambda: None)
        for _ in range(repeats + 1):   # the first is a warm-up
            sync()
            t0 = time.perf_counter()
            torch.mm(a, b)
            sync()
            best = min(best, time.perf_counter() - t0)
        _measured[key] = 2.0 * n ** 3 / best
    return _measured[key]


def device_peak_flops(device, dtype: torch.dtype = torch.float32) -> tuple[float, str]:
    """(peak FLOP/s, where it comes from): the data-sheet number of a known GPU, else a measured GEMM."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAK.items():
            if key in name and dtype in peaks:
                return peaks[dtype], f"{key} data sheet, {str(dtype).replace('torch.', '')}"
    return measured_gemm_flops(device, dtype), f"measured {str(dtype).replace('torch.', '')} GEMM on {device.type}"


def peak_memory_mb(device) -> float:
    """Peak memory so far: allocated by torch on a GPU, the process's peak RSS on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
