"""End to end: the JEPA training step three ways, same model, clips and mask generators, alternating rounds.

    python bench/bench_e2e.py [--config configs/tiny_cpu.yaml] [--set model.depth=12 ...] [--rounds 5]
                              [--steps 3] [--threads 1] [--out bench/results/e2e_cpu.csv]
                              [--modes reference_style,ragged,ragged:bfloat16]

- `reference_style`: what the reference training loop does: masks truncated to the batch minimum,
  one encoder pass and one predictor pass per mask config on rectangular [B, K, D] tensors (batched
  dense SDPA), targets gathered with a repeated [B, K, D] index, a per-parameter EMA loop.
- `compat`: the engine's step on the same truncated masks (packed, one context pass for all configs).
- `ragged`: the engine's step training every token the masks keep (the default).
- `MODE:bfloat16`: that step with its forward under CPU bf16 autocast, as the trainers run `meta.dtype:
  bfloat16` (fp32 weights, AdamW and EMA target). The reference train loop's autocast is
  `torch.cuda.amp.autocast`: on a CPU it trains in fp32 whatever its config says.
- `reference_code` (with `--reference-repo DIR`, a checkout of facebookresearch/jepa; nothing of it is in
  this repository): that code's own step, as its V-JEPA train loop runs one: its `init_video_model`,
  `init_opt` (AdamW, lr and wd schedules), `MaskCollator` with the config's mask settings,
  `apply_masks`, the MultiMask wrappers, its loss and variance term, `grad_logger` and `adamw_logger`,
  and its per-parameter EMA loop (no gradient clipping: that starts after the warm-up epochs). A checkout
  of facebookresearch/vjepa2 instead runs V-JEPA 2's step (RoPE, SwiGLU as the config says): its
  multi-length MaskCollator and MultiSeq wrappers, its loss, its _foreach EMA (its modules import timm).

Per mode: seconds per step (forward, backward, AdamW, EMA; median of the rounds' medians, wall clock
and process CPU time), samples/s and trained (context + target) tokens/s from CPU time (the samples/s
ratio to the first mode also from wall time, `wall_samples_per_s_vs_first`), GFLOP per step
(mean of --steps steps, torch.utils.flop_counter; attention counted as 4 L_q L_k Dh per head forward,
2.5x that backward), their share of the peak GEMM rate (a 2048x1024x2048 fp32 matmul timed in every
round; a bf16 row's share is of the bf16 GEMM rate, timed alike), how far a process running only that
mode grows its peak resident set over its built model in --steps steps (activations, gradients, AdamW
state; VmHWM, Linux), the peak of the tensors one step allocates (`step_tensor_peak_mb`: the profiler's
allocation records, without the heap's kept free blocks), and the profile split of one step (GEMM /
attention / other, self CPU time).
Ratios come from alternating rounds in one process, so load from other processes on the machine shifts
both sides alike; CPU time is robust to waiting for a core, wall time is not. Random clips: the data
path is measured in bench/bench_loader.py.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from engine.builders import build_jepa, build_mask_sampler  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.models.layers import Attention, Block, GeluLinear, Tokens, run_blocks  # noqa: E402
from engine.core.io import atomic_write_csv  # noqa: E402
from engine.core.step import adamw, autocast  # noqa: E402

MODES = ("reference_style", "compat", "ragged")
REFERENCE_CODE = "reference_code"     # needs --reference-repo
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
            "jepa_cpp::linear_fwd", "jepa_cpp::linear_dx", "jepa_cpp::linear_dw"}   # kernels.linear


def parse_mode(spec: str) -> tuple[str, torch.dtype]:
    """'ragged' or 'ragged:bfloat16' -> (step, autocast dtype)."""
    name, _, dtype = spec.partition(":")
    if name == REFERENCE_CODE and dtype:
        raise ValueError(f"mode {spec!r}: the reference loop trains in fp32 on a CPU; use {REFERENCE_CODE}")
    if name not in (*MODES, REFERENCE_CODE) or (dtype and dtype not in DTYPES):
        raise ValueError(f"mode {spec!r}: want one of {', '.join(MODES)}, optionally ':bfloat16', "
                         f"or {REFERENCE_CODE} (with --reference-repo)")
    return name, DTYPES[dtype or "float32"]


# -- the reference loop's way, on the engine's modules --------------------------------------------------
def dense_predict(pred, z_BKD, ctx_BK, tgt_BK, mask_index: int):
    """The predictor on rectangular masks: [context | mask tokens] per sample, dense attention."""
    x = pred.predictor_embed(z_BKD)
    B, Kt = tgt_BK.shape
    tokens = pred._mask_token_params()
    m = tokens[mask_index % len(tokens)].to(x.dtype).expand(B, Kt, -1)
    if pred.predictor_pos_embed is not None:
        pos_ND = pred.predictor_pos_embed[0].to(x.dtype)
        x, m = x + pos_ND[ctx_BK], m + pos_ND[tgt_BK]
    x = torch.cat([x, m], 1)
    ids = torch.cat([ctx_BK, tgt_BK], 1)
    tok = Tokens(ids, rope=pred.rope.tables(ids) if pred.rope is not None else None)
    x = run_blocks(pred.predictor_blocks, x, tok, pred.use_activation_checkpointing)
    return pred.predictor_proj(pred.predictor_norm(x[:, ctx_BK.shape[1]:]))


def stacked(masks):
    """(ctx, tgt) as lists of [B, K] tensors: the reference collator's form (compat-mode masks)."""
    return [torch.stack(sets) for sets in masks.ctx], [torch.stack(sets) for sets in masks.tgt]


