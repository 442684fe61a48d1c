"""Surprise and embeddings: impossible-event pairs differ only from their event frame on; the per-token
surprise of one mask set is the JEPA loss's own error; future masks score every later token once; ROC
AUC is the rank statistic; the anomaly and embed commands write their files (the HiPlot page loads)."""
import html
import json
from csv import DictReader

import numpy as np
import pytest
import torch

from engine.config import load_config
from engine.datagen.synthetic import EVENTS, generate_events, render_event_clip
from engine.eval.__main__ import main
from engine.eval.anomaly import (clip_scores, future_masks, load_jepa, pair_scores, pixel_jump, pixel_surprise,
                                 roc_auc, token_surprise)

def csv_rows(path):
    with open(path, newline="") as f:
        return list(DictReader(f))


SCENE = dict(actors=2, radius=(6, 10), distractors=0, background="plain")


@pytest.mark.parametrize("event", EVENTS)
def test_event_pairs_differ_only_from_the_event_on(event):
    ok, k = render_event_clip(event, False, np.random.default_rng(5), 16, 64, 8, **SCENE)
    bad, k2 = render_event_clip(event, True, np.random.default_rng(5), 16, 64, 8, **SCENE)
    assert k == k2 and 16 // 3 <= k <= 2 * 16 // 3
    diff_T = np.abs(ok.astype(int) - bad).reshape(16, -1).max(1)
    assert (diff_T[:k] == 0).all(), diff_T          # the same scene up to the event
    assert (diff_T[k + 1:] > 100).all(), diff_T      # an object elsewhere (or gone) after it


def test_event_object_radius_and_speed_options():
    def vanished_pixels(**kw):   # pixels that differ in the last frame: the vanished object's area
        ok, _ = render_event_clip("vanish", False, np.random.default_rng(3), 16, 64, 8, **SCENE, **kw)
        bad, _ = render_event_clip("vanish", True, np.random.default_rng(3), 16, 64, 8, **SCENE, **kw)
        return int((np.abs(ok[-1].astype(int) - bad[-1]).max(-1) > 30).sum())
    small, big = vanished_pixels(), vanished_pixels(event_radius=(14, 14))
    assert 0 < small < 350 < 450 < big < 900, (small, big)   # radius 6-10 vs 14 (an area of ~615 px)

    def clip(speed):
        ok, _ = render_event_clip("teleport", False, np.random.default_rng(3), 16, 64, 8, **SCENE,
                                  event_speed=(speed, speed))
        return ok
    slow, fast = clip(4.0), clip(40.0)
    assert not np.array_equal(slow, fast) and np.array_equal(slow[0], fast[0])   # the same scene, moving apart


def test_roc_auc_is_the_rank_statistic():
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0]) == 0.0
    assert roc_auc([0.5, 0.5], [1, 0]) == 0.5
    g = np.random.default_rng(0)
    s, y = g.normal(size=40), g.integers(0, 2, 40)
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in s[y == 1] for b in s[y == 0]])
    assert roc_auc(s, y) == pytest.approx(brute)
    with pytest.raises(ValueError, match="both"):
        roc_auc([1, 2], [1, 1])


@pytest.fixture(scope="module")
def tiny_model():
    cfg = load_config("configs/tiny_cpu.yaml", ["loss.std_coeff=0", "loss.cov_coeff=0", "data.crop_size=32"])
    return cfg, load_jepa(cfg, random_init=True, seed=1)


def test_future_surprise_is_the_loss_error_of_each_token(tiny_model):
    cfg, model = tiny_model
    clips = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    sets = future_masks(model.encoder.grid, 2)
    err, n, set_err = token_surprise(model, clips, sets)
    T, H, W = model.encoder.grid
    assert len(sets) == T - 1 and (n[:, :H * W] == 0).all() and (n[:, H * W:] == 1).all()
    assert set_err.shape == (2, T - 1)
    # one mask set: the clip mean of the token errors is the JEPA loss of that set (per-token mean L1)
    with torch.no_grad():
        loss, _ = model(clips, sets[-1])
    e1, n1, s1 = token_surprise(model, clips, sets[-1:])
    assert float(clip_scores(e1, n1, model.encoder.grid)["mean"].mean()) == pytest.approx(float(loss), rel=1e-5)
    torch.testing.assert_close(e1[:, -H * W:], err[:, -H * W:])   # each token scored alone
    torch.testing.assert_close(s1[:, 0], set_err[:, -1])


