"""The JEPA step: predict the target encoder's representation of masked tokens from visible ones.

    model = JEPA(encoder, predictor, target_encoder, loss="l1")
    loss, info = model(clips_B3THW, masks)        # masks: engine.masks.BatchMasks
    loss.backward(); optimizer.step(); model.update_target(momentum)

One step, for every (context c, target m) pair of the batch's masks:
    target encoder (all N tokens, no grad) -> layer_norm -> targets gathered at the target tokens
        (on a multi-core CPU, on a second thread beside the two passes below: engine.core.beside)
    context encoder on the visible tokens, packed: every (context mask, sample) is one sequence,
        so ONE pass serves all mask configs and no token is truncated or padded
    predictor: context tokens + mask tokens at the target positions, packed per (pair, sample)
    loss: mean over each pair's target tokens of |pred - target|^p / p (V-JEPA), or smooth L1
        (I-JEPA), averaged over pairs
"""
from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from engine.core.beside import Beside, beside_ok
from engine.packing import Packed, pack_index_sets


class JEPA(nn.Module):
    def __init__(self, encoder: nn.Module, predictor: nn.Module, target_encoder: nn.Module | None = None,
                 loss: str = "l1", loss_exp: float = 1.0, reg_coeff: float = 0.0, std_coeff: float = 0.0,
                 cov_coeff: float = 0.0, sigreg=None, sigreg_coeff: float = 0.0):
        super().__init__()
        if loss not in ("l1", "smooth_l1"):
            raise ValueError(f"JEPA: loss must be 'l1' or 'smooth_l1', got {loss!r}")
        self.encoder = encoder
        self.predictor = predictor
        # The target is an fp32 copy that is never trained: no grads, updated only by the EMA.
        self.target_encoder = target_encoder if target_encoder is not None else copy.deepcopy(encoder)
        self.target_encoder.float()
        for p in self.target_encoder.parameters():
            p.requires_grad_(False)
        self.loss_type = loss
        self.loss_exp = float(loss_exp)
        self.reg_coeff = float(reg_coeff)
        self.std_coeff, self.cov_coeff = float(std_coeff), float(cov_coeff)
        self.sigreg, self.sigreg_coeff = sigreg, float(sigreg_coeff)   # engine.sigreg.SIGReg or None
        self._ema = None

    # -- the three passes ----------------------------------------------------------------------
    def forward(self, x, masks):
        B = x.shape[0]
        N = self.encoder.num_patches
        plan = plan_packing(masks, B, N, device=x.device)

        te = self.target_encoder
        # On a multi-core CPU this no-grad pass runs beside the context encoder and predictor, each on half
        # the cores, in parts: once the other half is done, its thread takes the parts left.
        # The layer norm is fused into the gather: only target rows are normalised.
        side = beside_ok(x, te)
        parts = [partial(target_pass, te, x_part) for x_part in x.split(target_parts(B, N) if side else B)]
        with Beside(parts, enabled=side,
                    combine=lambda h: kernels.gather_layer_norm(cat_parts(h), plan.tgt.rows_T)) as target:
            z_TD = self.encoder.forward_packed(self.encoder.embed(x), plan.ctx)
            spread = self.std_coeff > 0 or self.cov_coeff > 0
            with torch.set_grad_enabled(torch.is_grad_enabled() and spread):
                std_term, cov_term = self.spread_terms(z_TD)
            if plan.ctx_rows_for_pairs is not None:   # a context serves several targets (I-JEPA)
                z_TD = z_TD.index_select(0, plan.ctx_rows_for_pairs)
            p_TD = self.predictor.forward_packed(z_TD, plan.ctx_pairs, plan.tgt, plan.mask_index_S)
        h_TD = target.result

        loss = self.loss_fn(p_TD, h_TD, plan)
        info = {"ctx_tokens": int(plan.ctx.rows_T.numel()), "tgt_tokens": int(plan.tgt.rows_T.numel())}
        # The reference's variance term: low spread of the predictions across a sequence's tokens is the
        # first sign of collapse, so it is always logged; it joins the loss only with loss.reg_coeff > 0.
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.reg_coeff > 0):
            reg = self.variance_reg(p_TD, plan)
        # info holds 0-d tensors, not floats: a float() here would wait for the device inside every
        # forward; the trainers convert them once the step is enqueued
        info["loss_reg"] = reg.detach()
        if self.reg_coeff > 0:
            loss = loss + self.reg_coeff * reg
        # logged always (a std term rising towards 1 is collapse); in the loss only with their coefficients
        info["loss_std"], info["loss_cov"] = std_term.detach(), cov_term.detach()
        if spread:
            loss = loss + self.std_coeff * std_term + self.cov_coeff * cov_term
        if self.sigreg is not None:
            sig = self.sigreg(z_TD)
            info["loss_sigreg"] = sig.detach()
            loss = loss + self.sigreg_coeff * sig
        return loss, info

    @staticmethod
    def spread_terms(z_TD) -> tuple[torch.Tensor, torch.Tensor]:
        """VICReg's variance and covariance terms over the batch's context tokens z [T, D] (fp32 math):
        std = mean over features of relu(1 - sqrt(var + 1e-4)) (unbiased var over tokens), and
        cov = sum of the squared off-diagonal covariances / D.

        Not part of the reference objective. A tiny model trained for a few hundred steps collapses its
        features to a few directions (the target follows by EMA); these terms keep every feature
        varying across tokens and the features decorrelated, at the cost of one D x D product.
        """
        z = z_TD.float()
        T, D = z.shape
        z = z - z.mean(0)
        var_D = z.pow(2).sum(0) / max(T - 1, 1)
        std_term = F.relu(1.0 - (var_D + 1e-4).sqrt()).mean()
        with torch.autocast(z.device.type, enabled=False):   # fp32 as documented, not autocast's dtype
            cov_DD = z.T @ z / max(T - 1, 1)
        cov_term = (cov_DD.pow(2).sum() - cov_DD.diagonal().pow(2).sum()) / D
        return std_term, cov_term

    @staticmethod
    def variance_reg(p_TD, plan: "PackingPlan") -> torch.Tensor:
        """mean over (sample, feature) of relu(1 - std over a sequence's tokens, averaged over pairs), with
        std = sqrt(var + 1e-4) (unbiased var), as the reference's reg_fn over its [B, K, D] predictions."""
        p_TD = p_TD.float()
        S, D = plan.tgt.num_seqs, p_TD.shape[-1]
        seq_T = plan.tgt.seq_id_T().to(p_TD.device)
        n_S1 = plan.tgt.seqlens_S.to(p_TD.device, torch.float32)[:, None]
        sum_SD = p_TD.new_zeros(S, D).index_add_(0, seq_T, p_TD)
        sq_SD = p_TD.new_zeros(S, D).index_add_(0, seq_T, p_TD * p_TD)
        var_SD = (sq_SD - sum_SD * sum_SD / n_S1.clamp_min(1)) / (n_S1 - 1).clamp_min(1)
        std_PBD = (var_SD.clamp_min(0) + 1e-4).sqrt().view(plan.num_pairs, -1, D)
        return F.relu(1.0 - std_PBD.mean(0)).mean()

    def loss_fn(self, p_TD, h_TD, plan: "PackingPlan") -> torch.Tensor:
        p_TD = p_TD.float()
        h_TD = h_TD.float()
        if self.loss_type == "smooth_l1":
            # I-JEPA: one mean over every predicted element of every pair.
            return F.smooth_l1_loss(p_TD, h_TD)
        err_TD = (p_TD - h_TD).abs()
        if self.loss_exp == 1.0:   # pow(x, 1) is x: V-JEPA's L1 skips a pass and its backward
            err_T = err_TD.sum(-1)
        else:
            err_T = err_TD.pow(self.loss_exp).sum(-1) / self.loss_exp
        # Per pair: the mean over its tokens and features (as the reference's per-mask mean),
        # then the mean over pairs. Ragged sets weight every token of a pair equally.
        per_pair = torch.zeros(plan.num_pairs, device=err_T.device, dtype=err_T.dtype)
        per_pair.index_add_(0, plan.pair_of_row_T, err_T)
        denom = plan.tgt_tokens_per_pair.to(err_T.dtype).clamp_min(1) * p_TD.shape[-1]
        return (per_pair / denom).mean()

    # -- EMA -----------------------------------------------------------------------------------
    @torch.no_grad()
    def update_target(self, momentum) -> None:
        from engine.core.ema import TargetEMA
        if self._ema is None:
            self._ema = TargetEMA(self)
        self._ema(momentum)