def reference_layout(x_BND):
    """The reference's patch embedding returns the conv output transposed ([B, D, N] memory as [B, N, D]),
    and its target encoder runs its blocks on that layout: the same values, laid out as it does."""
    return x_BND.transpose(1, 2).contiguous().transpose(1, 2)


def reference_style_loss(model, x, masks, loss_exp: float = 1.0):
    """The reference objective the reference way (masks: rectangular BatchMasks, compat mode)."""
    ctx, tgt = stacked(masks)
    enc, tgt_enc = model.encoder, model.target_encoder
    with torch.no_grad():
        h = tgt_enc.forward_dense(reference_layout(tgt_enc.embed(x)))
        h = F.layer_norm(h, (h.size(-1),))
        hs = [torch.gather(h, 1, m_BK.unsqueeze(-1).repeat(1, 1, h.size(-1))) for m_BK in tgt]
    loss = 0.0
    for (c, m), i in zip(masks.pairs, masks.mask_index):
        x_BND = reference_layout(enc.embed(x))   # the reference re-embeds the clip for every mask config
        z = torch.gather(x_BND, 1, ctx[c].unsqueeze(-1).repeat(1, 1, x_BND.size(-1)))
        z = enc.norm(run_blocks(enc.blocks, z, Tokens(ctx[c], rope=enc.rope.tables(ctx[c]) if enc.rope else None),
                                enc.use_activation_checkpointing))
        p = dense_predict(model.predictor, z, ctx[c], tgt[m], i)
        loss = loss + torch.mean(torch.abs(p - hs[m]) ** loss_exp) / loss_exp
    return loss / len(masks.pairs)


def reference_blocks(model) -> None:
    """The reference's blocks keep, for the backward, each LayerNorm's output (for the next linear layer)
    and both fc1's output and its GELU (autograd through nn.GELU and nn.Linear): the reference_style
    model's blocks keep their norms' outputs and its GeluLinear layers run those plain ops. With RoPE, q and k
    are turned one at a time by the plain ops (kernels.rope_ref), as V-JEPA 2's attention does."""
    def plain(self, h, residual=None):   # the block's residual add a separate op, as the reference's
        y = F.linear(F.gelu(h), self.weight, self.bias)
        return y if residual is None else residual + y
    for m in model.modules():
        if isinstance(m, GeluLinear):
            m.forward = types.MethodType(plain, m)
        if isinstance(m, Block):
            m.recompute_norms = False
        if isinstance(m, Attention):
            m.fused_rope = False