def test_pooled_surprise_is_the_error_of_the_mean_prediction(tiny_model):
    from engine.jepa import plan_packing
    cfg, model = tiny_model
    clips = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    sets = future_masks(model.encoder.grid, 2)
    _, _, set_err = token_surprise(model, clips, sets)
    T, H, W = model.encoder.grid
    N = T * H * W
    with torch.no_grad():   # step t's targets are all its tokens: pool the prediction and the target over them
        h_BND = torch.nn.functional.layer_norm(model.target_encoder.forward_dense(model.target_encoder.embed(clips)),
                                               (model.encoder.embed_dim,))
        plan = plan_packing(sets[0], 2, N)
        z = model.encoder.forward_packed(model.encoder.embed(clips), plan.ctx)
        p_BSD = model.predictor.forward_packed(z, plan.ctx_pairs, plan.tgt, plan.mask_index_S).view(2, H * W, -1)
    want_B = (p_BSD.mean(1) - h_BND[:, H * W:2 * H * W].mean(1)).abs().mean(-1)
    torch.testing.assert_close(set_err[:, 0], want_B, rtol=1e-4, atol=1e-6)
    # pooling forgets where: the error of the mean is at most the mean of the token errors
    err, n, _ = token_surprise(model, clips, sets[:1])
    assert (set_err[:, 0] <= clip_scores(err, n, model.encoder.grid)["mean"] + 1e-6).all()


def test_future_masks_context_window():
    T, H, W = 4, 2, 3
    full, win = future_masks((T, H, W), 2), future_masks((T, H, W), 2, context=1)
    assert len(full) == len(win) == T - 1
    for t, (f, w) in enumerate(zip(full, win), start=1):
        assert f.ctx[0][0].tolist() == list(range(t * H * W))                   # every earlier step
        assert w.ctx[0][0].tolist() == list(range((t - 1) * H * W, t * H * W))  # the one step before t
        assert f.tgt[0][0].tolist() == w.tgt[0][0].tolist() == list(range(t * H * W, (t + 1) * H * W))
    assert [m.ctx[0][0].numel() for m in future_masks((T, H, W), 1, context=2)] == [6, 12, 12]
    with pytest.raises(ValueError, match="context"):
        future_masks((T, H, W), 1, context=0)
    # several windows: one set per distinct (first context step, target step); at t = 1 both are all the past
    spans = [(int(m.ctx[0][0][0]) // (H * W), int(m.tgt[0][0][0]) // (H * W))
             for m in future_masks((T, H, W), 1, context=[1, None])]
    assert spans == [(0, 1), (1, 2), (2, 3), (0, 2), (0, 3)]
    with pytest.raises(ValueError, match="context"):
        future_masks((T, H, W), 1, context=[2, 0])


def test_surprise_over_several_windows_is_their_mean(tiny_model):
    cfg, model = tiny_model
    clips = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(2))
    grid = model.encoder.grid
    one, _, _ = token_surprise(model, clips, future_masks(grid, 2, context=1))
    full, _, _ = token_surprise(model, clips, future_masks(grid, 2))
    both, n, _ = token_surprise(model, clips, future_masks(grid, 2, context=[1, None]))
    per_t = grid[1] * grid[2]
    assert (n[:, per_t:2 * per_t] == 1).all() and (n[:, 2 * per_t:] == 2).all()
    torch.testing.assert_close(both[:, per_t:], (one[:, per_t:] + full[:, per_t:]) / 2)
    assert not torch.allclose(one[:, 2 * per_t:], full[:, 2 * per_t:])   # the windows do predict differently


def test_residual_surprise_with_no_predicted_change_is_the_copy_of_the_last_step():
    """model.pred_residual with a predictor that outputs no change: a token's future surprise (one step of
    context) is the L1 between its target and its position's context feature one step before."""
    cfg = load_config("configs/tiny_cpu.yaml", ["loss.std_coeff=0", "loss.cov_coeff=0", "data.crop_size=32",
                                                "model.pred_residual=true"])
    model = load_jepa(cfg, random_init=True, seed=1)
    with torch.no_grad():
        model.predictor.predictor_proj.weight.zero_()
        model.predictor.predictor_proj.bias.zero_()
    clips = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(4))
    T, H, W = model.encoder.grid
    S = H * W
    err_BN, _, _ = token_surprise(model, clips, future_masks((T, H, W), 2, context=1))
    with torch.no_grad():
        h_BND = model.target_encoder.forward_dense(model.target_encoder.embed(clips))
        h_BND = torch.nn.functional.layer_norm(h_BND, (h_BND.shape[-1],))
        for t in range(1, T):
            z_BSD = model.encoder(clips, masks=[torch.arange((t - 1) * S, t * S).expand(2, -1)])
            z_BSD = torch.nn.functional.layer_norm(z_BSD, (z_BSD.shape[-1],))
            copy_BS = (z_BSD - h_BND[:, t * S:(t + 1) * S]).abs().mean(-1)
            torch.testing.assert_close(err_BN[:, t * S:(t + 1) * S], copy_BS, rtol=1e-4, atol=1e-5)


