"""Masks: block geometry as configured, set invariants, determinism, the compat truncation rule, errors that
name their parameter, and masking statistics against numbers measured on the reference collators."""
import pickle

import numpy as np
import pytest
import torch

from engine.masks import BatchMasks, MaskCollator, MultiBlock2D, MultiBlock3D, TubeMask

VITL_GRID = (8, 14, 14)
# the `mask` section of jepa/configs/pretrain/vitl16.yaml (V-JEPA ViT-L)
VITL_MASK = [
    dict(aspect_ratio=[0.75, 1.5], num_blocks=8, spatial_scale=[0.15, 0.15], temporal_scale=[1.0, 1.0],
         max_temporal_keep=1.0, max_keep=None),
    dict(aspect_ratio=[0.75, 1.5], num_blocks=2, spatial_scale=[0.7, 0.7], temporal_scale=[1.0, 1.0],
         max_temporal_keep=1.0, max_keep=None),
]
# jepa/configs/in1k_vith14_ep300.yaml (I-JEPA ViT-H/14 at 224 px: a 16x16 grid)
IJEPA_MASK = dict(allow_overlap=False, aspect_ratio=[0.75, 1.5], enc_mask_scale=[0.85, 1.0], min_keep=10,
                  num_enc_masks=1, num_pred_masks=4, patch_size=14, pred_mask_scale=[0.15, 0.2])


def rng(*seed):
    return np.random.default_rng(list(seed) or [0])


def as_bool(ids, n):
    out = np.zeros(n, dtype=bool)
    out[ids.numpy()] = True
    return out


def stacked(masks: BatchMasks):
    """(ctx, tgt) as lists of [B, K] tensors, the reference collator's form (raises on ragged sets)."""
    return [torch.stack(sets) for sets in masks.ctx], [torch.stack(sets) for sets in masks.tgt]


def check_sets(masks: BatchMasks, n: int, b: int):
    for lists in (masks.ctx, masks.tgt):
        for sets in lists:
            assert len(sets) == b
            for s in sets:
                assert s.dtype == torch.int64 and s.dim() == 1 and s.numel() > 0
                assert int(s.min()) >= 0 and int(s.max()) < n
                assert bool((s[1:] > s[:-1]).all()), "sorted and unique"


# ---------------------------------------------------------------- V-JEPA multiblock 3D

def test_block_sizes_as_configured():
    gen = MultiBlock3D(VITL_GRID, spatial_scale=(0.15, 0.15), temporal_scale=(0.5, 1.0),
                       aspect_ratio=(0.75, 1.5), num_blocks=8)
    for seed in range(200):
        (t, h, w), starts_BK3 = gen.draw_blocks(3, rng(seed))
        assert starts_BK3.shape == (3, 8, 3)
        # keep = int(196 * 0.15) = 29 tokens; h = round(sqrt(29 ar)), w = round(sqrt(29 / ar)), ar in [0.75, 1.5]
        assert 4 <= t <= 8 and 5 <= h <= 7 and 4 <= w <= 6
        assert (starts_BK3 >= 0).all() and (starts_BK3 + np.array([t, h, w]) <= np.array(VITL_GRID)).all()


def test_target_is_union_of_blocks_context_is_complement():
    gen = MultiBlock3D(VITL_GRID, **VITL_MASK[0])
    size, starts_BK3 = gen.draw_blocks(6, rng(3))
    masks = MaskCollator([gen]).sample(6, rng(3))       # same rng stream: the same blocks
    t, h, w = size
    for b in range(6):
        want_THW = np.zeros(VITL_GRID, dtype=bool)
        for t0, h0, w0 in starts_BK3[b]:
            want_THW[t0:t0 + t, h0:h0 + h, w0:w0 + w] = True
        tgt = as_bool(masks.tgt[0][b], 1568)
        ctx = as_bool(masks.ctx[0][b], 1568)
        assert (tgt == want_THW.reshape(-1)).all()
        assert (ctx == ~tgt).all()


