"""The V-JEPA 2-AC predictor and step: parity with the reference, frame causality, strict loading.

tests/fixtures/ref_vjepa2_ac.pt was written once by running the vjepa2 code itself (its
`vit_ac_predictor`, its RoPE VisionTransformer as the frozen encoder, and the vjepa_droid train step's
forward_target / teacher forcing / auto_steps rollout / loss_fn) at tiny sizes in fp32 on CPU, with
random non-default weights; 4 frames of 32x32 px, patch 8, encoder dim 48 (3 heads), predictor dim
60 (3 heads of 20: part of each head is not rotated), auto_steps 3. Two entries, "noext" and "ext"
(use_extrinsics). Each holds:
    config, checkpoint   the run's YAML layout and the dict the vjepa_droid trainer saves ("module." keys)
    clips, actions [B, T-1, 7], states [B, T, 7], extrinsics [B, T, 6]
    targets              forward_target(clips): each frame encoded alone, layer-normed
    pred_raw             predictor(targets of frames 0..T-2, actions, states[:, :-1], extrinsics[:, :-1])
    jloss, sloss         the train step's teacher-forced and rollout losses
"""
from pathlib import Path

import pytest
import torch

from engine.config import ConfigError
from engine.models.ac_predictor import ACPredictor
from engine.core.state import ReferenceCheckpointError
from engine.reference_ckpt import load_reference_checkpoint

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ref_vjepa2_ac.pt"
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("variant", ["noext", "ext"])
def test_parity_with_reference(fixture, variant):
    f = fixture[variant]
    model = load_reference_checkpoint(f["checkpoint"], "vjepa2_ac", f["config"]).to_jepa().eval()
    ext = f["extrinsics"] if variant == "ext" else None
    with torch.no_grad():
        h = model.encode(f["clips"])
        torch.testing.assert_close(h, f["targets"], **TOL)
        n = model.tokens_per_frame
        raw = model.predictor(f["targets"][:, :-n], f["actions"], f["states"][:, :-1],
                              None if ext is None else ext[:, :-1])
        torch.testing.assert_close(raw, f["pred_raw"], **TOL)
        traj = {"actions": f["actions"], "states": f["states"]}
        if ext is not None:
            traj["extrinsics"] = ext
        loss, info = model(f["clips"], traj)
    torch.testing.assert_close(info["loss_tf"], f["jloss"], **TOL)
    torch.testing.assert_close(info["loss_rollout"], f["sloss"], **TOL)
    torch.testing.assert_close(loss, f["jloss"] + f["sloss"], **TOL)


def _tiny(is_frame_causal=True, use_extrinsics=False):
    torch.manual_seed(0)
    return ACPredictor((3, 3), embed_dim=24, predictor_embed_dim=36, depth=2, num_heads=3,
                       is_frame_causal=is_frame_causal, action_dim=4, state_dim=5,
                       use_extrinsics=use_extrinsics).eval()


@pytest.mark.parametrize("use_extrinsics", [False, True])
def test_frame_causality_by_perturbation(use_extrinsics):
    """Changing frame t's latents, action, state or extrinsics changes no prediction at frames < t,
    and does change those at frames >= t."""
    pred = _tiny(use_extrinsics=use_extrinsics)
    B, T, n = 2, 5, 9
    z = torch.randn(B, T * n, 24)
    a, s, e = torch.randn(B, T, 4), torch.randn(B, T, 5), torch.randn(B, T, 3)
    base = pred(z, a, s, e).view(B, T, n, -1)
    for t in range(T):
        for which in ("z", "a", "s") + (("e",) if use_extrinsics else ()):
            z2, a2, s2, e2 = z.clone(), a.clone(), s.clone(), e.clone()
            if which == "z":
                z2.view(B, T, n, -1)[:, t] += torch.randn(B, n, 24)
            else:
                {"a": a2, "s": s2, "e": e2}[which][:, t] += 1.0
            out = pred(z2, a2, s2, e2).view(B, T, n, -1)
            assert torch.equal(out[:, :t], base[:, :t]), f"frame {t}'s {which} leaked into earlier frames"
            assert (out[:, t:] - base[:, t:]).abs().amax() > 1e-4, f"frame {t}'s {which} changed nothing"