def test_frame_max_scores_whole_steps_not_single_tokens():
    grid = (3, 2, 2)   # 3 time steps of 4 tokens; step 0 is context only (count 0)
    err = torch.zeros(2, 12)
    n = torch.ones(2, 12)
    n[:, :4] = 0
    err[:, :4] = 100.0                 # unscored tokens never count
    err[0, 9] = 4.0                    # clip 0: one token far off (an object where none was predicted)
    err[1, 4:8] = 2.0                  # clip 1: a whole step off by 2
    s = clip_scores(err, n, grid)
    torch.testing.assert_close(s["max"], torch.tensor([4.0, 2.0]))
    torch.testing.assert_close(s["frame_max"], torch.tensor([1.0, 2.0]))   # step means: [0, 1] and [2, 0]
    torch.testing.assert_close(s["mean"], torch.tensor([0.5, 1.0]))
    err[:, 4:] += 1.0                  # the largest over the smallest scored step mean: [2, 1] / [1, 1] etc.
    torch.testing.assert_close(clip_scores(err, n, grid)["frame_ratio"], torch.tensor([2.0 / 1.0, 3.0 / 1.0]))
    torch.testing.assert_close(clip_scores(err * 5, n, grid)["frame_ratio"], torch.tensor([2.0, 3.0]))  # scale-free


def test_step_jump_is_the_largest_change_between_scored_steps_either_way():
    grid = (4, 1, 2)   # 4 time steps of 2 tokens; step 0 unscored
    n = torch.ones(3, 8)
    n[:, :2] = 0
    step_BT = torch.tensor([[9.0, 0.5, 0.5, 0.5],     # flat after the unscored step: no jump (step 0 never counts)
                            [9.0, 0.5, 0.9, 0.8],     # the error rises at step 2 (an object where none was)
                            [9.0, 0.5, 0.5, 0.2]])    # the error drops at step 3 (an object gone)
    err = step_BT.repeat_interleave(2, dim=1)
    err[:, 6] += 0.1                                   # a step's mean, not a token, is compared: step 3 +0.05
    err[:, 7] -= 0.1
    torch.testing.assert_close(clip_scores(err, n, grid)["step_jump"], torch.tensor([0.0, 0.4, 0.3]))
    n[2, 4:6] = 0                                      # clip 2's step 2 unscored: steps 1 and 3 are not neighbours
    torch.testing.assert_close(clip_scores(err, n, grid)["step_jump"][2], torch.tensor(0.0))