@pytest.mark.parametrize("mode", ["ragged", "compat"])
def test_vitl_sets_valid_and_pairs(mode):
    masks = MaskCollator.from_config(VITL_MASK, VITL_GRID, mode).sample(24, rng(1))
    check_sets(masks, 1568, 24)
    assert masks.pairs == [(0, 0), (1, 1)] and masks.mask_index == [0, 1]
    for c in range(2):
        for b in range(24):
            assert not np.isin(masks.ctx[c][b].numpy(), masks.tgt[c][b].numpy()).any(), "disjoint"


def test_ragged_keeps_everything():
    masks = MaskCollator.from_config(VITL_MASK, VITL_GRID, "ragged").sample(24, rng(2))
    for c in range(2):
        lens = [len(s) for s in masks.ctx[c]]
        assert len(set(lens)) > 1, "positions differ per sample, so lengths do"
        for b in range(24):
            assert len(masks.ctx[c][b]) + len(masks.tgt[c][b]) == 1568


@pytest.mark.parametrize("max_keep", [None, 200])
def test_compat_is_reference_truncation(max_keep):
    cfg = [dict(VITL_MASK[0], max_keep=max_keep), VITL_MASK[1]]
    for seed in range(5):
        ragged = MaskCollator.from_config(cfg, VITL_GRID, "ragged").sample(24, rng(seed))
        compat = MaskCollator.from_config(cfg, VITL_GRID, "compat").sample(24, rng(seed))
        enc, pred = stacked(compat)
        for c in range(2):
            k_ctx = min(len(s) for s in ragged.ctx[c])     # ragged applies max_keep already
            k_tgt = min(len(s) for s in ragged.tgt[c])
            assert enc[c].shape == (24, k_ctx) and pred[c].shape == (24, k_tgt)
            for b in range(24):       # the first K sorted ids: the latest-time tokens are the ones dropped
                assert torch.equal(enc[c][b], ragged.ctx[c][b][:k_ctx])
                assert torch.equal(pred[c][b], ragged.tgt[c][b][:k_tgt])
        if max_keep is not None:
            assert all(len(s) <= max_keep for s in ragged.ctx[0]) and enc[0].shape[1] <= max_keep


def test_max_temporal_keep_moves_late_frames_to_target():
    gen = MultiBlock3D(VITL_GRID, spatial_scale=(0.15, 0.15), num_blocks=2, max_temporal_keep=0.5)
    masks = MaskCollator([gen]).sample(8, rng(0))
    for b in range(8):
        assert int(masks.ctx[0][b].max()) < 4 * 196          # context spans frames 0..3 only
        assert (as_bool(masks.tgt[0][b], 1568)[4 * 196:]).all()


def test_full_complement_and_inv_block():
    cfg = dict(VITL_MASK[0], full_complement=True)
    m = MaskCollator.from_config([cfg], VITL_GRID, "compat").sample(12, rng(4))
    for b in range(12):      # target = complement of the cut context, so it gets the dropped tokens
        assert len(m.ctx[0][b]) + len(m.tgt[0][b]) == 1568
        assert not np.isin(m.ctx[0][b].numpy(), m.tgt[0][b].numpy()).any()
    plain = MaskCollator.from_config(VITL_MASK[:1], VITL_GRID).sample(4, rng(5))
    inv = MaskCollator.from_config([dict(VITL_MASK[0], inv_block=True)], VITL_GRID).sample(4, rng(5))
    for b in range(4):
        assert torch.equal(inv.ctx[0][b], plain.tgt[0][b]) and torch.equal(inv.tgt[0][b], plain.ctx[0][b])


def test_empty_context_is_redrawn():
    # single-frame full-size blocks: two blocks on one of 2 frames leave an empty context half the time
    gen = MultiBlock3D((2, 4, 4), spatial_scale=(1.0, 1.0), temporal_scale=(0.5, 0.5), aspect_ratio=(1, 1),
                       num_blocks=2)
    masks = MaskCollator([gen]).sample(64, rng(0))
    assert all(len(s) == 16 for s in masks.ctx[0])