def test_not_frame_causal_sees_the_future():
    pred = _tiny(is_frame_causal=False)
    B, T, n = 1, 3, 9
    z, a, s = torch.randn(B, T * n, 24), torch.randn(B, T, 4), torch.randn(B, T, 5)
    base = pred(z, a, s)
    a2 = a.clone()
    a2[:, -1] += 1.0
    assert (pred(z, a2, s)[:, :n] - base[:, :n]).abs().amax() > 1e-4


def test_shape_errors_name_the_argument():
    pred = _tiny()
    z = torch.randn(2, 2 * 9, 24)
    with pytest.raises(ValueError, match="actions must be"):
        pred(z, torch.randn(2, 3, 4), torch.randn(2, 2, 5))
    with pytest.raises(ValueError, match="whole number of frames"):
        pred(torch.randn(2, 10, 24), torch.randn(2, 2, 4), torch.randn(2, 2, 5))


def test_wrong_kind_and_partial_checkpoints_are_refused(fixture):
    f = fixture["noext"]
    with pytest.raises(ConfigError, match="vjepa2_ac"):
        load_reference_checkpoint(f["checkpoint"], "vjepa2", f["config"])
    ck = dict(f["checkpoint"])
    ck["predictor"] = {k: v for k, v in ck["predictor"].items() if "state_encoder" not in k}
    with pytest.raises(ReferenceCheckpointError, match="missing key 'state_encoder.weight'"):
        load_reference_checkpoint(ck, "vjepa2_ac", f["config"])


def test_reference_droid_yaml_loads_and_builds_the_ac_predictor():
    """The reference's vjepa_droid YAML layout (its keys, values at a tiny size) builds our models."""
    from engine.builders import build_models
    from engine.config import load_config
    raw = {"app": "vjepa_droid", "nodes": 4, "data": {"batch_size": 8, "camera_views": ["left_mp4_path"],
           "crop_size": 32, "datasets": ["droid.csv"], "dataset_fpcs": [8], "fps": 4, "patch_size": 16,
           "stereo_view": False, "tubelet_size": 2},
           "data_aug": {"auto_augment": False, "horizontal_flip": False, "motion_shift": False,
                        "random_resize_aspect_ratio": [0.75, 1.35], "random_resize_scale": [1.777, 1.777],
                        "reprob": 0.0},
           "loss": {"auto_steps": 2, "loss_exp": 1.0, "normalize_reps": True, "reg_coeff": 0.0},
           "meta": {"dtype": "bfloat16", "pretrain_checkpoint": None, "context_encoder_key": "target_encoder",
                    "target_encoder_key": "target_encoder", "load_predictor": False, "save_every_freq": 25},
           "model": {"model_name": "vit_tiny", "depth": 1, "pred_depth": 1, "pred_embed_dim": 24,
                     "pred_is_frame_causal": True, "pred_num_heads": 2, "use_extrinsics": False, "use_rope": True,
                     "uniform_power": True, "use_activation_checkpointing": True},
           "optimization": {"anneal": 15, "epochs": 315, "ipe": 300, "lr": 0.000425, "warmup": 15}}
    cfg = load_config(raw=raw)
    enc, pred = build_models(cfg)
    assert isinstance(pred, ACPredictor) and pred.is_frame_causal and pred.cond_tokens == 2
    assert sorted({k.split(".")[0] for k in pred.state_dict()}) == [
        "action_encoder", "extrinsics_encoder", "predictor_blocks", "predictor_embed", "predictor_norm",
        "predictor_proj", "state_encoder"]


