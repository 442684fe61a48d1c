"""The eval commands on generated videos: multi-clip x multi-view features (the reference's shapes),
cached once and reused, the same as streamed ones; the probe grid, kNN and linear probe write results;
the grid finds a signal; kNN votes by cosine similarity; test-time views are the reference's crops."""
import json

import numpy as np
import pytest
import torch

from engine.eval.__main__ import main
from engine.eval.config import load_eval_config
from engine.eval.features import MultiViewTransform, build_encoder, feature_sources
from engine.eval.grid import train_grid
from engine.eval.knn import knn_classify


def test_features_cached_streamed_and_shaped(eval_yaml, tmp_path):
    ec = load_eval_config(eval_yaml)
    enc = build_encoder(ec)                       # loads the checkpoint (prefixes dropped, strictly)
    shared = eval_yaml.parent / "out"   # the config's folder: the cache the command tests read too
    train, val = feature_sources(ec, enc, shared, log=lambda *_: None)
    x, y = next(val.batches(batch_size=6))
    # [M, V views, S segments, N tokens (2 x 4 x 4 per 4-frame clip), D]
    assert x.shape == (6, 2, 2, 32, 192) and y.tolist() == [0, 1, 2, 0, 1, 2]
    assert train.x.shape == (12, 2, 2, 32, 192)   # two augmented copies of one view
    e0 = next(train.batches(epoch=0, batch_size=12))[0]
    e1 = next(train.batches(epoch=1, batch_size=12))[0]
    assert not torch.equal(e0, e1)                # epoch 1 reads the other augmented copy
    ec.features.cache, ec.features.num_workers = "never", 1   # decoded in a DataLoader worker
    _, val_s = feature_sources(ec, enc, tmp_path / "s", log=lambda *_: None)
    torch.testing.assert_close(next(val_s.batches(batch_size=6))[0], x, rtol=0, atol=0)
    ec.features.cache = "always"
    logs = []
    feature_sources(ec, enc, shared, log=logs.append)
    assert all("reusing" in m for m in logs), logs


@pytest.mark.parametrize("free_gib, cached", [(64, True), (0.5, False)])
def test_auto_cache_follows_free_disk(eval_yaml, tmp_path, monkeypatch, free_gib, cached):
    # cache: auto writes features to disk only when they fit with a margin left; otherwise it streams
    import shutil
    from engine.eval import features
    ec = load_eval_config(eval_yaml)
    ec.features.cache = "auto"
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(features.shutil, "disk_usage",
                        lambda _: usage._replace(free=int(free_gib * (1 << 30))))
    logs = []
    feature_sources(ec, build_encoder(ec), tmp_path, log=logs.append)
    assert bool(list((tmp_path / "features").glob("val_*.npy"))) == cached, logs
    assert any("streaming" in m for m in logs) != cached, logs


def test_commands_write_results(eval_yaml):
    out = eval_yaml.parent / "out"     # the config's folder: its feature cache is shared by the eval tests
    r = main(["probe", "--config", str(eval_yaml)])
    saved = json.loads((out / "probe.json").read_text())
    assert len(saved["heads"]) == 2 and len(saved["heads"][0]["val_acc"]) == 2
    assert saved["best"]["val_acc"] == max(h["val_acc"][-1] for h in saved["heads"]) == r["best"]["val_acc"]
    assert main(["knn", "--config", str(eval_yaml)])["k"] == 20
    assert 0 <= main(["linear", "--config", str(eval_yaml)])["val_acc"] <= 1
    assert (out / "knn.json").exists() and (out / "linear.json").exists()
    with pytest.raises(SystemExit):
        main(["probe", "--config", str(eval_yaml), "--set", "experiment.data.num_segmnts=2"])


def _command_on_rank(rank, argv):
    return main(argv + [f"--local_rank={rank}"])   # as the deepspeed launcher appends it


