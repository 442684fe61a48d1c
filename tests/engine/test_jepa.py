"""The JEPA step: packing bookkeeping, loss equal to the reference step, EMA."""
from types import SimpleNamespace

import pytest
import torch

from engine.jepa import JEPA, plan_packing
from engine.packing import pack_index_sets
from tests.engine.test_reference_parity import reference_loss


def _masks(ctx, tgt, pairs, mask_index):
    return SimpleNamespace(ctx=ctx, tgt=tgt, pairs=pairs, mask_index=mask_index)


def t(*v):
    return torch.tensor(v, dtype=torch.long)


def test_pack_index_sets_rows_and_offsets():
    p = pack_index_sets([t(0, 3), t(), t(1, 2, 5)], samples=[0, 1, 1], tokens_per_sample=6)
    assert p.cu_seqlens.tolist() == [0, 2, 2, 5] and p.max_seqlen == 3
    assert p.rows_T.tolist() == [0, 3, 7, 8, 11] and p.pos_T.tolist() == [0, 3, 1, 2, 5]
    assert p.seq_id_T().tolist() == [0, 0, 2, 2, 2]
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        pack_index_sets([t(6)], samples=[0], tokens_per_sample=6)


def test_plan_vjepa_identity_pairs():
    ctx = [[t(0, 1), t(2)], [t(3), t(4, 5, 6)]]
    tgt = [[t(5), t(0, 1)], [t(0, 1, 2), t(7)]]
    plan = plan_packing(_masks(ctx, tgt, [(0, 0), (1, 1)], [0, 1]), B=2, N=8)
    assert plan.ctx_pairs is plan.ctx and plan.ctx_rows_for_pairs is None
    assert plan.ctx.rows_T.tolist() == [0, 1, 10, 3, 12, 13, 14]
    assert plan.tgt.rows_T.tolist() == [5, 8, 9, 0, 1, 2, 15]
    assert plan.mask_index_S.tolist() == [0, 0, 1, 1]
    assert plan.pair_of_row_T.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert plan.tgt_tokens_per_pair.tolist() == [3, 4]


def test_plan_ijepa_one_context_many_targets():
    ctx = [[t(0, 1), t(2)]]
    tgt = [[t(5), t(6)], [t(3, 4), t(7)]]
    plan = plan_packing(_masks(ctx, tgt, [(0, 0), (0, 1)], [0, 0]), B=2, N=8)
    # the encoder runs the one context once; the predictor sees it once per target
    assert plan.ctx.rows_T.tolist() == [0, 1, 10]
    assert plan.ctx_rows_for_pairs.tolist() == [0, 1, 2, 0, 1, 2]
    assert plan.ctx_pairs.pos_T.tolist() == [0, 1, 2, 0, 1, 2]
    assert plan.tgt.cu_seqlens.tolist() == [0, 1, 2, 4, 5]


def test_plan_checks_batch_size():
    with pytest.raises(ValueError, match=r"masks.ctx\[0\] has 1 samples"):
        plan_packing(_masks([[t(0)]], [[t(1)]], [(0, 0)], [0]), B=2, N=4)


@pytest.fixture(scope="module")
def tiny_models():
    from engine.builders import build_models
    from engine.config import load_config
    cfg = load_config("configs/tiny_cpu.yaml", ["model.depth=2", "model.pred_depth=2", "model.embed_dim=48",
                                                "model.num_heads=2", "model.pred_embed_dim=32",
                                                "model.pred_num_heads=2", "model.zero_init_mask_tokens=false"])
    torch.manual_seed(0)
    enc, pred = build_models(cfg)
    return cfg, enc, pred


def _rect_masks(B, N, K_ctx, K_tgt, configs, g):
    ctx, tgt = [], []
    for _ in range(configs):
        perms = [torch.randperm(N, generator=g) for _ in range(B)]
        ctx.append([p[:K_ctx].sort().values for p in perms])
        tgt.append([p[K_ctx:K_ctx + K_tgt].sort().values for p in perms])
    return ctx, tgt