def test_encoder_weights_load_from_each_layout_and_refuse_by_name(tmp_path):
    """load_encoder_weights, the one loader of a pretrained frozen encoder (the AC trainer's and the
    evaluations'): a reference file (prefixed keys, only an 'encoder' entry), a run's checkpoint (RNG
    states: full unpickling), kept entries, and the refusals."""
    import numpy as np

    from engine.ac_jepa import load_encoder_weights
    from engine.models.vit import VisionTransformer

    def vit(seed):
        torch.manual_seed(seed)
        return VisionTransformer(img_size=16, patch_size=8, num_frames=2, tubelet_size=2, embed_dim=24, depth=1,
                                 num_heads=2)

    def same(a, b):
        return all(torch.equal(x, b.state_dict()[k]) for k, x in a.state_dict().items())

    src = vit(0)
    ref = tmp_path / "ref.pt"
    torch.save({"encoder": {f"module.backbone.{k}": v for k, v in src.state_dict().items()}}, ref)
    dst = vit(1)
    assert not same(src, dst)
    load_encoder_weights(dst, ref)                                   # no target_encoder: the 'encoder' entry
    assert same(src, dst)

    run = tmp_path / "run" / "checkpoints" / "step_0000002.pt"       # as the trainer writes it
    run.parent.mkdir(parents=True)
    torch.save({"target_encoder": src.state_dict(), "rng": {"numpy": np.random.get_state()}}, run)
    dst = vit(2)
    load_encoder_weights(dst, run)
    assert same(src, dst)
    elsewhere = tmp_path / "copied.pt"
    elsewhere.write_bytes(run.read_bytes())
    with pytest.raises(ReferenceCheckpointError, match="weights_only loading refuses.*trusted=True"):
        load_encoder_weights(vit(3), elsewhere)
    load_encoder_weights(dst, elsewhere, trusted=True)

    moved = {k: v + 1 for k, v in src.state_dict().items()}
    torch.save({"target_encoder": moved}, ref)
    dst = vit(4)
    load_encoder_weights(dst, ref, keep_own=("pos_embed",))          # its own sin-cos table, the rest loaded
    assert torch.equal(dst.pos_embed, vit(4).pos_embed) and torch.equal(dst.norm.weight, moved["norm.weight"])

    torch.save({"predictor": {}}, ref)
    with pytest.raises(ReferenceCheckpointError, match="no 'target_encoder' entry.*set meta.target_encoder_key"):
        load_encoder_weights(vit(5), ref)


def _action_world(B: int, T: int, N: int, D: int, gen: torch.Generator):
    """Latents [B, T*N, D]: per-sample random tokens (content the predictor cannot know in advance, as a
    frozen encoder's latents of a scene) that all move by a fixed linear effect of the action."""
    W_AD = torch.randn(2, D, generator=torch.Generator().manual_seed(1))
    a_BTA = torch.rand(B, T - 1, 2, generator=gen) * 2 - 1
    z_BND = torch.randn(B, N, D, generator=gen)
    frames = [z_BND]
    for t in range(T - 1):
        z_BND = z_BND.clone()
        z_BND += (a_BTA[:, t] @ W_AD)[:, None]
        frames.append(z_BND)
    return torch.cat(frames, 1), a_BTA


