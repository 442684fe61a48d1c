"""Surprise and embeddings: impossible-event pairs differ only from their event frame on; the per-token
surprise of one mask set is the JEPA loss's own error; future masks score every later token once; ROC
AUC is the rank statistic; the anomaly and embed commands write their files (the HiPlot page loads)."""
import html
import json

import numpy as np
import pytest
import torch

from engine.config import load_config
from engine.datagen.synthetic import EVENTS, generate_events, render_event_clip
from engine.eval.__main__ import main
from engine.eval.anomaly import clip_scores, future_masks, load_jepa, roc_auc, token_surprise

SCENE = dict(actors=2, radius=(6, 10), distractors=0, background="plain")


@pytest.mark.parametrize("event", EVENTS)
def test_event_pairs_differ_only_from_the_event_on(event):
    ok, k = render_event_clip(event, False, np.random.default_rng(5), 16, 64, 8, **SCENE)
    bad, k2 = render_event_clip(event, True, np.random.default_rng(5), 16, 64, 8, **SCENE)
    assert k == k2 and 16 // 3 <= k <= 2 * 16 // 3
    diff_T = np.abs(ok.astype(int) - bad).reshape(16, -1).max(1)
    assert (diff_T[:k] == 0).all(), diff_T          # the same scene up to the event
    assert (diff_T[k + 1:] > 100).all(), diff_T      # an object elsewhere (or gone) after it


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
    err, n = token_surprise(model, clips, sets)
    T, H, W = model.encoder.grid
    assert len(sets) == T - 1 and (n[:, :H * W] == 0).all() and (n[:, H * W:] == 1).all()
    # one mask set: the clip mean of the token errors is the JEPA loss of that set (per-token mean L1)
    with torch.no_grad():
        loss, _ = model(clips, sets[-1])
    e1, n1 = token_surprise(model, clips, sets[-1:])
    assert float(clip_scores(e1, n1)["mean"].mean()) == pytest.approx(float(loss), rel=1e-5)
    torch.testing.assert_close(e1[:, -H * W:], err[:, -H * W:])   # each token scored alone


def test_anomaly_and_embed_commands(eval_yaml, tmp_path):
    csv = generate_events(tmp_path / "ev", 3, num_frames=8, size=32, **SCENE)
    out = tmp_path / "anomaly"
    r = main(["anomaly", "--config", "configs/tiny_cpu.yaml", "--set", "data.crop_size=32", "--random-init",
              "--data", str(csv), "--output", str(out), "--mode", "masked", "--masks", "2"])
    rows = (out / "surprise.csv").read_text().splitlines()
    assert rows[0] == "path,label,surprise_mean,surprise_max,pixel_difference" and len(rows) == 7
    assert set(r["roc_auc"]) == {"mean", "max", "pixel"} and json.loads((out / "anomaly.json").read_text())["clips"] == 6
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