def test_two_ranks_extract_the_features_one_process_does(eval_yaml, tmp_path):
    # each rank encodes every other sample into the one cache; rank 0 alone trains and writes the result
    from engine.runtime.launch import run_local
    argv = ["knn", "--config", str(eval_yaml), "--output"]
    r0, r1 = run_local(_command_on_rank, world_size=2, args=(argv + [str(tmp_path / "two")],), timeout_s=600)
    assert r1 is None and r0["k"] == 20 and (tmp_path / "two" / "knn.json").exists()
    one = main(argv + [str(tmp_path / "one")])
    assert one["val_acc"] == r0["val_acc"]
    for split in ("train", "val"):
        [f2] = (tmp_path / "two" / "features").glob(f"{split}_*[0-9a-f].npy")
        f1 = tmp_path / "one" / "features" / f2.name      # the same key: the same data and encoder
        x1, x2 = np.load(f1), np.load(f2)
        assert x1.shape == x2.shape and np.abs(x1).max() > 0
        np.testing.assert_allclose(x2, x1, rtol=0, atol=1e-5 * np.abs(x1).max())   # batch sizes differ
        np.testing.assert_array_equal(np.load(f2.with_suffix(".labels.npy")), np.load(f1.with_suffix(".labels.npy")))
    assert not list((tmp_path / "two" / "features").glob(".*tmp*"))


class _Source:
    """Features [M, 1, 1, N, D] in memory, with the sources' batches() interface."""

    def __init__(self, x, y):
        self.x, self.y = x[:, None, None], y

    def __len__(self):
        return len(self.y)

    def batches(self, epoch=0, batch_size=64, shuffle=False, seed=0):
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(epoch)) if shuffle \
            else torch.arange(len(self.y))
        for i in range(0, len(order), batch_size):
            yield self.x[order[i:i + batch_size]], self.y[order[i:i + batch_size]]


def _signal(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 8, 24, generator=g)
    x[:, :, :3] += 3 * torch.nn.functional.one_hot(y, 3)[:, None]   # every token carries the label
    return x, y


def test_grid_finds_the_signal_and_reports_the_best():
    from engine.eval.config import HeadConfig
    heads = [HeadConfig(lr=3e-3, start_lr=3e-3), HeadConfig(lr=1e-7, start_lr=1e-7)]
    r = train_grid(_Source(*_signal(192, 0)), _Source(*_signal(96, 1)), heads=heads, embed_dim=24, num_heads=3,
                   num_classes=3, depth=1, layout="vjepa", epochs=4, batch_size=16)
    assert r["best"]["index"] == 0 and r["best"]["val_acc"] > 0.9, r["best"]
    assert r["heads"][1]["val_acc"][-1] < 0.6       # a learning rate too small to learn anything


def test_knn_votes_by_cosine():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g)
    tr_y, te_y = torch.arange(200) % 4, torch.arange(80) % 4
    tr = centres[tr_y] * torch.rand(200, 1, generator=g) * 5 + 0.3 * torch.randn(200, 16, generator=g)
    te = centres[te_y] * 0.1 + 0.03 * torch.randn(80, 16, generator=g)   # scale does not matter to a cosine
    acc, pred = knn_classify(tr, tr_y, te, te_y, k=10, temperature=0.07)
    assert acc > 0.95
    acc_noise, _ = knn_classify(torch.randn(200, 16, generator=g), tr_y, te, te_y, k=10)
    assert acc_noise < 0.5


def test_test_time_views_are_the_reference_crops():
    tf = MultiViewTransform(crop_size=16, num_views=3)
    assert tf.boxes(24, 40) == [(0, 0, 24, 24), (0, 8, 24, 24), (0, 16, 24, 24)]   # along the long side
    assert tf.boxes(40, 24) == [(0, 0, 24, 24), (8, 0, 24, 24), (16, 0, 24, 24)]
    clip = np.zeros((2, 24, 40, 3), np.uint8)
    clip[:, :, :8] = 255                      # a white band seen only by the left view
    v = tf(clip)
    assert v.shape == (3, 3, 2, 16, 16) and v[0].mean() > v[1].mean() == v[2].mean()
