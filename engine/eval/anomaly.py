"""Surprise: how badly a trained JEPA predicts a clip's own latent representation, per token and per clip.

    model = load_jepa(train_cfg, "runs/demo")                        # encoder, predictor, target encoder
    err_BN, n_BN, set_BS = token_surprise(model, clips_B3THW, mask_sets)   # per token; per mask set, pooled
    clip_BK = clip_scores(err_BN, n_BN, grid_THW, set_BS)   # per clip: mean, max, frame_max, frame_ratio,
                                                            # step_jump, pooled_max
    roc_auc(scores, labels)
    pair_scores(scores, labels, pair_ids)                            # matched pairs: accuracy, relative AUC

A token's surprise is the predictor's L1 error (averaged over channels, as the loss) on that token's
layer-normed target-encoder feature, averaged over every mask in which the token was a target:
- "masked": masks drawn from the training config's mask generators (the task the model learnt);
- "future": for each time step t > 0 of the token grid, the context is the tokens of the `context` time
  steps before t (default: all of them) and the targets are the tokens at t (the model must carry the
  past forward; the spirit of V-JEPA's IntPhys test).
A world model (`app: vjepa_droid`, e.g. the unconditioned next-step predictor of
configs/ac_events_tiny_cpu.yaml) is scored in its own task, "future" mode only (`next_step_surprise`):
each frame t >= 1 is predicted from the frozen encoder's latents of the `context` frames before it
(teacher-forced), and its tokens' surprise is the model's own loss on their latents (|z - h|^p / p
averaged over channels, p = loss.loss_exp: the error it was trained to make small); a time step is one frame.
A clip's surprise: "mean" over its scored tokens; "max" over its tokens; "frame_max" (V-JEPA's IntPhys
score) the max over time steps of the mean error of a step's tokens, which weighs a vanished object's
missing error against a teleported one's new error within one frame rather than token by token;
"pooled_max" the max over mask sets (future mode: over time steps) of the L1 error between the mean
predicted and the mean target feature of the set's targets: pooled over positions, it asks whether the
predicted step holds what the real one holds (an object that should persist), not where each thing is,
so the uncertainty of a moving object's position does not count as surprise; "frame_ratio" the largest
over the smallest mean error of a scored time step: the clip's own easiest step is its reference, so a
scene that is hard to predict throughout scores no higher than an easy one, only a step that stands out does;
"step_jump" the largest absolute change of a step's mean error from the scored step before it (IntPhys's
surprise after the event minus before, within the clip): absolute because an event can make the future
harder to predict (a teleported object where none was) or easier (a vanished object leaves background).
Possible and impossible videos of a matched pair share everything up to the event, so `pair_scores`
compares each clip with its own pair: pairwise accuracy (impossible more surprising than possible) and
the "relative" ROC AUC of scores minus their pair's mean (scene-to-scene differences cancel).
The no-model baselines: `pixel_surprise`, the largest mean absolute change between consecutive frames, and
`pixel_jump`, the largest change of that per-frame change from one frame pair to the next (step_jump's
within-clip contrast on pixels).
"""
from __future__ import annotations

import numpy as np
import torch

import kernels
from engine.masks.collator import BatchMasks


def load_jepa(cfg, checkpoint=None, random_init: bool = False, seed: int = 0):
    """The JEPA of a training config, loaded (strictly) from a training checkpoint or run folder."""
    from engine.builders import build_jepa
    from engine.config import ConfigError
    from engine.reference_ckpt import read_checkpoint
    from engine.core.checkpoint import latest_path
    from pathlib import Path
    if random_init and cfg.is_action_conditioned:
        import copy
        cfg = copy.deepcopy(cfg)   # untrained throughout: the frozen encoder is not read from its checkpoint
        cfg.meta.pretrain_checkpoint = None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_jepa(cfg)
    if not random_init:
        if checkpoint is None:
            raise ConfigError("--checkpoint: a training checkpoint or run folder is required (or --random-init)")
        path = Path(checkpoint)
        if path.is_dir():
            path = latest_path(path)
            if path is None:
                raise ConfigError(f"--checkpoint: {checkpoint} holds no checkpoints/latest")
        state, _ = read_checkpoint(path, trusted=True)
        for part in ("encoder", "predictor", "target_encoder"):
            if part not in state:
                raise ConfigError(f"--checkpoint: {path} has no {part!r} (a checkpoint of engine.train is expected)")
            getattr(model, part).load_state_dict(state[part], strict=True)
    return model.eval()


