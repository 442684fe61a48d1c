"""LeWorldModel (`app: lewm`): shapes, AdaLN-zero starts as the identity, causality, the loss falls, its
config keys, an exact resume through the one trainer, and the planner takes its checkpoints."""
import csv

import numpy as np
import pytest
import torch

from engine.config import ConfigError, load_config

SMALL = ["data.crop_size=32", "model.depth=1", "model.pred_depth=2", "loss.sigreg_projections=64"]


def tiny(overrides=()):
    from engine.builders import build_jepa
    cfg = load_config("configs/lewm_tiny_cpu.yaml", SMALL + list(overrides))
    torch.manual_seed(0)
    return build_jepa(cfg), cfg


def batch(B=6, T=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 3, T, size, size, generator=g),
            {"actions": 0.03 * (2 * torch.rand(B, T - 1, 3, generator=g) - 1), "states": torch.zeros(B, T, 10)})


def test_shapes_and_one_embedding_per_frame():
    m, cfg = tiny()
    clips, traj = batch()
    e = m.encode(clips)
    assert e.shape == (6, 4, 192) and m.tokens_per_frame == 1
    assert m.predictor.history == cfg.frames_per_clip - 1 == 3
    p = m.step_predictor(e[:, :-1], traj["actions"])
    assert p.shape == (6, 3, 192)
    # the planner's longer contexts: the last `history` frames are read
    assert m.step_predictor(torch.cat([e, e], 1), torch.zeros(6, 8, 3)).shape == (6, 3, 192)


def test_adaln_zero_blocks_start_as_the_identity():
    from engine.models.lewm import AdaLNBlock
    blk = AdaLNBlock(48, 4)
    x, c = torch.randn(2, 5, 48), torch.randn(2, 5, 48)
    torch.testing.assert_close(blk(x, c), x, rtol=0, atol=0)
    # ... and the condition acts once the modulation has weights
    torch.nn.init.normal_(blk.modulation[-1].weight, std=0.1)
    assert (blk(x, c) - x).abs().max() > 1e-3


def test_prediction_of_frame_t_reads_no_later_frame_or_action():
    m, _ = tiny()
    m.eval()
    for blk in m.predictor.blocks:   # past the identity of AdaLN-zero's init, so the actions act
        torch.nn.init.normal_(blk.modulation[-1].weight, std=0.1)
    e, a = torch.randn(2, 3, 192), torch.randn(2, 3, 3)
    with torch.no_grad():
        base = m.step_predictor(e, a)
        for which in ("frame", "action"):
            e2, a2 = e.clone(), a.clone()
            (e2 if which == "frame" else a2)[:, 2] += torch.randn_like(e2[:, 2] if which == "frame" else a2[:, 2])
            moved = m.step_predictor(e2, a2)
            torch.testing.assert_close(moved[:, :2], base[:, :2], rtol=0, atol=1e-6)
            assert (moved[:, 2] - base[:, 2]).abs().max() > 1e-3, which


def test_gradients_reach_the_encoder_through_both_terms_and_the_loss_falls():
    m, _ = tiny()
    clips, traj = batch()
    m.train()
    opt = torch.optim.AdamW(list(m.encoder.parameters()) + list(m.predictor.parameters()), lr=1e-3)
    losses = []
    for i in range(12):
        loss, info = m(clips, traj)
        assert set(info) == {"loss_tf", "loss_sigreg"}
        opt.zero_grad()
        loss.backward()
        if i == 0:   # no stop-gradient: the prediction target is the encoder's own output
            assert m.encoder.vit.patch_embed.proj.weight.grad.abs().sum() > 0
            # AdaLN-zero: the zero modulation passes no gradient to the action embedder until it has moved
            assert m.predictor.blocks[0].modulation[-1].weight.grad.abs().sum() > 0
            assert m.predictor.action_encoder[0].weight.grad.abs().sum() == 0
        if i == 1:
            assert m.predictor.action_encoder[0].weight.grad.abs().sum() > 0
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("override, match", [
    (["model.pred_embed_dim=96"], "model.pred_embed_dim: 96, but app lewm's predictor works at the encoder's width"),
    (["loss.sigreg_coeff=0"], "loss.sigreg_coeff: app lewm needs > 0"),
    (["optimization.ema=[0.99,1.0]"], "optimization.ema: .* app lewm has no target encoder"),
    (["loss.auto_steps=2"], "loss.auto_steps: 2 is not supported with app lewm"),
    (["model.state_dim=10"], "model.state_dim: 10 is not supported with app lewm"),
    (["meta.pretrain_checkpoint=x.pt"], "meta.pretrain_checkpoint: 'x.pt' is not supported with app lewm"),
])
def test_keys_lewm_does_not_read_are_refused_by_name(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("configs/lewm_tiny_cpu.yaml", override)


def test_paper_size_config_loads():
    cfg = load_config("configs/lewm_vit_tiny.yaml")
    assert (cfg.data.crop_size, cfg.patch_size, cfg.model.pred_depth, cfg.loss.sigreg_coeff) == (224, 14, 6, 0.09)


@pytest.fixture(scope="module")
def arm(tmp_path_factory):
    pytest.importorskip("pybullet", reason="pybullet (requirements.txt) is not installed")
    from engine.datagen.__main__ import main as data_main
    root = tmp_path_factory.mktemp("arm")
    data_main(["robot", "--output", str(root), "--num", "2", "--frames", "8", "--size", "32", "--policies", "explore"])
    return root / "robot.csv"


def _cfg(csv_path):
    return load_config("configs/lewm_tiny_cpu.yaml", SMALL + [
        f"data.datasets=[{csv_path}]", "data.batch_size=2", "data.num_workers=0", "optimization.ipe=3",
        "optimization.epochs=2", "meta.checkpoint_every=2", "logging.tensorboard=false"])


def _losses(folder):
    with open(folder / "metrics.csv") as f:
        return [(int(r["step"]), float(r["loss"]), float(r["loss_sigreg"])) for r in csv.DictReader(f)]


def test_resume_is_exact_and_the_planner_takes_the_checkpoint(arm, tmp_path):
    from engine.plan import main as plan_main
    from engine.runtime.trainer import Trainer
    straight = Trainer(_cfg(arm), tmp_path / "a", progress=False)
    straight.fit(max_steps=5)
    Trainer(_cfg(arm), tmp_path / "b", progress=False).fit(max_steps=2)
    resumed = Trainer(_cfg(arm), tmp_path / "b", progress=False)
    assert resumed.fit(max_steps=5, resume=True)["steps_this_run"] == 3
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")   # bitwise, SIGReg's random directions included
    for pa, pb in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(pa, pb)   # BatchNorm running statistics too
    rows = plan_main(["--config", "configs/lewm_tiny_cpu.yaml", "--checkpoint", str(tmp_path / "a"), "--episodes", "1",
                      "--baselines", "zero", "--set", "planning.samples=8", "--set", "planning.topk=2",
                      "--set", "planning.iterations=1", "--set", "planning.max_steps=2"])
    assert [r["controller"] for r in rows] == ["cem", "zero"]
    assert rows[0]["steps"] == 2 and np.isfinite(rows[0]["final_distance_m"])
