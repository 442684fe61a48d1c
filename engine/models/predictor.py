"""The JEPA predictor: context features + learned mask tokens at the target positions -> predicted
target features. One class for I-JEPA (one `mask_token`), V-JEPA (one mask token per mask config,
sin-cos positions) and V-JEPA 2 (RoPE, optional SwiGLU).

    pred = build_predictor(cfg, encoder)
    p_TD = pred.forward_packed(z_TD, ctx, tgt, mask_index_S)   # packed (engine.jepa)
    p    = pred(z, h, [m_ctx], [m_tgt], mask_index=i)          # the reference V-JEPA call
    p    = pred(z, masks_ctx, masks_tgt)                       # the reference I-JEPA call

Sequence s of the packed pass is [its context tokens | its target tokens]: the predictor attends over
both, as the reference does per (mask config, sample), without padding anything to a common length.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

import kernels
from engine.models.layers import Linear, PredictorTrunk, QueryRows, Tokens
from engine.models.pos_embed import sincos_2d, sincos_3d
from engine.models.rope import Rope3D
from engine.packing import Packed, pack_index_sets, pad_rows, per_row


QUERY_ROW_BUCKET = 64   # the predictor's last block runs on its target rows rounded up to a multiple of this


def query_row_padding(n_rows: int) -> int:
    """Extra query rows the last block runs beside n_rows target rows (none when there are none)."""
    return -n_rows % QUERY_ROW_BUCKET if n_rows else 0


class Predictor(PredictorTrunk):
    # False runs the last block on every row, context rows included, as the reference does (for benchmarks)
    last_block_target_rows = True

    def __init__(self, grid: tuple[int, int, int], embed_dim: int, predictor_embed_dim: int = 384,
                 depth: int = 6, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 norm_eps: float = 1e-6, init_std: float = 0.02, is_video: bool = True,
                 uniform_power: bool = False, use_rope: bool = False, rope_reference_layout: bool = True,
                 use_silu: bool = False, wide_silu: bool = True, num_mask_tokens: int = 2,
                 zero_init_mask_tokens: bool = True, single_mask_token: bool = False,
                 use_activation_checkpointing: bool = False, residual: bool = False):
        super().__init__()
        self.grid = tuple(grid)
        # residual (model.pred_residual): a target token's prediction is its position's latest earlier
        # context feature plus the predictor's output, so the predictor learns each token's change. A
        # future predictor must otherwise first learn to copy the background through its own width, and
        # a narrow one stops at copying everything, moving objects included.
        self.residual = bool(residual)
        self.num_patches = grid[0] * grid[1] * grid[2]
        self.embed_dim = embed_dim
        self.single_mask_token = single_mask_token
        P = predictor_embed_dim
        self.predictor_embed = Linear(embed_dim, P, bias=True)
        if single_mask_token:   # I-JEPA
            self.mask_token = nn.Parameter(torch.zeros(1, 1, P))
            self.num_mask_tokens = 1
        else:
            self.mask_tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, 1, P)) for _ in range(num_mask_tokens)])
            self.num_mask_tokens = num_mask_tokens
        self.rope = Rope3D(P // num_heads, self.grid, rope_reference_layout) if use_rope else None
        if use_rope:
            self.predictor_pos_embed = None
        else:
            pe = sincos_3d(P, grid[0], grid[1], uniform_power) if is_video else sincos_2d(P, grid[1])
            self.predictor_pos_embed = nn.Parameter(pe.unsqueeze(0), requires_grad=False)
        self.add_trunk(P, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, norm_eps, use_silu, wide_silu, self.rope,
                       init_std, use_activation_checkpointing)
        if single_mask_token or not zero_init_mask_tokens:
            for t in self._mask_token_params():
                nn.init.trunc_normal_(t, std=init_std, a=-2.0, b=2.0)

    def _mask_token_params(self):
        return [self.mask_token] if self.single_mask_token else list(self.mask_tokens)

    def _pos(self, ids, dtype):
        return self.predictor_pos_embed[0].index_select(0, ids).to(dtype)

    # -- the packed pass -------------------------------------------------------------------------------
    def forward_packed(self, z_TD, ctx: Packed, tgt: Packed, mask_index_S) -> torch.Tensor:
        """z_TD: context features [Tc, D] packed as `ctx`; returns predictions [Tt, D] packed as `tgt`
        (sequence s of ctx and of tgt belong together; sequence s uses mask token mask_index_S[s])."""
        if ctx.num_seqs != tgt.num_seqs:
            raise ValueError(f"Predictor: {ctx.num_seqs} context sequences but {tgt.num_seqs} target sequences")
        if z_TD.shape[0] != ctx.rows_T.numel():
            raise ValueError(f"Predictor: z has {z_TD.shape[0]} rows, ctx packs {ctx.rows_T.numel()}")
        dev = z_TD.device
        x_ctx = per_row(self.predictor_embed, z_TD)
        table_MP = torch.cat([t.reshape(1, -1) for t in self._mask_token_params()])
        which_T = mask_index_S.to(dev).long().remainder(self.num_mask_tokens)[tgt.seq_id_T()]
        x_tgt = table_MP.to(x_ctx.dtype).index_select(0, which_T)
        if self.predictor_pos_embed is not None:
            x_ctx = x_ctx + self._pos(ctx.pos_T, x_ctx.dtype)
            x_tgt = x_tgt + self._pos(tgt.pos_T, x_ctx.dtype)

        # Interleave per sequence: [ctx of s | tgt of s] for every s, back to back.
        cu_c, cu_t = ctx.cu_seqlens.long(), tgt.cu_seqlens.long()
        Tc, Tt = x_ctx.shape[0], x_tgt.shape[0]
        dest_c = torch.arange(Tc, device=dev) + cu_t[:-1].repeat_interleave(cu_c[1:] - cu_c[:-1])
        dest_t = torch.arange(Tt, device=dev) + cu_c[1:].repeat_interleave(cu_t[1:] - cu_t[:-1])
        src_of_row = torch.empty(Tc + Tt, dtype=torch.long, device=dev)
        src_of_row[dest_c] = torch.arange(Tc, device=dev)
        src_of_row[dest_t] = torch.arange(Tc, Tc + Tt, device=dev)
        x = kernels.gather_tokens(torch.cat([x_ctx, x_tgt]).unsqueeze(0), src_of_row)
        ids = torch.cat([ctx.pos_T, tgt.pos_T]).index_select(0, src_of_row)
        cu = (ctx.cu_seqlens + tgt.cu_seqlens).to(torch.int32)
        # An upper bound known on the host (no device sync): kernels use it only to size their grids.
        max_len = ctx.max_seqlen + tgt.max_seqlen
        x, ids, cu, max_len = pad_rows(x, ids, cu, max_len)
        tok = Tokens(ids, cu, max_len, self.rope.tables(ids) if self.rope is not None else None)
        if self.last_block_target_rows and cu.numel() == tgt.cu_seqlens.numel():
            # Only the target rows are read, so the last block attends from them alone and skips the
            # context rows' projection and MLP (CPU bf16 pads its rows to a multiple and keeps all of
            # them). Their count is rounded up to QUERY_ROW_BUCKET with copies of one target row, extra
            # queries of the last sequence whose outputs are dropped: the block's tensors then take few
            # sizes, which the CPU allocator reuses instead of growing its heap on each new one.
            rows, cu_q, max_q = dest_t, tgt.cu_seqlens.to(torch.int32), tgt.max_seqlen
            pad = query_row_padding(Tt)
            if pad:
                rows = torch.cat([rows, rows[:1].expand(pad)])
                cu_q = torch.cat([cu_q[:-1], cu_q[-1:] + pad])
                max_q += pad
            out = QueryRows(rows, cu_q, max_q)
            p_TD = per_row(self.project, self.run_trunk(x, tok, out)[:Tt])
        else:
            x = self.run_trunk(x, tok)
            p_TD = per_row(self.project, x.index_select(0, dest_t))
        return p_TD + self.carried_forward(z_TD, ctx, tgt) if self.residual else p_TD

    def carried_forward(self, z_TD, ctx: Packed, tgt: Packed) -> torch.Tensor:
        """[Tt, D]: for each target token, the layer-normed context feature (as the targets are normed) at
        the same spatial position in the latest earlier time step of its sequence's context; zero where that
        position has no earlier context. Not detached: the base must live in the targets' space, and only
        the loss's gradient through it puts the context encoder's features there (the V-JEPA 2-AC
        predictor's base is its target encoder's own feature; a detached base here trained a predictor
        worse than copying the last step)."""
        dev, per_t = z_TD.device, self.grid[1] * self.grid[2]
        row_SN = torch.full((ctx.num_seqs, self.num_patches), -1, dtype=torch.long, device=dev)
        row_SN[ctx.seq_id_T(), ctx.pos_T] = torch.arange(z_TD.shape[0], device=dev)
        seq_T, pos_T = tgt.seq_id_T(), tgt.pos_T
        src_T = torch.full_like(pos_T, -1)
        for back in range(1, self.grid[0]):   # the nearest earlier step first
            earlier_T = pos_T - back * per_t
            found_T = torch.where(earlier_T >= 0, row_SN[seq_T, earlier_T.clamp_min(0)], -1)
            src_T = torch.where(src_T < 0, found_T, src_T)
        z_TD = torch.nn.functional.layer_norm(z_TD, (z_TD.shape[-1],))
        return z_TD.index_select(0, src_T.clamp_min(0)) * (src_T >= 0).unsqueeze(1).to(z_TD.dtype)

    # -- the reference calls ---------------------------------------------------------------------------
    def forward(self, x, *args, mask_index: int = 1):
        """V-JEPA: forward(ctxt, tgt, masks_ctxt, masks_tgt, mask_index=i); I-JEPA: forward(x, masks_x, masks).
        Context masks c and target masks m are paired (m outer, c inner), as the reference's tiling."""
        if len(args) == 3:
            _, masks_x, masks_y = args
        elif len(args) == 2:
            masks_x, masks_y = args
        else:
            raise TypeError("Predictor.forward(ctxt, tgt, masks_ctxt, masks_tgt) or forward(x, masks_x, masks)")
        masks_x = list(masks_x) if isinstance(masks_x, (list, tuple)) else [masks_x]
        masks_y = list(masks_y) if isinstance(masks_y, (list, tuple)) else [masks_y]
        C, M = len(masks_x), len(masks_y)
        B = x.shape[0] // C
        N = self.num_patches
        order = [(m, c, b) for m in range(M) for c in range(C) for b in range(B)]
        ctx = pack_index_sets([masks_x[c][b] for _, c, b in order], [b for *_, b in order], N)
        tgt = pack_index_sets([masks_y[m][b] for m, _, b in order], [b for *_, b in order], N)
        z_TD = x.repeat(M, 1, 1).reshape(-1, x.shape[-1])
        mask_index_S = torch.full((len(order),), int(mask_index), dtype=torch.long)
        p_TD = self.forward_packed(z_TD, ctx.to(x.device), tgt.to(x.device), mask_index_S)
        return p_TD.view(len(order), -1, p_TD.shape[-1])


def build_predictor(cfg, encoder) -> Predictor:
    """The predictor a config asks for, sized against its encoder (heads: model.pred_num_heads or the
    encoder's, as the reference)."""
    md = cfg.model
    if cfg.is_image:
        n_tokens, single = 1, True
    else:
        fpcs = len(cfg.data.dataset_fpcs or []) or 1
        n_tokens, single = len(cfg.mask) * fpcs, False
    return Predictor(encoder.grid, encoder.embed_dim, md.pred_embed_dim, md.pred_depth,
                     md.pred_num_heads or encoder.num_heads, is_video=encoder.is_video,
                     uniform_power=md.uniform_power, use_rope=md.use_rope,
                     rope_reference_layout=getattr(md, "rope_reference_layout", True),
                     use_silu=md.use_pred_silu, wide_silu=md.wide_silu, num_mask_tokens=n_tokens,
                     zero_init_mask_tokens=md.zero_init_mask_tokens, single_mask_token=single,
                     use_activation_checkpointing=md.use_activation_checkpointing, residual=md.pred_residual)
