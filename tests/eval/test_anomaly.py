"""Surprise and embeddings: impossible-event pairs differ only from their event frame on; the per-token
surprise of one mask set is the JEPA loss's own error; future masks score every later token once; ROC
AUC is the rank statistic; the anomaly and embed commands write their files (the HiPlot page loads)."""
import html
import json
from csv import DictReader

import numpy as np
import pytest
import torch

from engine.config import ConfigError, load_config
from engine.datagen.synthetic import EVENTS, generate_events, render_event_clip
from engine.eval.__main__ import main
from engine.eval.anomaly import (clip_scores, future_masks, load_jepa, next_step_surprise, pair_scores, pixel_jump,
                                 pixel_surprise, roc_auc, token_surprise)

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
        # and the event's clip-level AUC: its one impossible clip ranked among the three possible ones
        rank = np.mean([(pix[paths[2 * i + 1]] > pix[p]) + 0.5 * (pix[paths[2 * i + 1]] == pix[p]) for p in paths[::2]])
        assert f["roc_auc_by_event"][event]["pixel"] == pytest.approx(rank)
    assert set(f["roc_auc_by_event"]) == set(EVENTS)
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


# The action-free world model of configs/ac_events_tiny_cpu.yaml, shrunk: 8 frames of 32 px (2 x 2 tokens a
# frame), a one-block encoder left at its random init, a one-block predictor.
AC_SMALL = ["data.crop_size=32", "data.dataset_fpcs=[8]", "data.num_frames=8", "data.batch_size=2",
            "data.num_workers=0", "meta.pretrain_checkpoint=null", "model.depth=1", "model.pred_depth=1",
            "model.pred_embed_dim=24", "model.pred_num_heads=2", "logging.tensorboard=false"]


def world_model(*overrides):
    return load_jepa(load_config("configs/ac_events_tiny_cpu.yaml", AC_SMALL + list(overrides)), random_init=True,
                     seed=1)


def test_surprise_clips_are_the_whole_frames_as_trained(tmp_path):
    """The scored clip is the video's own frames at the crop size (here the video's size), normalised, from
    frame 0: no evaluation zoom, so objects keep their trained sizes, speeds and patch alignment."""
    import av
    from engine.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from engine.eval.anomaly import surprise_dataset
    csv = generate_events(tmp_path / "ev", 1, num_frames=8, size=32, world="lattice", cell=8, blocks=1)
    ds = surprise_dataset(load_config("configs/ac_events_tiny_cpu.yaml", AC_SMALL), csv)
    clip = ds[0][0]
    with av.open(csv.read_text().split()[0]) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    want = (torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)) \
        / torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    grey = 1 / 255 / min(IMAGENET_STD)             # one grey level, normalised
    assert clip.shape == (3, 8, 32, 32)
    # up to the decoders' YUV -> RGB rounding (a few grey levels); a zoomed view moves edges by whole pixels
    assert (clip - want).abs().max() < 4 * grey and (clip - want).abs().mean() < 0.5 * grey


def test_next_step_surprise_is_the_teacher_forced_error_of_each_frame():
    """A frame's surprise is the model's own loss (|z - h|^p / p, loss.loss_exp 2 here) on its next-step
    prediction from the frames before it: the teacher-forced pass of training for 'all' (its mean is the
    training loss; no later frame leaks in: the same as the predictor run on the past alone), the window's
    frames alone for a window; several windows average; frame 0 is unscored.
    (Not residual: at its init a residual predictor's output is nearly its input's last frame whatever the
    window.)"""
    model = world_model("model.pred_residual=false")
    clips = torch.randn(3, 3, 8, 32, 32, generator=torch.Generator().manual_seed(2))
    n = model.tokens_per_frame
    err_BN, count_BN, set_BS = next_step_surprise(model, clips)
    assert err_BN.shape == (3, 8 * n) and set_BS.shape == (3, 7)
    assert (count_BN[:, :n] == 0).all() and (count_BN[:, n:] == 1).all() and (err_BN[:, :n] == 0).all()
    assert model.loss_exp == 2.0
    own_loss = lambda z, h: ((z - h) ** 2).mean(-1) / 2      # noqa: E731
    with torch.no_grad():
        h_BND = model.encode(clips)
        z_tf, _ = model.predictions(h_BND)
        torch.testing.assert_close(err_BN[:, n:], own_loss(z_tf, h_BND[:, n:]))
        torch.testing.assert_close(err_BN[:, n:].mean(), model.loss_fn(z_tf, h_BND))
        win_BN = torch.zeros_like(err_BN)
        for t in range(1, 8):
            alone = model.step_predictor(h_BND[:, :t * n])[:, -n:]
            torch.testing.assert_close(err_BN[:, t * n:(t + 1) * n], own_loss(alone, h_BND[:, t * n:(t + 1) * n]))
            past = model.step_predictor(h_BND[:, max(0, t - 2) * n:t * n])[:, -n:]
            win_BN[:, t * n:(t + 1) * n] = own_loss(past, h_BND[:, t * n:(t + 1) * n])
    two_BN, _, _ = next_step_surprise(model, clips, context=2)
    torch.testing.assert_close(two_BN, win_BN)
    both_BN, count2_BN, set2_BS = next_step_surprise(model, clips, context=[2, None])
    torch.testing.assert_close(both_BN[:, 2 * n:], (two_BN[:, 2 * n:] + err_BN[:, 2 * n:]) / 2)
    assert (count2_BN[:, n:3 * n] == 1).all() and (count2_BN[:, 3 * n:] == 2).all() and set2_BS.shape == (3, 7 + 5)
    assert (err_BN[:, 2 * n:] - two_BN[:, 2 * n:]).abs().amax() > 1e-4    # the windows do differ
    # start: frames before it are context only (count 0), the later ones scored as before
    late_BN, count3_BN, set3_BS = next_step_surprise(model, clips, context=[2, None], start=3)
    assert (count3_BN[:, :3 * n] == 0).all() and (late_BN[:, :3 * n] == 0).all() and set3_BS.shape == (3, 5 + 5)
    torch.testing.assert_close(late_BN[:, 3 * n:], both_BN[:, 3 * n:])
    torch.testing.assert_close(clip_scores(late_BN, count3_BN, (8, 2, 2))["max"], both_BN[:, 3 * n:].amax(1))
    with pytest.raises(ConfigError, match="--start 8: the clips have 8 time steps"):
        next_step_surprise(model, clips, start=8)


