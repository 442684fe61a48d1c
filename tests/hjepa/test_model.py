"""engine.hjepa: shapes and losses per level, the abstract actions, level-by-level freezing and EMA,
checkpoints of every level (the whole stack and one level alone)."""
import pytest
import torch

from engine.builders import build_jepa
from engine.config import load_config
from engine.hjepa import abstract_actions
from engine.planning.world_model import load_level, load_world_model
from engine.models.hierarchy import pool_windows

from tests.tiny_runs import HJEPA_SMALL as SMALL, HJEPA_TINY as TINY


def batch(B=2, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 3, T, 32, 32, generator=g),
            {"actions": 0.1 * torch.randn(B, T - 1, 2, generator=g), "states": torch.randn(B, T, 2, generator=g)})


def model(overrides=()):
    torch.manual_seed(0)
    return build_jepa(load_config(TINY, SMALL + list(overrides)))


def grads(module):
    """Whether each parameter got a gradient (the AC predictor's extrinsics encoder is never used here)."""
    return [p.grad is not None for n, p in module.named_parameters() if not n.startswith("extrinsics_encoder")]


def test_abstract_actions_sum_the_displacements_each_upper_step_spans():
    a = torch.arange(11.0).view(1, 11, 1).expand(1, 11, 2)        # action i moves frame i -> i+1
    s = torch.arange(12.0).view(1, 12, 1).expand(1, 12, 2)
    a2, s2 = abstract_actions(a, s, window=4, stride=4)            # upper steps end at frames 3, 7, 11
    assert a2[0, :, 0].tolist() == [3 + 4 + 5 + 6, 7 + 8 + 9 + 10]
    assert s2[0, :, 0].tolist() == [3, 7, 11]
    a2, s2 = abstract_actions(a, s, window=4, stride=2)            # ends 3, 5, 7, 9, 11
    assert a2[0, :, 0].tolist() == [3 + 4, 5 + 6, 7 + 8, 9 + 10] and s2.shape == (1, 5, 2)


def test_pool_windows_is_the_mean_of_each_window():
    h = torch.randn(2, 12, 3, 5)
    p = pool_windows(h, 4, 4)
    assert p.shape == (2, 3, 3, 5)
    torch.testing.assert_close(p[:, 1], h[:, 4:8].mean(1))


def test_forward_gives_the_summed_loss_and_each_levels_loss():
    m = model(["hierarchy.freeze_encoders=false"])
    clips, traj = batch()
    loss, info = m(clips, traj)
    lv = m.level_losses
    assert set(lv) == {"loss_level1", "loss_level2", "std_level2"}
    torch.testing.assert_close(float(loss.detach()), lv["loss_level1"] + lv["loss_level2"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(float(info["loss_tf"] + info["loss_rollout"]), float(loss.detach()), rtol=1e-5, atol=1e-6)
    h = m.encode_frames(clips)
    assert h.shape == (2, 12, 16, 192)
    assert m.encode_level(2, h).shape == (2, 3, 16, 32)
    loss.backward()
    # joint: every trained part gets a gradient; the frozen frame encoder none
    for k in ("level1", "level2"):
        assert all(grads(m.predictor[k]))
    assert all(grads(m.encoder["level2"]))
    assert not any(grads(m.encoder["level1"]))
    # hierarchy.freeze_encoders (the tiny config's setting): the upper encoder keeps its init, its predictor trains
    frozen = model()
    frozen(clips, traj)[0].backward()
    assert not any(grads(frozen.encoder["level2"])) and all(grads(frozen.predictor["level2"]))


def test_level_two_loss_depends_on_its_actions_and_on_level_one_only_through_the_frames():
    m = model()
    clips, traj = batch()
    with torch.no_grad():
        m(clips, traj)
        base = dict(m.level_losses)
        moved = dict(traj, actions=traj["actions"] + 0.5)
        m(clips, moved)
    assert m.level_losses["loss_level2"] != base["loss_level2"]
    assert m.level_losses["loss_level1"] != base["loss_level1"]


def test_upper_levels_roll_out_hierarchy_auto_steps_and_the_frame_level_loss_auto_steps():
    """hierarchy.auto_steps: level 2's rollout loss covers that many of its steps (3 windows of 12 frames
    hold 2 transitions, so 2 at most) while level 1 keeps loss.auto_steps."""
    m = model(["loss.auto_steps=1", "hierarchy.auto_steps=2"])
    assert (m.levels[0].auto_steps, m.levels[1].auto_steps) == (1, 2)
    h2 = m.encode_level(2, m.encode_frames(batch()[0]))
    B, M = h2.shape[:2]
    a2 = 0.1 * torch.randn(B, M - 1, 2, generator=torch.Generator().manual_seed(1))
    _, z_ar = m.levels[1].predictions(h2.reshape(B, -1, h2.shape[-1]), a2, torch.zeros(B, M, 2))
    assert z_ar.shape[1] == 2 * h2.shape[2]
    assert model(["loss.auto_steps=1"]).levels[1].auto_steps == 1      # null: loss.auto_steps


def test_ema_moves_the_level_two_target_only():
    m = model()
    before = {k: v.clone() for k, v in m.target_encoder.state_dict().items()}
    with torch.no_grad():
        for p in m.encoder["level2"].parameters():
            p.add_(1.0)
    m.update_target(0.9)
    after = m.target_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("level1."))
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith("level2."))