def test_mean_masking_ratio_matches_reference_vitl():
    # measured on jepa/src/masks/multiblock3d.py with this config (crop 224, 16 frames, patch 16, tubelet 2):
    # untruncated (batch 1, 8000 draws): ctx 585.1 / 293.4 tokens; truncated at batch 24 (800 batches):
    # ctx 365.4 / 100.9, tgt 752.9 / 1102.5
    ragged = MaskCollator.from_config(VITL_MASK, VITL_GRID, "ragged")
    compat = MaskCollator.from_config(VITL_MASK, VITL_GRID, "compat")
    r, c = np.zeros((120, 2)), np.zeros((120, 4))
    for i in range(120):
        m = ragged.sample(24, rng(7, i))
        r[i] = [np.mean([len(s) for s in m.ctx[k]]) for k in range(2)]
        enc, pred = stacked(compat.sample(24, rng(7, i)))
        c[i] = [enc[0].shape[1], enc[1].shape[1], pred[0].shape[1], pred[1].shape[1]]
    np.testing.assert_allclose(r.mean(0), [585.1, 293.4], atol=20)
    np.testing.assert_allclose(c.mean(0), [365.4, 100.9, 752.9, 1102.5], atol=20)


# ---------------------------------------------------------------- determinism, pickling, config

@pytest.mark.parametrize("mask_cfg,grid", [(VITL_MASK, VITL_GRID), (IJEPA_MASK, (16, 16)),
                                           ([dict(ratio=0.9)], VITL_GRID)])
def test_deterministic_per_seed_and_differs_across_seeds(mask_cfg, grid):
    col = MaskCollator.from_config(mask_cfg, grid)
    a, b = col.sample(8, rng(11, 3)), pickle.loads(pickle.dumps(col)).sample(8, rng(11, 3))
    other = col.sample(8, rng(11, 4))
    flat = lambda m: [s for lists in (m.ctx, m.tgt) for sets in lists for s in sets]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(flat(a), flat(b)))
    assert not all(torch.equal(x, y) for x, y in zip(flat(a), flat(other)))


@pytest.mark.parametrize("mode", ["ragged", "compat"])
def test_batch_masks_pickle_as_one_array(mode):
    """What a DataLoader worker sends: the same sets back, and no tensor inside the pickle (each tensor
    would cross through its own shared-memory segment)."""
    m = MaskCollator.from_config(VITL_MASK, VITL_GRID, mode=mode).sample(5, rng(2, 0))
    state = m.__getstate__()
    assert not any(torch.is_tensor(v) for v in state.values()) and state["flat"].dtype == np.int64
    back = pickle.loads(pickle.dumps(m))
    assert back.pairs == m.pairs and back.mask_index == m.mask_index and back.batch_size == 5
    for name in ("ctx", "tgt"):
        got, want = getattr(back, name), getattr(m, name)
        assert [len(x) for x in got] == [len(x) for x in want]
        for sets_g, sets_w in zip(got, want):
            for g, w in zip(sets_g, sets_w):
                assert g.dtype == torch.int64 and torch.equal(g, w)
    if mode == "compat":
        assert [t.shape for t in stacked(back)[0]] == [t.shape for t in stacked(m)[0]]
    empty = BatchMasks(ctx=[], tgt=[], pairs=[], mask_index=[])
    assert pickle.loads(pickle.dumps(empty)).batch_size == 0


def test_from_config_reference_key_sets():
    vjepa2 = [dict(VITL_MASK[0], full_complement=False), dict(VITL_MASK[1], full_complement=False)]
    assert len(MaskCollator.from_config(vjepa2, (8, 16, 16)).generators) == 2
    gen = MultiBlock3D((8, 16, 16), **vjepa2[0])             # **cfg from a YAML list item works
    assert gen.num_blocks == 8 and gen.spatial_scale == (0.15, 0.15)
    col = MaskCollator.from_config(IJEPA_MASK, (16, 16))      # patch_size is ignored
    assert isinstance(col.generators[0], MultiBlock2D) and col.generators[0].min_keep == 10