def test_packed_step_equals_reference_step(tiny_models):
    cfg, enc, pred = tiny_models
    model = JEPA(enc, pred)
    g = torch.Generator().manual_seed(1)
    B, N = 3, enc.num_patches
    x = torch.randn(B, 3, cfg.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size, generator=g)
    ctx, tgt = _rect_masks(B, N, 40, 30, 2, g)
    loss, info = model(x, _masks(ctx, tgt, [(0, 0), (1, 1)], [0, 1]))
    ref = reference_loss(enc, pred, model.target_encoder, x, [torch.stack(c) for c in ctx],
                         [torch.stack(m) for m in tgt])
    assert info["ctx_tokens"] == 2 * 3 * 40 and info["tgt_tokens"] == 2 * 3 * 30
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.target_encoder.parameters())


def test_ragged_loss_weights_every_token(tiny_models):
    """Ragged sets: each pair's mean is over its own tokens; no sample is truncated."""
    cfg, enc, pred = tiny_models
    model = JEPA(enc, pred)
    g = torch.Generator().manual_seed(2)
    B, N = 2, enc.num_patches
    x = torch.randn(B, 3, cfg.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size, generator=g)
    perm = [torch.randperm(N, generator=g) for _ in range(B)]
    ctx = [[perm[0][:50].sort().values, perm[1][:20].sort().values]]
    tgt = [[perm[0][50:60].sort().values, perm[1][20:90].sort().values]]
    with torch.no_grad():
        loss, info = model(x, _masks(ctx, tgt, [(0, 0)], [0]))
        # per-sample losses, each from a batch of one, combined with token weights
        per = []
        for b in range(B):
            lb, _ = model(x[b:b + 1], _masks([[ctx[0][b]]], [[tgt[0][b]]], [(0, 0)], [0]))
            per.append(lb * tgt[0][b].numel())
    assert info["tgt_tokens"] == 80
    assert loss.item() == pytest.approx((sum(per) / 80).item(), rel=1e-5)


def test_update_target_is_the_ema(tiny_models):
    cfg, enc, pred = tiny_models
    model = JEPA(enc, pred)
    before = [p.detach().clone() for p in model.target_encoder.parameters()]
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)
    model.update_target(0.9)
    for b, p, s in zip(before, model.target_encoder.parameters(), enc.parameters()):
        torch.testing.assert_close(p, 0.9 * b + 0.1 * s)


def test_variance_reg_equals_the_reference_reg_fn():
    """Packed ragged form == the reference's reg_fn on rectangular [B, K, D] predictions per mask."""
    import torch.nn.functional as F
    torch.manual_seed(0)
    B, K, D = 3, 5, 4
    z = [torch.randn(B, K, D) * s for s in (0.3, 2.0)]            # one pair below, one above std 1
    tgt = [[torch.arange(K) + b for b in range(B)] for _ in z]      # rectangular, any ids
    ctx = [[t(0) for _ in range(B)] for _ in z]
    plan = plan_packing(_masks(ctx, tgt, [(0, 0), (1, 1)], [0, 1]), B=B, N=16)
    p_TD = torch.cat([zi.reshape(-1, D) for zi in z])              # pair-major, then sample, then token
    ref_std = sum(torch.sqrt(zi.var(dim=1) + 0.0001) for zi in z) / len(z)
    ref = torch.mean(F.relu(1.0 - ref_std))
    torch.testing.assert_close(JEPA.variance_reg(p_TD, plan), ref)