def target_pass(target_encoder: nn.Module, x) -> torch.Tensor:
    """The target encoder on every token of the clips x: [B, N, D]."""
    return target_encoder.forward_dense(target_encoder.embed(x))


MIN_PART_TOKENS = 256


def target_parts(B: int, tokens: int) -> list[int]:
    """Clips per part of the target pass when it runs beside the online passes, largest first: half the
    batch, then half of what is left, down to parts of MIN_PART_TOKENS tokens or one clip. The side thread
    starts on the large ones; the thread that finishes its half first takes a small share at the end. Few
    parts, as each costs a pass of every block's ops on fewer rows."""
    floor = max(1, -(-MIN_PART_TOKENS // max(tokens, 1)))
    sizes, left = [], B
    while left > 0:
        sizes.append(min(left, max(floor, left // 2)))
        left -= sizes[-1]
    return sizes


def cat_parts(h: list[torch.Tensor]) -> torch.Tensor:
    return h[0] if len(h) == 1 else torch.cat(h)


class PackingPlan:
    """Index bookkeeping for one batch's masks, built once on the host.

    ctx:        the context sequences: one per (context mask c, sample b), order c-major
    ctx_pairs:  the predictor's context sequences: one per (pair p, sample b), order p-major
    tgt:        the predictor's target sequences: one per (pair p, sample b), same order
    """

    def __init__(self, ctx: Packed, ctx_pairs: Packed, tgt: Packed, ctx_rows_for_pairs, mask_index_S,
                 pair_of_row_T, tgt_tokens_per_pair):
        self.ctx, self.ctx_pairs, self.tgt = ctx, ctx_pairs, tgt
        self.ctx_rows_for_pairs = ctx_rows_for_pairs
        self.mask_index_S = mask_index_S
        self.pair_of_row_T = pair_of_row_T
        self.tgt_tokens_per_pair = tgt_tokens_per_pair
        self.num_pairs = int(tgt_tokens_per_pair.numel())


def plan_packing(masks, B: int, N: int, device=None) -> PackingPlan:
    C, M = len(masks.ctx), len(masks.tgt)
    for name, sets in (("ctx", masks.ctx), ("tgt", masks.tgt)):
        for i, per_sample in enumerate(sets):
            if len(per_sample) != B:
                raise ValueError(f"masks.{name}[{i}] has {len(per_sample)} samples, the batch has {B}")
    samples = list(range(B))
    ctx = pack_index_sets([s for c in range(C) for s in masks.ctx[c]], samples * C, N)
    pairs = list(masks.pairs)
    ctx_of_pair = [c for c, _ in pairs]
    identity = ctx_of_pair == list(range(C))
    ctx_pairs = ctx if identity else pack_index_sets(
        [masks.ctx[c][b] for c in ctx_of_pair for b in samples], samples * len(pairs), N)
    tgt = pack_index_sets([masks.tgt[m][b] for _, m in pairs for b in samples], samples * len(pairs), N)

    ctx_rows_for_pairs = None
    if not identity:
        # Rows of z (packed c-major) that feed each (pair, sample) sequence, in pair order.
        starts = ctx.cu_seqlens.long()
        pieces = [torch.arange(int(starts[c * B + b]), int(starts[c * B + b + 1])) for c in ctx_of_pair for b in samples]
        ctx_rows_for_pairs = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)

    mask_index_S = torch.as_tensor(masks.mask_index, dtype=torch.long).repeat_interleave(B)
    tgt_lens_S = tgt.seqlens_S.long()
    pair_of_row_T = torch.repeat_interleave(torch.arange(len(pairs)).repeat_interleave(B), tgt_lens_S)
    tgt_tokens_per_pair = tgt_lens_S.view(len(pairs), B).sum(1)
    plan = PackingPlan(ctx, ctx_pairs, tgt, ctx_rows_for_pairs, mask_index_S, pair_of_row_T, tgt_tokens_per_pair)
    if device is not None and torch.device(device).type != "cpu":
        plan.ctx, plan.ctx_pairs, plan.tgt = ctx.to(device), ctx_pairs.to(device), tgt.to(device)
        for k in ("ctx_rows_for_pairs", "mask_index_S", "pair_of_row_T", "tgt_tokens_per_pair"):
            v = getattr(plan, k)
            if v is not None:
                setattr(plan, k, v.to(device, non_blocking=True))
    return plan