def test_next_step_surprise_of_a_predictor_of_no_change_is_the_copy_of_the_last_frame():
    """The residual predictor outputting no change predicts each frame as the one before it, whatever the
    window."""
    model = world_model()
    with torch.no_grad():
        model.predictor.predictor_proj.weight.zero_()
        model.predictor.predictor_proj.bias.zero_()
    clips = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(4))
    n = model.tokens_per_frame
    with torch.no_grad():
        h_BND = model.encode(clips)
    copy_BN = ((h_BND[:, n:] - h_BND[:, :-n]) ** 2).mean(-1) / 2     # the model's loss: L2 (loss.loss_exp 2)
    for context in (None, 1, [1, 3, None]):
        err_BN, _, _ = next_step_surprise(model, clips, context=context)
        torch.testing.assert_close(err_BN[:, n:], copy_BN, rtol=1e-4, atol=1e-4)


def test_anomaly_command_scores_a_trained_action_free_world_model(tmp_path, capsys):
    """End to end: an action-free predictor trained on generated possible videos, then the anomaly command on
    generated pairs scores each clip frame by frame (a step is one frame: 8 steps of 2 x 2 tokens); the
    V-JEPA-only masked mode is refused by name, and so is planning with it."""
    from engine.train import main as train
    from tests.tiny_runs import train_args
    csv = generate_events(tmp_path / "ev", 3, num_frames=8, size=32, **SCENE)
    possible = tmp_path / "possible.csv"
    possible.write_text("".join(line + "\n" for line in csv.read_text().splitlines() if line.endswith(" 0")))
    run = tmp_path / "run"
    r = train(train_args("configs/ac_events_tiny_cpu.yaml", run, AC_SMALL + [f"data.datasets=[{possible}]",
                         "optimization.ipe=2", "optimization.epochs=1", "optimization.warmup=0"]))
    assert r["steps"] == 2 and np.isfinite(r["last_loss"])
    out = tmp_path / "anomaly"
    f = main(["anomaly", "--config", str(run / "config.yaml"), "--checkpoint", str(run), "--data", str(csv),
              "--output", str(out), "--context", "1", "all", "--events", str(csv.with_name("events.events.csv"))])
    assert f["clips"] == 6 and set(f["pairs"]) == {"all", *EVENTS}
    assert set(f["roc_auc"]) == {"mean", "max", "frame_max", "frame_ratio", "step_jump", "pooled_max", "pixel",
                                 "pixel_jump"}
    err = np.load(out / "token_surprise.npy")
    assert err.shape == (6, 8 * 4) and (err[:, :4] == 0).all() and (err[:, 4:] > 0).all()
    rows = csv_rows(out / "surprise.csv")
    assert len(rows) == 6 and all(float(r["surprise_step_jump"]) > 0 for r in rows)
    with pytest.raises(SystemExit):
        main(["anomaly", "--config", str(run / "config.yaml"), "--checkpoint", str(run), "--data", str(csv),
              "--output", str(out), "--mode", "masked"])
    assert "--mode: a world model" in capsys.readouterr().err
    g = main(["anomaly", "--config", str(run / "config.yaml"), "--checkpoint", str(run), "--data", str(csv),
              "--output", str(out), "--start", "3"])
    err = np.load(out / "token_surprise.npy")
    assert g["start"] == 3 and (err[:, :3 * 4] == 0).all() and (err[:, 3 * 4:] > 0).all()
    for extra, named in ((["--start", "0"], "--start 0: the first scored time step"),
                         (["--start", "8"], "--start 8: the clips have 8 time steps")):
        with pytest.raises(SystemExit):
            main(["anomaly", "--config", str(run / "config.yaml"), "--checkpoint", str(run), "--data", str(csv),
                  "--output", str(out)] + extra)
        assert named in capsys.readouterr().err
    from engine.planning.world_model import load_world_model
    with pytest.raises(ValueError, match="nothing to plan with"):
        load_world_model(run)