# ---------------------------------------------------------------- I-JEPA multiblock 2D

def test_ijepa_blocks_min_keep_and_pairs():
    cfg = dict(IJEPA_MASK, num_enc_masks=2, num_pred_masks=3)
    cfg.pop("patch_size")
    col = MaskCollator([MultiBlock2D((16, 16), **cfg)])
    fully_disjoint = total = 0
    for seed in range(10):
        m = col.sample(16, rng(seed))
        check_sets(m, 256, 16)
        assert len(m.ctx) == 2 and len(m.tgt) == 3
        assert m.pairs == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)] and m.mask_index == [0] * 6
        for b in range(16):
            tgts = [as_bool(m.tgt[k][b], 256).reshape(16, 16) for k in range(3)]
            for t in tgts:      # a target is one rectangle, never touching the last row/column
                rows, cols = np.nonzero(t)
                assert t.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1) and rows.max() < 15 and cols.max() < 15
            assert len({int(t.sum()) for t in tgts}) == 1, "one target size per batch"
            for c in range(2):
                ctx = as_bool(m.ctx[c][b], 256).reshape(16, 16)
                assert ctx.sum() > 10                       # min_keep
                # outside the first k targets, k = 3 - relaxations (the reference's `tries`)
                assert any(not any((ctx & t).any() for t in tgts[:k]) for k in range(4))
                fully_disjoint += not any((ctx & t).any() for t in tgts)
                total += 1
    assert fully_disjoint / total > 0.9


def test_ijepa_allow_overlap_gives_square_context():
    cfg = dict(IJEPA_MASK, allow_overlap=True)
    cfg.pop("patch_size")
    m = MaskCollator([MultiBlock2D((16, 16), **cfg)]).sample(8, rng(0))
    for b in range(8):
        ctx = as_bool(m.ctx[0][b], 256).reshape(16, 16)
        rows, cols = np.nonzero(ctx)
        assert np.ptp(rows) == np.ptp(cols) and ctx.sum() == (np.ptp(rows) + 1) ** 2


def test_ijepa_compat_and_reference_stats():
    # reference (ijepa/src/masks/multiblock.py, this config): truncated at batch 32: ctx 75.8, tgt 44.2;
    # untruncated (batch 1): ctx 110.0, tgt 44.2
    compat = MaskCollator.from_config(IJEPA_MASK, (16, 16), "compat")
    ragged = MaskCollator.from_config(IJEPA_MASK, (16, 16), "ragged")
    kc, kt, rc = [], [], []
    for i in range(60):
        r = ragged.sample(32, rng(9, i))
        enc, pred = stacked(compat.sample(32, rng(9, i)))
        k = min(len(s) for s in r.ctx[0])
        assert enc[0].shape == (32, k) and all(torch.equal(enc[0][b], r.ctx[0][b][:k]) for b in range(32))
        kc.append(k)
        kt.append(pred[0].shape[1])
        rc.append(np.mean([len(s) for s in r.ctx[0]]))
    assert abs(np.mean(kc) - 75.8) < 8 and abs(np.mean(kt) - 44.2) < 3 and abs(np.mean(rc) - 110.0) < 8


# ---------------------------------------------------------------- tube

def test_tube_masks():
    m = MaskCollator([TubeMask(VITL_GRID, ratio=0.9)], "compat").sample(4, rng(0))
    enc, pred = stacked(m)
    assert enc[0].shape == (4, 19 * 8) and pred[0].shape == (4, 1568 - 19 * 8)
    for b in range(4):
        ctx_TS = as_bool(m.ctx[0][b], 1568).reshape(8, 196)
        assert (ctx_TS == ctx_TS[0]).all(), "the same spatial positions in every frame"


# ---------------------------------------------------------------- errors name the bad parameter