def context_spans(T: int, context=None, start: int = 1) -> list[tuple[int, int]]:
    """The distinct (first context step, predicted step t) of each window in `context` (None: every step
    before t; a sequence: several windows) for t = start..T-1; for t <= c a window of c steps is all of the
    past, listed once."""
    windows = list(context) if isinstance(context, (list, tuple)) else [context]
    if not windows or any(c is not None and c < 1 for c in windows):
        raise ValueError(f"context: at least 1 time step of context is needed, got {context}")
    if start >= T:
        from engine.config import ConfigError
        raise ConfigError(f"--start {start}: the clips have {T} time steps (0..{T - 1}), none to score from it")
    spans: list[tuple[int, int]] = []
    for c in windows:
        for t in range(max(start, 1), T):
            span = (0 if c is None else max(0, t - c), t)
            if span not in spans:
                spans.append(span)
    return spans


def future_masks(grid_THW, B: int, start: int = 1, context=None) -> list[BatchMasks]:
    """Mask sets predicting each time step t >= start from the steps before it: context = tokens of the
    `context` steps before t (None: all before t), targets = tokens at t. `context` may be a sequence of
    windows (V-JEPA's IntPhys test averages over context lengths): one set per distinct (window, t), so a
    token's surprise is averaged over the windows that differ at its step (for t <= c a window of c steps
    is all of the past, scored once)."""
    T, H, W = grid_THW
    per_t = H * W
    sets = []
    for t0, t in context_spans(T, context, start):
        ctx, tgt = torch.arange(t0 * per_t, t * per_t), torch.arange(t * per_t, (t + 1) * per_t)
        sets.append(BatchMasks(ctx=[[ctx] * B], tgt=[[tgt] * B], pairs=[(0, 0)], mask_index=[0]))
    return sets