def test_reg_coeff_adds_the_variance_term(tiny_models):
    cfg, encoder, predictor = tiny_models
    import copy
    import numpy as np
    from engine.builders import build_mask_sampler
    masks = build_mask_sampler(cfg).sample(2, np.random.default_rng(0))
    x = torch.randn(2, 3, cfg.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
    plain = JEPA(copy.deepcopy(encoder), copy.deepcopy(predictor))
    reg = JEPA(copy.deepcopy(encoder), copy.deepcopy(predictor), reg_coeff=2.0)
    reg.target_encoder.load_state_dict(plain.target_encoder.state_dict())
    l0, info0 = plain(x, masks)
    l1, info1 = reg(x, masks)
    info0, info1 = ({k: float(v) for k, v in i.items()} for i in (info0, info1))
    assert info0["loss_reg"] == pytest.approx(info1["loss_reg"]) and info0["loss_reg"] > 0
    assert float(l1) == pytest.approx(float(l0) + 2.0 * info0["loss_reg"], rel=1e-5)


def test_spread_terms_match_their_definition():
    """VICReg variance / covariance terms: per-feature std hinge and the off-diagonal covariance energy."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(50, 6, generator=g) * torch.tensor([0.1, 0.5, 1.0, 2.0, 3.0, 0.01])
    z[:, 1] += 0.7 * z[:, 0] * 5                                    # a correlated pair
    std_t, cov_t = JEPA.spread_terms(z)
    std = torch.sqrt(z.var(0) + 1e-4)
    c = torch.cov(z.T)
    torch.testing.assert_close(std_t, torch.relu(1 - std).mean())
    torch.testing.assert_close(cov_t, (c.pow(2).sum() - c.diag().pow(2).sum()) / 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):       # fp32 math under autocast too
        assert torch.equal(JEPA.spread_terms(z)[1], cov_t)
    collapsed = torch.ones(40, 6) * torch.randn(1, 6, generator=g)   # every token the same vector
    s, cv = JEPA.spread_terms(collapsed)
    assert s > 0.98 and cv.abs() < 1e-10
    white = torch.randn(4000, 6, generator=g)
    s, cv = JEPA.spread_terms(white)
    assert s < 0.05 and cv < 0.05
    one = JEPA.spread_terms(torch.randn(1, 6, generator=g))        # a single token: finite, not NaN
    assert all(torch.isfinite(t) for t in one)


def test_std_and_cov_coeff_add_their_terms_and_reach_the_encoder(tiny_models):
    cfg, encoder, predictor = tiny_models
    import copy
    import numpy as np
    from engine.builders import build_mask_sampler
    masks = build_mask_sampler(cfg).sample(2, np.random.default_rng(0))
    x = torch.randn(2, 3, cfg.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
    plain = JEPA(copy.deepcopy(encoder), copy.deepcopy(predictor))
    vc = JEPA(copy.deepcopy(encoder), copy.deepcopy(predictor), std_coeff=1.5, cov_coeff=0.25)
    vc.target_encoder.load_state_dict(plain.target_encoder.state_dict())
    l0, info0 = plain(x, masks)
    l1, info1 = vc(x, masks)
    assert all(not v.requires_grad for k, v in info1.items() if k.startswith("loss_"))
    info0, info1 = ({k: float(v) for k, v in i.items()} for i in (info0, info1))
    assert info0["loss_std"] == pytest.approx(info1["loss_std"]) and info0["loss_std"] > 0
    assert info0["loss_cov"] == pytest.approx(info1["loss_cov"]) and info0["loss_cov"] > 0
    expect = float(l0) + 1.5 * info0["loss_std"] + 0.25 * info0["loss_cov"]
    assert float(l1) == pytest.approx(expect, rel=1e-5)
    # the terms' gradient reaches the context encoder: its grads differ from the plain objective's
    l0.backward()
    l1.backward()
    g0 = plain.encoder.patch_embed.proj.weight.grad
    g1 = vc.encoder.patch_embed.proj.weight.grad
    assert not torch.allclose(g0, g1)
    # off by default: the plain objective's graph has no trace of them
    assert plain.std_coeff == 0 and plain.cov_coeff == 0