@pytest.mark.parametrize("make,name", [
    (lambda: MultiBlock3D(VITL_GRID, spatial_scale=(0.0, 0.5)), "spatial_scale"),
    (lambda: MultiBlock3D(VITL_GRID, spatial_scale=(0.5, 1.2)), "spatial_scale"),
    (lambda: MultiBlock3D(VITL_GRID, temporal_scale=(0.8, 0.5)), "temporal_scale"),
    (lambda: MultiBlock3D(VITL_GRID, aspect_ratio=(0.0, 1.0)), "aspect_ratio"),
    (lambda: MultiBlock3D(VITL_GRID, num_blocks=0), "num_blocks"),
    (lambda: MultiBlock3D(VITL_GRID, max_temporal_keep=0.0), "max_temporal_keep"),
    (lambda: MultiBlock3D(VITL_GRID, max_keep=0), "max_keep"),
    (lambda: MultiBlock3D((0, 14, 14)), "grid"),
    (lambda: MultiBlock3D((14, 14)), "grid"),
    (lambda: MultiBlock3D(VITL_GRID, spatial_scale=(1, 1), temporal_scale=(1, 1), aspect_ratio=(1, 1)),
     "spatial_scale"),
    (lambda: MultiBlock2D((1, 16)), "grid"),
    (lambda: MultiBlock2D((16, 16), pred_mask_scale=(0.01, 0.2), min_keep=10), "min_keep"),
    (lambda: MultiBlock2D((16, 16), enc_mask_scale=(0.5, 1.5)), "enc_mask_scale"),
    (lambda: MultiBlock2D((16, 16), num_pred_masks=0), "num_pred_masks"),
    (lambda: TubeMask(VITL_GRID, ratio=1.0), "ratio"),
    (lambda: MaskCollator.from_config([dict(VITL_MASK[0], foo=1)], VITL_GRID), "mask.0.foo"),
    (lambda: MaskCollator.from_config([VITL_MASK[0], dict(VITL_MASK[1], spatial_scale=[0.7, 2])], VITL_GRID),
     "mask.1.spatial_scale"),
    (lambda: MaskCollator.from_config(VITL_MASK, VITL_GRID, mode="pad"), "mode"),
])
def test_errors_name_the_parameter(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_tube_and_complement_options_from_yaml():
    from engine.config import ConfigError, load_config
    base = {"data": {"crop_size": 32, "patch_size": 8, "num_frames": 4, "tubelet_size": 2},
            "model": {"model_name": "vit_tiny"}}
    cfg = load_config(raw=dict(base, mask=[{"ratio": 0.75}, dict(VITL_MASK[0], pred_full_complement=True),
                                           dict(VITL_MASK[1], inv_block=True)]))
    col = MaskCollator.from_config(cfg.mask, cfg.token_grid)
    tube, pfc, inv = col.generators
    assert isinstance(tube, TubeMask) and tube.ratio == 0.75
    assert pfc.pred_full_complement and inv.inv_block
    m = col.sample(3, rng(0))
    for b in range(3):   # pred_full_complement: the context is everything the target is not
        assert m.ctx[1][b].numel() + m.tgt[1][b].numel() == col.num_tokens
    with pytest.raises(ConfigError, match=r"mask\.0\.num_blocks: a tube mask entry"):
        load_config(raw=dict(base, mask=[{"ratio": 0.75, "num_blocks": 2}]))
    with pytest.raises(ConfigError, match=r"mask\.0\.ratio"):
        load_config(raw=dict(base, mask=[{"ratio": 1.5}]))


def test_generators_import_only_the_shared_checks():
    """No cycle: the generators import engine.masks.common, never the collator that builds them."""
    import ast
    from pathlib import Path
    root = Path(__file__).resolve().parents[2] / "engine" / "masks"
    for name in ("multiblock2d.py", "multiblock3d.py", "tube.py", "common.py"):
        tree = ast.parse((root / name).read_text())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in mods if m.startswith("engine.") and m != "engine.masks.common"}, (name, mods)