def per_parameter_ema(model, m: float) -> None:
    with torch.no_grad():
        for q, k in zip(model.encoder.parameters(), model.target_encoder.parameters()):
            k.mul_(m).add_((1.0 - m) * q.detach())


# -- one mode -------------------------------------------------------------------------------------------
class Mode:
    def __init__(self, spec: str, cfg_path, overrides, seed: int = 0):
        name, self.dtype = parse_mode(spec)
        self.spec = spec
        self.name = name
        mask_mode = "ragged" if name == "ragged" else "compat"
        self.cfg = load_config(cfg_path, [*overrides, f"meta.mask_mode={mask_mode}"])
        torch.manual_seed(seed)
        self.model = build_jepa(self.cfg)
        if name == "reference_style":
            reference_blocks(self.model)
        self.sampler = build_mask_sampler(self.cfg)
        params = [p for p in self.model.parameters() if p.requires_grad]
        # the engine's trainers use the fused AdamW; the reference loop torch's default (a loop per parameter)
        self.opt = torch.optim.AdamW(params, lr=1e-4) if name == "reference_style" else adamw(params, lr=1e-4)
        self.rng = np.random.default_rng(seed)
        self.B = self.cfg.data.batch_size
        self.wall, self.cpu, self.tokens = [], [], []

    def step(self, x) -> int:
        masks = self.sampler.sample(self.B, self.rng)
        with autocast(self.dtype, x.device):
            if self.name == "reference_style":
                loss = reference_style_loss(self.model, x, masks, self.model.loss_exp)
                ctx, tgt = stacked(masks)
                tokens = sum(int(ctx[c].numel() + tgt[m].numel()) for c, m in masks.pairs)
            else:
                loss, info = self.model(x, masks)
                tokens = info["ctx_tokens"] + info["tgt_tokens"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.name == "reference_style":
            per_parameter_ema(self.model, 0.996)
        else:
            self.model.update_target(0.996)
        float(loss.detach())
        return tokens


class ReferenceCode:
    """The reference's own V-JEPA step, imported from a checkout (`repo`) of facebookresearch/jepa or of
    facebookresearch/vjepa2 (told apart by their mask collators), built from the same config as the engine's
    modes: the calls its train loop makes for one step, in its order."""

    def __init__(self, cfg_path, overrides, repo, seed: int = 0):
        import copy
        self.spec = self.name = REFERENCE_CODE
        self.dtype = torch.float32
        self.cfg = cfg = load_config(cfg_path, [*overrides, "meta.mask_mode=compat"])
        d, md, o = cfg.data, cfg.model, cfg.optimization
        if cfg.app != "vjepa" or cfg.is_image:
            raise SystemExit(f"--modes {REFERENCE_CODE}: runs the reference's V-JEPA step; the config is app "
                             f"{cfg.app!r}{' on images' if cfg.is_image else ''}")
        extra = {k: getattr(cfg.loss, k) for k in ("std_coeff", "cov_coeff", "sigreg_coeff") if getattr(cfg.loss, k)}
        if extra:
            raise SystemExit(f"--modes {REFERENCE_CODE}: the reference objective has no "
                             f"{', '.join(f'loss.{k}' for k in extra)}; set them to 0 for every mode")
        from engine.models.vit import VIT_SIZES
        size = VIT_SIZES[md.model_name]

        def by_name(key, want, why=""):
            if getattr(md, key) not in (None, want):
                raise SystemExit(f"--modes {REFERENCE_CODE}: model.{key}={getattr(md, key)}, but the reference builds "
                                 f"{md.model_name} by name ({key} {want}{why})")
        for key in ("depth", "embed_dim", "num_heads"):
            by_name(key, size[key])
        ref = _import_reference(repo)
        self.v2 = ref["kind"] == "vjepa2"
        if not self.v2:
            by_name("pred_num_heads", size["num_heads"], ", its predictor with the encoder's heads")
            v2_only = [k for k in ("use_rope", "use_silu", "use_pred_silu") if getattr(md, k)]
            if v2_only:
                raise SystemExit(f"--modes {REFERENCE_CODE}: {', '.join(f'model.{k}' for k in v2_only)} is V-JEPA "
                                 f"2's; facebookresearch/jepa has none: pass a checkout of facebookresearch/vjepa2")
        torch.manual_seed(seed)
        common = dict(device=torch.device("cpu"), patch_size=d.patch_size, tubelet_size=d.tubelet_size,
                      model_name=md.model_name, crop_size=d.crop_size, pred_depth=md.pred_depth,
                      pred_embed_dim=md.pred_embed_dim, uniform_power=md.uniform_power,
                      use_mask_tokens=md.use_mask_tokens, num_mask_tokens=len(cfg.mask),
                      zero_init_mask_tokens=md.zero_init_mask_tokens, use_sdpa=cfg.meta.use_sdpa)
        schedule = dict(wd=o.weight_decay, final_wd=o.final_weight_decay, start_lr=o.start_lr, ref_lr=o.lr,
                        final_lr=o.final_lr, iterations_per_epoch=o.ipe or 100, warmup=o.warmup,
                        num_epochs=o.epochs, ipe_scale=o.ipe_scale, betas=tuple(o.betas), eps=o.eps)
        masks = [{"aspect_ratio": m.aspect_ratio, "num_blocks": m.num_blocks, "spatial_scale": m.spatial_scale,
                  "temporal_scale": m.temporal_scale, "max_temporal_keep": m.max_temporal_keep,
                  "max_keep": m.max_keep} for m in cfg.mask]
        grid = dict(crop_size=d.crop_size, patch_size=d.patch_size, tubelet_size=d.tubelet_size)
        if self.v2:   # one clip length (frames per clip) here, so its mask tokens are one per mask config
            self.encoder, self.predictor = ref["init_video_model"](
                max_num_frames=cfg.frames_per_clip, pred_num_heads=md.pred_num_heads, use_rope=md.use_rope,
                use_silu=md.use_silu, use_pred_silu=md.use_pred_silu, wide_silu=md.wide_silu, **common)
            self.opt, _, self.scheduler, self.wd_scheduler = ref["init_opt"](
                is_anneal=False, encoder=self.encoder, predictor=self.predictor, **schedule)
            self.collator = ref["MaskCollator"](cfgs_mask=masks, dataset_fpcs=[cfg.frames_per_clip], **grid)
        else:
            self.encoder, self.predictor = ref["init_video_model"](num_frames=cfg.frames_per_clip, **common)
            self.opt, _, self.scheduler, self.wd_scheduler = ref["init_opt"](
                encoder=self.encoder, predictor=self.predictor, **schedule)
            self.collator = ref["MaskCollator"](masks, num_frames=cfg.frames_per_clip, **grid)
        self.target_encoder = copy.deepcopy(self.encoder)
        for p in self.target_encoder.parameters():
            p.requires_grad = False
        self.ref = ref
        self.loss_exp, self.reg_coeff = cfg.loss.loss_exp, cfg.loss.reg_coeff
        self.B = d.batch_size
        self.wall, self.cpu, self.tokens = [], [], []

    def step(self, x) -> int:
        return self._step_v2(x) if self.v2 else self._step_v1(x)

    def _step_v1(self, x) -> int:
        _, masks_enc, masks_pred = self.collator([0] * self.B)
        self.scheduler.step()
        self.wd_scheduler.step()
        with torch.no_grad():
            h = self.target_encoder(x)
            h = F.layer_norm(h, (h.size(-1),))
            h = self.ref["apply_masks"](h, masks_pred, concat=False)
        z = self.predictor(self.encoder(x, masks_enc), h, masks_enc, masks_pred)
        loss = 0.0
        for zi, hi in zip(z, h):
            loss = loss + torch.mean(torch.abs(zi - hi) ** self.loss_exp) / self.loss_exp
        loss = loss / len(masks_pred)
        pstd = sum(torch.sqrt(zi.var(dim=1) + 0.0001) for zi in z) / len(z)
        loss = loss + self.reg_coeff * torch.mean(F.relu(1.0 - pstd))
        loss.backward()
        self.opt.step()
        self.ref["grad_logger"](self.encoder.named_parameters())
        self.ref["grad_logger"](self.predictor.named_parameters())
        self.opt.zero_grad()
        self.ref["adamw_logger"](self.opt)
        with torch.no_grad():
            m = 0.996
            for q, k in zip(self.encoder.parameters(), self.target_encoder.parameters()):
                k.data.mul_(m).add_((1.0 - m) * q.detach().data)
        float(loss.detach())
        return sum(int(e.numel() + p.numel()) for e, p in zip(masks_enc, masks_pred))

    def _step_v2(self, x) -> int:
        """facebookresearch/vjepa2's train step: clips grouped by length (one group here), the MultiSeq
        wrappers, its per-mask L1 loss, no variance term or loggers, a _foreach EMA."""
        T = self.cfg.frames_per_clip
        sample = self.collator([([x[b]], 0, [np.arange(T)]) for b in range(self.B)])
        clips = [udata[0][0] for udata, _, _ in sample]
        masks_enc = [me for _, me, _ in sample]
        masks_pred = [mp for _, _, mp in sample]
        self.scheduler.step()
        self.wd_scheduler.step()
        with torch.no_grad():
            h = [F.layer_norm(hi, (hi.size(-1),)) for hi in self.target_encoder(clips)]
        z = self.predictor(self.encoder(clips, masks_enc), masks_enc, masks_pred)
        h = [self.ref["apply_masks"](hi, mi, concat=False) for hi, mi in zip(h, masks_pred)]
        loss, n = 0.0, 0
        for zi, hi in zip(z, h):
            for zij, hij in zip(zi, hi):
                loss = loss + torch.mean(torch.abs(zij - hij) ** self.loss_exp) / self.loss_exp
                n += 1
        loss = loss / n
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        with torch.no_grad():
            m = 0.996
            params_k, params_q = list(self.target_encoder.parameters()), list(self.encoder.parameters())
            torch._foreach_mul_(params_k, m)
            torch._foreach_add_(params_k, params_q, alpha=1 - m)
        float(loss.detach())
        return sum(int(e.numel() + p.numel()) for me, mp in zip(masks_enc, masks_pred) for e, p in zip(me, mp))


def _import_reference(repo) -> dict:
    """The reference's functions from a checkout of facebookresearch/jepa or facebookresearch/vjepa2 (their
    top-level packages `src` and `app` are imported from `repo` alone)."""
    repo = Path(repo).resolve()
    v1 = (repo / "src" / "masks" / "multiblock3d.py").is_file()
    v2 = (repo / "src" / "masks" / "multiseq_multiblock3d.py").is_file()
    if not (repo / "app" / "vjepa" / "utils.py").is_file() or not (v1 or v2):
        raise SystemExit(f"--reference-repo {repo}: not a checkout of facebookresearch/jepa or facebookresearch/vjepa2 "
                         f"(app/vjepa/utils.py and src/masks/multiblock3d.py or multiseq_multiblock3d.py are missing)")
    sys.path.insert(0, str(repo))
    try:
        from app.vjepa.utils import init_opt, init_video_model
        from src.masks.utils import apply_masks
        if v2:
            from src.masks.multiseq_multiblock3d import MaskCollator
            extra = {"kind": "vjepa2"}
        else:
            from src.masks.multiblock3d import MaskCollator
            from src.utils.logging import adamw_logger, grad_logger
            extra = {"kind": "jepa", "grad_logger": grad_logger, "adamw_logger": adamw_logger}
    finally:
        sys.path.remove(str(repo))
    return {"init_video_model": init_video_model, "init_opt": init_opt, "MaskCollator": MaskCollator,
            "apply_masks": apply_masks, **extra}


def make_mode(spec: str, cfg_path, overrides, reference_repo=None):
    if spec == REFERENCE_CODE:
        if reference_repo is None:
            raise SystemExit(f"--modes {REFERENCE_CODE} needs --reference-repo DIR (a checkout of facebookresearch/jepa "
                             f"or facebookresearch/vjepa2)")
        return ReferenceCode(cfg_path, overrides, reference_repo)
    return Mode(spec, cfg_path, overrides)


def _status_kb(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def measure_step_memory(cfg_path, overrides, mode: str, steps: int = 3, reference_repo=None) -> float:
    """MB the process's peak resident set grows over the built model during `steps` steps (activations,
    gradients, optimizer state and allocator slack). A process of its own per mode: freed memory that
    the allocator keeps would otherwise hide the next mode's peak."""
    m = make_mode(mode, cfg_path, overrides, reference_repo)
    cfg = m.cfg
    x = torch.randn(cfg.data.batch_size, 3, cfg.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
    rss = _status_kb("VmRSS")
    for _ in range(steps):
        m.step(x)
    return (_status_kb("VmHWM") - rss) / 1024


def step_tensor_peak_mb(mode: Mode, x, steps: int = 3) -> float:
    """MB of tensors a step holds at once beyond what it started with (activations, gradients and every
    temporary; what a GPU's caching allocator reports as max_memory_allocated), the mean over `steps`
    steps. Counted from the profiler's allocation records (torch's memory profiler reads the same tree), so
    the heap's kept free blocks, which the resident-set figure includes, are not. Frees of tensors made
    before the step (the last step's gradients, dropped by zero_grad) are not recorded: the step's new
    gradients count in full, alike in every mode."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    def allocations(node, out):
        if node.typed[0] == _EventType.Allocation:
            out.append((node.start_time_ns, node.typed[1].alloc_size))
        for child in node.children:
            allocations(child, out)

    peaks = []
    for _ in range(steps):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            mode.step(x)
        events = []
        for root in prof.profiler.kineto_results.experimental_event_tree():
            allocations(root, events)
        live = peak = 0
        for _, size in sorted(events):
            live += size
            peak = max(peak, live)
        peaks.append(peak / 2**20)
    return float(np.mean(peaks))


def step_peak_mb(cfg_path, overrides, mode: str, steps: int, reference_repo=None) -> float:
    import json
    import subprocess
    cmd = [sys.executable, __file__, "--config", str(cfg_path), "--memory-of", mode, "--steps", str(steps),
           "--threads", str(torch.get_num_threads()), *[a for o in overrides for a in ("--set", o)],
           *(["--reference-repo", str(reference_repo)] if reference_repo else [])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return round(json.loads(out.strip().splitlines()[-1])["step_peak_mb"], 1)


def peak_gemm_gflops(n: int = 3, dtype=torch.float32) -> float:
    a, b = torch.randn(2048, 1024, dtype=dtype), torch.randn(1024, 2048, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(n))
    return 2 * 2048 * 1024 * 2048 / best / 1e9


def _timed(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


# -- FLOPs: the flop counter knows the GEMMs; attention on CPU it is told here ------------------------------
def _attn_flops(cu_q, cu_k, H, D) -> int:
    lq, lk = (cu_q[1:] - cu_q[:-1]).long(), (cu_k[1:] - cu_k[:-1]).long()
    return int(4 * (lq * lk).sum()) * H * D


def register_attention_flops():
    from torch.utils.flop_counter import register_flop_formula
    aten = torch.ops.aten

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _sdpa_fwd(q_shape, k_shape, *args, **kwargs) -> int:
        B, H, Lq, D = q_shape
        return 4 * B * H * Lq * k_shape[2] * D

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _sdpa_bwd(grad_out_shape, q_shape, k_shape, *args, **kwargs) -> int:
        B, H, Lq, D = q_shape
        return 10 * B * H * Lq * k_shape[2] * D

    @register_flop_formula(torch.ops.jepa.block_attention_fwd, get_raw=True)
    def _ba_fwd(q, k, v, cu_q, cu_k, *args, out_val=None, **kwargs) -> int:
        return _attn_flops(cu_q, cu_k, q.shape[1], q.shape[2])

    @register_flop_formula(torch.ops.jepa.block_attention_bwd, get_raw=True)
    def _ba_bwd(dout, q, k, v, out, lse, cu_q, cu_k, *args, out_val=None, **kwargs) -> int:
        return _attn_flops(cu_q, cu_k, q.shape[1], q.shape[2]) * 5 // 2


def step_gflops(mode: Mode, x, steps: int = 3) -> float:
    """GFLOP per step, the mean over `steps` steps (truncated masks change length from batch to batch)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        for _ in range(steps):
            mode.step(x)
    return fc.get_total_flops() / 1e9 / steps


def profile_split(mode: Mode, x, steps: int = 1) -> dict:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            mode.step(x)
    split = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    for ev in prof.key_averages():
        kind = "gemm" if ev.key in GEMM_OPS else \
            "attention" if ("scaled_dot_product" in ev.key or "block_attention" in ev.key) else "other"
        split[kind] += ev.self_cpu_time_total
    total = sum(split.values()) or 1.0
    return {k: v / total for k, v in split.items()}


def run(cfg_path, overrides, rounds: int, steps: int, modes=MODES, profile: bool = True,
        reference_repo=None) -> list[dict]:
    ms = [make_mode(name, cfg_path, overrides, reference_repo) for name in modes]
    cfg = ms[0].cfg
    x = torch.randn(cfg.data.batch_size, 3, cfg.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
    for m in ms:   # warm-up, outside the rounds
        for _ in range(2):
            m.step(x)
    dtypes = sorted({m.dtype for m in ms}, key=str)
    peaks = {dt: [] for dt in dtypes}
    for _ in range(rounds):
        for dt in dtypes:
            peaks[dt].append(peak_gemm_gflops(dtype=dt))
        for m in ms:
            wall, cpu = [], []
            for _ in range(steps):
                t0, c0 = time.perf_counter(), time.process_time()
                m.tokens.append(m.step(x))
                cpu.append(time.process_time() - c0)
                wall.append(time.perf_counter() - t0)
            m.wall.append(float(np.median(wall)))
            m.cpu.append(float(np.median(cpu)))
    register_attention_flops()
    rows = []
    for m in ms:
        peak = float(np.median(peaks[m.dtype]))
        cpu_s = float(np.median(m.cpu))
        tok = float(np.mean(m.tokens))
        gflop = step_gflops(m, x, steps)
        row = {"mode": m.spec, "s_per_step_wall": round(float(np.median(m.wall)), 4),
               "s_per_step_cpu": round(cpu_s, 4),
               "cpu_spread": f"{min(m.cpu):.3f}-{max(m.cpu):.3f}",
               "samples_per_s": round(m.B / cpu_s, 3), "tokens_per_step": round(tok, 1),
               "tokens_per_s": round(tok / cpu_s, 1), "gflop_per_step": round(gflop, 2),
               "gflops": round(gflop / cpu_s, 1), "peak_gemm_gflops": round(peak, 1),
               "share_of_peak_gemm": round(gflop / cpu_s / peak, 3),
               "step_peak_mb": step_peak_mb(cfg_path, overrides, m.spec, steps, reference_repo),
               "step_tensor_peak_mb": round(step_tensor_peak_mb(m, x, max(steps, 3)), 1)}
        if profile:
            row.update({f"profile_{k}": round(v, 3) for k, v in profile_split(m, x).items()})
        rows.append(row)
    base = rows[0]
    for r in rows:
        r["samples_per_s_vs_first"] = round(r["samples_per_s"] / base["samples_per_s"], 3)
        r["tokens_per_s_vs_first"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
        # per round, so a load change between rounds cancels: first mode's CPU time / this mode's
        r["samples_per_s_vs_first_per_round"] = " ".join(
            f"{a / b:.3f}" for a, b in zip(ms[0].cpu, ms[rows.index(r)].cpu))
        # the same from wall time: what a quiet machine's user sees (a loaded one's waits included)
        r["wall_samples_per_s_vs_first"] = round(base["s_per_step_wall"] / r["s_per_step_wall"], 3)
        r["wall_samples_per_s_vs_first_per_round"] = " ".join(
            f"{a / b:.3f}" for a, b in zip(ms[0].wall, ms[rows.index(r)].wall))
    return rows


def _commit() -> str:
    """The code the rows measure: the short hash of HEAD, '+' when the work tree differs from it."""
    import subprocess
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("+" if dirty else "")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny_cpu.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per mode per round")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--reference-repo", metavar="DIR",
                    help=f"a checkout of facebookresearch/jepa or facebookresearch/vjepa2, for --modes {REFERENCE_CODE}")
    ap.add_argument("--memory-of", help=argparse.SUPPRESS)   # the per-mode memory child
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "e2e_cpu.csv"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:
        import json
        print(json.dumps({"step_peak_mb": measure_step_memory(args.config, args.set, args.memory_of, args.steps,
                                                              args.reference_repo)}))
        return
    modes = tuple(m for m in args.modes.split(",") if m)
    for spec in modes:
        try:
            parse_mode(spec)
        except ValueError as e:
            ap.error(f"--modes: {e}")
    if REFERENCE_CODE in modes and not args.reference_repo:
        ap.error(f"--modes {REFERENCE_CODE} needs --reference-repo DIR (a checkout of facebookresearch/jepa or "
                 f"facebookresearch/vjepa2)")
    rows = run(args.config, args.set, args.rounds, args.steps, modes, profile=not args.no_profile,
               reference_repo=args.reference_repo)
    for r in rows:
        r["threads"] = torch.get_num_threads()
        r["load_avg_1min_at_end"] = round(os.getloadavg()[0], 1)   # other processes on the machine
        r["overrides"] = " ".join(args.set)
        r["commit"] = _commit()
    atomic_write_csv(args.out, rows)
    print(f"{'mode':20} {'cpu s/step':>10} {'samples/s':>9} {'tokens/step':>11} {'tokens/s':>9} {'GFLOP':>7} "
          f"{'% peak':>7} {'peak MB':>8} {'tensor MB':>9} {'vs first':>8} {'(wall)':>7}")
    for r in rows:
        print(f"{r['mode']:20} {r['s_per_step_cpu']:10.3f} {r['samples_per_s']:9.2f} {r['tokens_per_step']:11.0f} "
              f"{r['tokens_per_s']:9.0f} {r['gflop_per_step']:7.1f} {r['share_of_peak_gemm']:7.1%} "
              f"{r['step_peak_mb']:8.0f} {r['step_tensor_peak_mb']:9.0f} {r['samples_per_s_vs_first']:8.3f} "
              f"{r['wall_samples_per_s_vs_first']:7.3f}")


if __name__ == "__main__":
    main()