@torch.no_grad()
def token_surprise(model, clips_B3THW, mask_sets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean error per token [B, N], how many masks scored it [B, N]; tokens never a target: count 0,
    error of each mask set's pooled prediction [B, S]: L1 between the mean predicted and the mean target
    feature over the sample's targets of set s)."""
    from engine.jepa import plan_packing
    B, N = clips_B3THW.shape[0], model.encoder.num_patches
    h_BND = model.target_encoder.forward_dense(model.target_encoder.embed(clips_B3THW))
    x_BND = model.encoder.embed(clips_B3THW)
    err_sum = torch.zeros(B * N)
    count = torch.zeros(B * N)
    set_err = []
    for masks in mask_sets:
        plan = plan_packing(masks, B, N)
        h_TD = kernels.gather_layer_norm(h_BND, plan.tgt.rows_T)
        z_TD = model.encoder.forward_packed(x_BND, plan.ctx)
        if plan.ctx_rows_for_pairs is not None:
            z_TD = z_TD.index_select(0, plan.ctx_rows_for_pairs)
        p_TD = model.predictor.forward_packed(z_TD, plan.ctx_pairs, plan.tgt, plan.mask_index_S)
        err_T = (p_TD.float() - h_TD.float()).abs().mean(-1)
        err_sum.index_add_(0, plan.tgt.rows_T, err_T)
        count.index_add_(0, plan.tgt.rows_T, torch.ones_like(err_T))
        sample_T = plan.tgt.rows_T // N
        n_B1 = torch.zeros(B, 1).index_add_(0, sample_T, torch.ones(len(sample_T), 1)).clamp_min(1)
        p_BD = torch.zeros(B, p_TD.shape[1]).index_add_(0, sample_T, p_TD.float()) / n_B1
        h_BD = torch.zeros(B, h_TD.shape[1]).index_add_(0, sample_T, h_TD.float()) / n_B1
        set_err.append((p_BD - h_BD).abs().mean(-1))
    return (err_sum / count.clamp_min(1)).view(B, N), count.view(B, N), torch.stack(set_err, 1)


@torch.no_grad()
def next_step_surprise(model, clips_B3THW, context=None,
                       start: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A frame-causal world model's (engine.ac_jepa.ACJEPA without actions) surprise, its own loss per token
    (the mean over a clip's frames 1.. is its teacher-forced training loss), as token_surprise's triple over
    the [T frames x H' x W'] grid: each frame t >= start (>= 1) predicted from the latents of frames
    t0..t-1 for every span of context_spans (frames before start, never predicted, have count 0). Every
    (0, t) span comes from one teacher-forced pass over the whole clip (frame-causal attention: frame t's
    prediction sees frames < t only); a shorter window runs the predictor on its frames alone (RoPE: only the
    frames' distances matter)."""
    if model.conditioned:
        raise ValueError("next_step_surprise: the predictor takes actions (model.action_dim > 0); surprise is "
                         "scored for a predictor without them (model.action_dim 0)")
    h_BND = model.encode(clips_B3THW).float()
    n = model.tokens_per_frame
    p = model.loss_exp
    loss = lambda a, b: ((a - b).abs() ** p).mean(-1) / p     # noqa: E731  the model's own loss, per token
    B, N, _ = h_BND.shape
    spans = context_spans(N // n, context, start)
    full_BND = model.step_predictor(h_BND[:, :-n]).float() if any(t0 == 0 for t0, _ in spans) else None
    err_BN, count_BN, set_err = torch.zeros(B, N), torch.zeros(B, N), []
    for t0, t in spans:
        if t0 == 0:
            p_BnD = full_BND[:, (t - 1) * n:t * n]
        else:
            p_BnD = model.step_predictor(h_BND[:, t0 * n:t * n]).float()[:, -n:]
        h_BnD = h_BND[:, t * n:(t + 1) * n]
        err_BN[:, t * n:(t + 1) * n] += loss(p_BnD, h_BnD)
        count_BN[:, t * n:(t + 1) * n] += 1
        set_err.append(loss(p_BnD.mean(1), h_BnD.mean(1)))
    return err_BN / count_BN.clamp_min(1), count_BN, torch.stack(set_err, 1)


def surprise_grid(model, num_tokens: int) -> tuple[int, int, int]:
    """The (time steps, rows, columns) of the grid of a clip's `num_tokens` scored tokens: a world model's
    step is one frame (engine.ac_jepa.ACJEPA encodes each frame alone), a V-JEPA's one tubelet."""
    _, H, W = model.encoder.grid
    return num_tokens // (H * W), H, W


def clip_scores(err_BN, count_BN, grid_THW, set_err_BS=None) -> dict:
    """Per-clip surprise over the scored tokens: {"mean", "max", "frame_max", "frame_ratio", "step_jump", with
    set_err_BS "pooled_max": [B]} (see the module doc)."""
    scored = count_BN > 0
    mean = (err_BN * scored).sum(1) / scored.sum(1).clamp_min(1)
    mx = torch.where(scored, err_BN, torch.full_like(err_BN, -float("inf"))).amax(1)
    B, T = err_BN.shape[0], grid_THW[0]
    scored_BTS = scored.view(B, T, -1)
    step_BT = (err_BN.view(B, T, -1) * scored_BTS).sum(2) / scored_BTS.sum(2).clamp_min(1)
    has_BT = scored_BTS.any(2)
    lowest_B = torch.where(has_BT, step_BT, torch.full_like(step_BT, float("inf"))).amin(1)
    step_BT = torch.where(has_BT, step_BT, torch.full_like(step_BT, -float("inf")))
    out = {"mean": mean, "max": mx, "frame_max": step_BT.amax(1),
           "frame_ratio": step_BT.amax(1) / lowest_B.clamp_min(1e-12),
           "step_jump": largest_change(torch.where(has_BT, step_BT, 0.0), has_BT)}
    if set_err_BS is not None:
        out["pooled_max"] = set_err_BS.amax(1)
    return out


def largest_change(x_BT, valid_BT=None) -> torch.Tensor:
    """max over t of |x[t] - x[t-1]| where both steps are valid (all by default); 0 where no such pair ([B])."""
    jump_BT = (x_BT[:, 1:] - x_BT[:, :-1]).abs()
    if valid_BT is not None:
        jump_BT = torch.where(valid_BT[:, 1:] & valid_BT[:, :-1], jump_BT, torch.zeros_like(jump_BT))
    return jump_BT.amax(1) if jump_BT.shape[1] else torch.zeros(x_BT.shape[0])


def frame_change(clips_B3THW) -> torch.Tensor:
    """Mean |frame t+1 - frame t| over channels and pixels ([B, T-1])."""
    return (clips_B3THW[:, :, 1:] - clips_B3THW[:, :, :-1]).abs().mean(dim=(1, 3, 4))


def pixel_surprise(clips_B3THW) -> torch.Tensor:
    """The no-model baseline: max over t of the mean |frame t+1 - frame t| ([B])."""
    return frame_change(clips_B3THW).amax(1)


def pixel_jump(clips_B3THW) -> torch.Tensor:
    """The no-model baseline with step_jump's contrast: the largest change of the per-frame change ([B])."""
    return largest_change(frame_change(clips_B3THW))


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counted half."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("roc_auc: needs both positive and negative labels")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def pair_scores(scores, labels, pair_ids) -> dict:
    """Matched pairs (one possible, label 0, and one impossible, label 1, per pair id): {"pair_acc":
    fraction of pairs whose impossible clip scores higher (ties half), "relative_auc": ROC AUC of each
    score minus its pair's mean, "pairs": count}."""
    s, y, ids = np.asarray(scores, np.float64), np.asarray(labels).astype(int), np.asarray(pair_ids)
    by_pair: dict = {}
    for i, (pid, lab) in enumerate(zip(ids.tolist(), y.tolist())):
        if by_pair.setdefault(pid, {}).setdefault(lab, i) != i:
            raise ValueError(f"pair_scores: pair {pid} has two clips labelled {lab}")
    if any(set(m) != {0, 1} for m in by_pair.values()):
        raise ValueError("pair_scores: every pair needs one clip labelled 0 and one labelled 1")
    d = np.array([s[m[1]] - s[m[0]] for m in by_pair.values()])
    acc = float(np.mean((d > 0) + 0.5 * (d == 0)))
    # relative score of a clip: its score minus its pair's mean, i.e. +d/2 (impossible) or -d/2 (possible)
    return {"pair_acc": acc, "relative_auc": roc_auc(np.concatenate([d, -d]) / 2,
                                                     np.r_[np.ones(len(d)), np.zeros(len(d))]), "pairs": len(d)}


def read_events(path) -> dict:
    """The generator's NAME.events.csv: {video path: (event, pair id)}."""
    import csv
    with open(path, newline="") as f:
        return {r["path"]: (r["event"], int(r["pair"])) for r in csv.DictReader(f)}


def mask_sets_for(mode: str, cfg, model, B: int, num_masks: int, seed: int, context=None, start: int = 1):
    if mode == "future":
        return future_masks(model.encoder.grid, B, start=start, context=context)
    if mode == "masked":
        from engine.builders import build_mask_sampler
        sampler = build_mask_sampler(cfg)
        return [sampler.sample(B, np.random.default_rng([seed, i])) for i in range(num_masks)]
    raise ValueError(f"surprise mode must be 'future' or 'masked', got {mode!r}")


def surprise_dataset(cfg, csv):
    """The clips the model was trained on (its frames, step and crop size), from the start: the whole frame's
    centre square resized to the crop size, the largest view training draws (random_resize_scale 1), with no
    zoom. (A probe's evaluation view, short side crop_size * 256 / 224, would show objects 1.14x larger and
    faster than training did, cut the border off, and move a lattice world's cells off the patch grid.)"""
    from engine.data.datasets import VideoDataset
    from engine.data.transforms import VideoEvalTransform
    d = cfg.data
    view = VideoEvalTransform(d.crop_size, short_side_size=d.crop_size)
    return VideoDataset([csv], frames_per_clip=cfg.frames_per_clip, frame_step=d.sampling_rate, fps=d.fps,
                        duration=d.clip_duration, transform=view, random_clip_sampling=False)


SCORES = ("mean", "max", "frame_max", "frame_ratio", "step_jump", "pooled_max")
BASELINES = ("pixel", "pixel_jump")


def score_dataset(model, cfg, dataset, *, mode: str = "future", num_masks: int = 8, batch_size: int = 16,
                  num_workers: int = 0, seed: int = 0, context=None, start: int = 1) -> dict:
    """{each of SCORES and BASELINES: [M] per-clip scores, "labels": [M], "token_err": [M, N]}; context: a
    future window or a sequence of them (future_masks); start: the first time step scored in future mode
    (the steps before it are context only: a step predicted from too little past to carry motion forward,
    e.g. a world model's frame 1 from one frame, is not a surprise)."""
    from engine.eval.probe import _Indexed
    loader = torch.utils.data.DataLoader(_Indexed(dataset, seed), batch_size=batch_size, num_workers=num_workers)
    out = {k: [] for k in (*SCORES, *BASELINES, "labels", "token_err")}
    if cfg.is_action_conditioned and mode != "future":
        from engine.config import ConfigError
        raise ConfigError(f"--mode: a world model (app {cfg.app}) is scored on its own task, the next frame "
                         f"from the frames before it ('future'), got {mode!r}")
    for clips, y in loader:
        if cfg.is_action_conditioned:
            err, n, set_err = next_step_surprise(model, clips, context, start)
        else:
            # the same masks for every batch (masked mode): clips are compared under equal masking
            sets = mask_sets_for(mode, cfg, model, len(y), num_masks, seed, context, start)
            err, n, set_err = token_surprise(model, clips, sets)
        cs = clip_scores(err, n, surprise_grid(model, err.shape[1]), set_err)
        for k in SCORES:
            out[k].append(cs[k])
        out["pixel"].append(pixel_surprise(clips))
        out["pixel_jump"].append(pixel_jump(clips))
        out["labels"].append(torch.as_tensor(y))
        out["token_err"].append(err)
    return {k: torch.cat(v) for k, v in out.items()}