def save_run(m, folder, overrides=()):
    """What engine.train writes for the model's parts (the loop's checkpoint entries)."""
    from engine.core.checkpoint import save_checkpoint
    cfg = load_config(TINY, SMALL + list(overrides))
    save_checkpoint(folder, 1, {"encoder": m.encoder.state_dict(), "predictor": m.predictor.state_dict(),
                                "target_encoder": m.target_encoder.state_dict(), "config": cfg.to_dict()})


def test_checkpoint_round_trip_of_every_level_and_one_level_alone(tmp_path):
    m = model()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_run(m, tmp_path)
    back, cfg = load_world_model(tmp_path, hierarchical=True)
    for part in ("encoder", "predictor", "target_encoder"):
        sd, sd2 = getattr(m, part).state_dict(), getattr(back, part).state_dict()
        assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    enc2, pred2, _ = load_level(tmp_path, 2)
    assert all(torch.equal(a, b) for a, b in zip(enc2.state_dict().values(),
                                                m.target_encoder["level2"].state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(pred2.state_dict().values(), m.predictor["level2"].state_dict().values()))
    enc1, pred1, _ = load_level(tmp_path, 1)
    assert all(torch.equal(a, b) for a, b in zip(pred1.state_dict().values(), m.predictor["level1"].state_dict().values()))
    with pytest.raises(ValueError, match="level 3 does not exist"):
        load_level(tmp_path, 3)


def test_level_by_level_trains_one_level_on_the_levels_below(tmp_path):
    first = model()
    save_run(first, tmp_path / "l1")
    m = model(["hierarchy.train=level_by_level", "hierarchy.level=2", f"hierarchy.init_checkpoint={tmp_path / 'l1'}"])
    assert m.trained == [2]
    # the levels below come from the checkpoint
    assert all(torch.equal(a, b) for a, b in zip(m.predictor["level1"].state_dict().values(),
                                                first.predictor["level1"].state_dict().values()))
    assert not any(p.requires_grad for p in m.predictor["level1"].parameters())
    clips, traj = batch()
    loss, _ = m(clips, traj)
    loss.backward()
    assert not any(grads(m.predictor["level1"]))
    assert all(grads(m.predictor["level2"]))
    torch.testing.assert_close(float(loss.detach()), m.level_losses["loss_level2"], rtol=1e-5, atol=1e-6)
    # a frozen upper level: its online encoder holds its target's weights, so an EMA leaves it as it is
    m1 = model(["hierarchy.train=level_by_level", "hierarchy.level=1"])
    before = {k: v.clone() for k, v in m1.target_encoder.state_dict().items()}
    m1.update_target(0.5)
    assert all(torch.equal(before[k], v) for k, v in m1.target_encoder.state_dict().items())
    assert all(torch.equal(a, b) for a, b in zip(m1.encoder["level2"].state_dict().values(),
                                                m1.target_encoder["level2"].state_dict().values()))


def test_init_checkpoint_of_another_app_is_refused(tmp_path):
    from engine.core.checkpoint import save_checkpoint
    save_checkpoint(tmp_path, 1, {"encoder": {}, "predictor": {}, "config": {"app": "vjepa_droid"}})
    with pytest.raises(ValueError, match="not a checkpoint of an `app: hjepa` run"):
        model(["hierarchy.train=level_by_level", "hierarchy.level=2", f"hierarchy.init_checkpoint={tmp_path}"])


def test_a_residual_predictor_with_zero_output_predicts_no_change():
    m = model(["hierarchy.residual=true"]).eval()
    clips, traj = batch()
    h = m.encode_frames(clips)
    for k in (1, 2):
        proj = m.predictor[f"level{k}"].predictor_proj
        proj.weight.data.zero_(), proj.bias.data.zero_()
    lv = m.levels[0]
    z = h.reshape(2, -1, h.shape[-1])[:, :-16]
    out = lv.step_predictor(z, traj["actions"], traj["states"][:, :-1])
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(z, (z.shape[-1],)))
    assert all(lv.residual for lv in m.levels)