def test_pixel_baselines():
    clips = torch.zeros(2, 3, 4, 2, 2)
    clips[0, :, 2:] = 1.0                              # clip 0: one change of 1 between frames 1 and 2
    clips[1, :, 1:] = torch.arange(1, 4.0).view(3, 1, 1) * 0.5   # clip 1: steady change of 0.5 per frame
    torch.testing.assert_close(pixel_surprise(clips), torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(pixel_jump(clips), torch.tensor([1.0, 0.0]))   # frame changes [0, 1, 0] / [.5, .5, .5]
    clips[1, :, 0] = 0.5                               # clip 1 now still, then steady: [0, .5, .5]
    torch.testing.assert_close(pixel_jump(clips), torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(pixel_surprise(clips), torch.tensor([1.0, 0.5]))


def test_pair_scores_compare_each_clip_with_its_own_pair():
    # scenes differ a lot (pair 1 is noisy everywhere), the event adds a little: only pairs reveal it
    scores = [10.0, 10.5, 1.0, 1.2, 5.0, 4.0]
    labels = [0, 1, 0, 1, 1, 0]
    pairs = [1, 1, 7, 7, 3, 3]
    r = pair_scores(scores, labels, pairs)
    assert r["pairs"] == 3 and r["pair_acc"] == pytest.approx(1.0)
    assert roc_auc(scores, labels) == pytest.approx(6 / 9)           # unpaired, the scene dominates
    assert r["relative_auc"] == pytest.approx(1.0)                    # d = 0.5, 0.2, 1.0: all positive
    r2 = pair_scores([1.0, 0.0, 1.0, 3.0], [1, 0, 1, 0], [0, 0, 1, 1])  # d = +1, -2
    assert r2["pair_acc"] == pytest.approx(0.5)
    # relative scores +-d/2: positives {0.5, -1}, negatives {-0.5, 1}: 0.5 > -0.5 only
    assert r2["relative_auc"] == pytest.approx(0.25)
    assert pair_scores([2.0, 2.0], [0, 1], [4, 4])["pair_acc"] == 0.5   # ties count half
    with pytest.raises(ValueError, match="one clip labelled 0 and one labelled 1"):
        pair_scores([1.0, 2.0, 3.0], [0, 1, 0], [0, 0, 1])
    with pytest.raises(ValueError, match="two clips labelled 1"):
        pair_scores([1.0, 2.0, 3.0], [0, 1, 1], [0, 0, 0])


def test_anomaly_and_embed_commands(eval_yaml, tmp_path, capsys):
    csv = generate_events(tmp_path / "ev", 3, num_frames=8, size=32, **SCENE)
    out = tmp_path / "anomaly"
    r = main(["anomaly", "--config", "configs/tiny_cpu.yaml", "--set", "data.crop_size=32", "--random-init",
              "--data", str(csv), "--output", str(out), "--mode", "masked", "--masks", "2"])
    rows = (out / "surprise.csv").read_text().splitlines()
    assert rows[0] == ("path,label,surprise_mean,surprise_max,surprise_frame_max,surprise_frame_ratio,"
                       "surprise_step_jump,surprise_pooled_max,pixel_difference,pixel_jump") and len(rows) == 7
    assert set(r["roc_auc"]) == {"mean", "max", "frame_max", "frame_ratio", "step_jump", "pooled_max", "pixel",
                                 "pixel_jump"}
    assert "pairs" not in r
    assert json.loads((out / "anomaly.json").read_text())["clips"] == 6
    events_csv = csv.with_name("events.events.csv")
    f = main(["anomaly", "--config", "configs/tiny_cpu.yaml", "--set", "data.crop_size=32", "--random-init",
              "--data", str(csv), "--output", str(out), "--context", "2", "all", "--events", str(events_csv)])
    assert f["context"] == [2, None] and set(f["pairs"]) == {"all", *EVENTS}
    # one pair per event: its accuracy is 0, 1/2 or 1, and the pixel baseline's is the rank of the pair's two
    # clips' largest frame change (the impossible clip's jump, gap or overlap is measured on decoded frames)
    pix = {r["path"]: float(r["pixel_difference"]) for r in csv_rows(out / "surprise.csv")}
    paths = csv.read_text().split()[::2]
    for i, event in enumerate(EVENTS):
        want = float(pix[paths[2 * i + 1]] > pix[paths[2 * i]]) + 0.5 * (pix[paths[2 * i + 1]] == pix[paths[2 * i]])
        assert f["pairs"][event]["pixel"]["pairs"] == 1 and f["pairs"][event]["pixel"]["pair_acc"] == want
    other = tmp_path / "other.events.csv"
    other.write_text("path,label,event,pair,event_frame\n")
    with pytest.raises(SystemExit):   # an events file of other videos: one line naming the option and file
        main(["anomaly", "--config", "configs/tiny_cpu.yaml", "--set", "data.crop_size=32", "--random-init",
              "--data", str(csv), "--output", str(out), "--events", str(other)])
    assert f"--events: {other} does not list" in capsys.readouterr().err
    assert np.load(out / "token_surprise.npy").shape == (6, 64)
    e = main(["embed", "--config", str(eval_yaml)])   # the config's folder (and its feature cache)
    page = html.unescape((eval_yaml.parent / "out" / "embed_val.html").read_text())
    assert e["rows"] == 6 and "<html" in page.lower()
    for line in load_eval_config_paths(eval_yaml):
        assert line in page                        # every sample's metadata is in the page's data
    assert "pc1" in page and (eval_yaml.parent / "out" / "embed_val_pca.png").stat().st_size > 1000


def load_eval_config_paths(path):
    from engine.data.datasets import read_index_csv
    from engine.eval.config import load_eval_config
    return read_index_csv(load_eval_config(path).data.dataset_val)[0]