@pytest.mark.parametrize("residual", [False, True])
def test_predictor_learns_the_action_effect(residual):
    """Trained on latents that move by a known effect of the action, the predictor's one-step error must
    beat copying the last frame. Its width (12) is narrower than the latents (32), as the tiny arm
    config's is (96 < 192): a plain predictor must carry each token's content through that bottleneck and
    stays above the copy baseline; the residual one (model.pred_residual) only predicts the change."""
    from engine.ac_jepa import ACJEPA

    N, D, T = 4, 32, 3
    torch.manual_seed(0)
    pred = ACPredictor((2, 2), embed_dim=D, predictor_embed_dim=12, depth=1, num_heads=2, action_dim=2, state_dim=1)
    model = ACJEPA(torch.nn.Identity(), pred, auto_steps=1, normalize_reps=False, residual=residual)
    opt = torch.optim.AdamW(pred.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        h, a = _action_world(32, T, N, D, gen)
        z_tf, _ = model.predictions(h, a, torch.zeros(32, T, 1))
        loss = model.loss_fn(z_tf, h)
        opt.zero_grad()
        loss.backward()
        opt.step()
    h, a = _action_world(256, T, N, D, gen)
    with torch.no_grad():
        z_tf, _ = model.predictions(h, a, torch.zeros(256, T, 1))
    err = (z_tf - h[:, N:]).abs().mean().item()
    err_copy = (h[:, :-N] - h[:, N:]).abs().mean().item()
    if residual:
        assert err < 0.8 * err_copy, (err, err_copy)
    else:
        assert err > err_copy, (err, err_copy)


def test_unconditioned_predictor_has_no_conditioning_and_refuses_it():
    """action_dim 0: a frame is its patches alone (no action, state or extrinsics encoders, no conditioning
    tokens), it stays frame-causal, and passing actions or asking for states is refused."""
    torch.manual_seed(0)
    pred = ACPredictor((3, 3), embed_dim=24, predictor_embed_dim=36, depth=2, num_heads=3, action_dim=0).eval()
    assert pred.cond_tokens == 0 and not any(k.startswith(("action_", "state_", "extrinsics_"))
                                             for k in pred.state_dict())
    B, T, n = 2, 4, 9
    z = torch.randn(B, T * n, 24)
    base = pred(z).view(B, T, n, -1)
    for t in range(T):
        z2 = z.clone()
        z2.view(B, T, n, -1)[:, t] += torch.randn(B, n, 24)
        out = pred(z2).view(B, T, n, -1)
        assert torch.equal(out[:, :t], base[:, :t]) and (out[:, t:] - base[:, t:]).abs().amax() > 1e-4
    with pytest.raises(ValueError, match="takes no actions"):
        pred(z, torch.randn(B, T, 2), None)
    with pytest.raises(ValueError, match="takes no states"):
        ACPredictor((3, 3), embed_dim=24, predictor_embed_dim=36, depth=1, num_heads=3, action_dim=0, state_dim=3)


def _drifting_world(B: int, T: int, N: int, D: int, gen: torch.Generator):
    """Latents [B, T*N, D]: random tokens that all move by a per-sample velocity each frame, so frame t is
    predictable from the two frames before it and not from one."""
    z_BND, v_B1D = torch.randn(B, N, D, generator=gen), torch.randn(B, 1, D, generator=gen)
    return torch.cat([z_BND + t * v_B1D for t in range(T)], 1)


def test_unconditioned_predictor_learns_the_motion_from_the_past():
    """Trained on plain clips (no actions) whose tokens drift by a per-sample velocity, the residual
    predictor's error on frames 2.. (two frames of past: the velocity is known) must beat copying the last
    frame by far, while on frame 1 (one frame of past) it cannot."""
    from engine.ac_jepa import ACJEPA

    N, D, T = 4, 16, 4
    torch.manual_seed(0)
    pred = ACPredictor((2, 2), embed_dim=D, predictor_embed_dim=32, depth=2, num_heads=2, action_dim=0)
    model = ACJEPA(torch.nn.Identity(), pred, auto_steps=1, loss_exp=2.0, normalize_reps=False, residual=True)
    opt = torch.optim.AdamW(pred.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(500):
        h = _drifting_world(32, T, N, D, gen)
        z_tf, _ = model.predictions(h)
        loss = model.loss_fn(z_tf, h)
        opt.zero_grad()
        loss.backward()
        opt.step()
    h = _drifting_world(256, T, N, D, gen)
    with torch.no_grad():
        z_tf, _ = model.predictions(h)
    err_T = (z_tf - h[:, N:]).abs().view(256, T - 1, N, D).mean((0, 2, 3))
    copy_T = (h[:, :-N] - h[:, N:]).abs().view(256, T - 1, N, D).mean((0, 2, 3))
    assert (err_T[1:] < 0.5 * copy_T[1:]).all() and err_T[0] > 0.8 * copy_T[0], (err_T, copy_T)


def test_unconditioned_step_takes_plain_clips_and_refuses_trajectories():
    """ACJEPA with an action-free predictor: its loss on plain clips is the teacher-forced plus the
    rollout error, and a trajectory batch is refused by name."""
    from engine.ac_jepa import ACJEPA
    from engine.models.vit import VisionTransformer

    torch.manual_seed(0)
    enc = VisionTransformer(img_size=16, patch_size=8, num_frames=4, tubelet_size=2, embed_dim=24, depth=1,
                            num_heads=2)
    pred = ACPredictor((2, 2), embed_dim=24, predictor_embed_dim=12, depth=1, num_heads=2, action_dim=0)
    model = ACJEPA(enc, pred, auto_steps=2, loss_exp=2.0, residual=True)
    clips = torch.randn(2, 3, 4, 16, 16)
    loss, info = model(clips, None)
    h = model.encode(clips)
    z_tf, z_ar = model.predictions(h)
    assert z_ar.shape == (2, 2 * 4, 24)
    torch.testing.assert_close(loss, model.loss_fn(z_tf, h) + model.loss_fn(z_ar, h))
    torch.testing.assert_close(info["loss_rollout"], model.loss_fn(z_ar, h))
    loss.backward()
    assert pred.predictor_proj.weight.grad.abs().sum() > 0 and enc.patch_embed.proj.weight.grad is None
    with pytest.raises(ValueError, match="takes plain clips"):
        model(clips, {"actions": torch.zeros(2, 3, 2), "states": torch.zeros(2, 4, 2)})
