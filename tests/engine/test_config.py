"""Config: reference layouts load, bad values name their key."""
from pathlib import Path

import pytest
import torch
import yaml

from engine.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.yaml"))


@pytest.fixture
def tiny_raw():
    return yaml.safe_load(open("configs/tiny_cpu.yaml"))


def test_every_shipped_config_is_tested():
    assert len(CONFIGS) >= 15 and "configs/ac_lattice_tiny_cpu.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_load(path):
    cfg = load_config(ROOT / path)
    assert cfg.data.crop_size % cfg.patch_size == 0


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.endswith("_cpu.yaml")])
def test_shipped_cpu_configs_build_their_model(path):
    """The CPU configs are run as they stand (the README's commands): each builds its model (a frozen
    encoder's pretrained weights, given on the command line in their recipes, left out here)."""
    from engine.builders import build_jepa
    torch.manual_seed(0)
    model = build_jepa(load_config(ROOT / path, ["meta.pretrain_checkpoint=null"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 1e5 < trainable < 1e7, trainable


def test_shipped_eval_configs_load():
    from engine.eval.config import load_eval_config
    paths = sorted((ROOT / "configs" / "eval").glob("*.yaml"))
    assert paths
    for p in paths:
        load_eval_config(p)


def test_vjepa_reference_values():
    cfg = load_config("configs/vjepa_vitl16.yaml")
    assert cfg.model.model_name == "vit_large" and cfg.model.pred_depth == 12 and cfg.model.pred_embed_dim == 384
    assert cfg.optimization.lr == 0.000625 and cfg.optimization.ema == [0.998, 1.0]
    assert cfg.optimization.clip_grad == 10.0 and cfg.optimization.ipe_scale == 1.25
    assert cfg.token_grid == (8, 14, 14)
    assert [m.num_blocks for m in cfg.mask] == [8, 2] and cfg.mask[1].spatial_scale == [0.7, 0.7]
    # launcher keys, and keys the reference trainers never read
    assert sorted(cfg.ignored_keys) == ["data.decode_one_clip", "meta.eval_freq", "nodes", "tasks_per_node"]


def test_vjepa2_reference_values():
    cfg = load_config("configs/vjepa2_vitl16.yaml")
    assert cfg.model.use_rope and cfg.data.fps == 4 and cfg.frames_per_clip == 16
    assert cfg.optimization.ema == [0.99925, 0.99925] and cfg.token_grid == (8, 16, 16)
    assert {"cpus_per_task", "mem_per_gpu"} <= set(cfg.ignored_keys)


def test_ijepa_layout_is_mapped():
    cfg = load_config("configs/ijepa_vith14.yaml")
    assert cfg.is_image and cfg.model.model_name == "vit_huge" and cfg.model.pred_embed_dim == 384
    assert cfg.meta.dtype == "bfloat16" and cfg.patch_size == 14 and cfg.token_grid == (16, 16)
    assert cfg.mask.num_pred_masks == 4 and cfg.mask.pred_mask_scale == [0.15, 0.2]
    assert "meta.copy_data" in cfg.ignored_keys


def test_action_conditioned_keys_are_known(tiny_raw):
    raw = dict(tiny_raw, app="vjepa_droid")
    raw["model"] = dict(raw["model"], pred_is_frame_causal=True, use_extrinsics=False)
    raw["loss"] = dict(raw["loss"], auto_steps=2, normalize_reps=True, std_coeff=0.0, cov_coeff=0.0)
    raw["meta"] = dict(raw["meta"], pretrain_checkpoint="x.pt", context_encoder_key="target_encoder")
    cfg = load_config(raw=raw)
    assert cfg.model.pred_is_frame_causal and cfg.loss.auto_steps == 2


@pytest.mark.parametrize("key,value", [("loss.auto_steps", 2), ("model.pred_is_frame_causal", True),
                                       ("model.use_extrinsics", True), ("loss.normalize_reps", False),
                                       ("model.use_mask_tokens", False),
                                       ("data.mask_type", "random_tube"), ("data.stereo_view", True)])
def test_unsupported_values_are_refused_by_name(tiny_raw, key, value):
    section, name = key.split(".")
    tiny_raw[section] = dict(tiny_raw.get(section) or {}, **{name: value})
    with pytest.raises(ConfigError) as e:
        load_config(raw=tiny_raw)
    msg = str(e.value)
    assert msg.startswith(f"{key}: {value!r} is not supported") and "\n" not in msg


def test_keys_an_app_does_not_read_are_refused(tiny_raw):
    raw = dict(tiny_raw, app="vjepa_droid")   # the action-conditioned loss has no std / cov terms
    with pytest.raises(ConfigError, match=r"^loss\.std_coeff: 1\.0 is not supported with app vjepa_droid"):
        load_config(raw=raw)
    with pytest.raises(ConfigError, match=r"data_aug\.reprob: 0\.5 is not supported with app ijepa"):
        load_config("configs/ijepa_tiny_cpu.yaml", ["data_aug.reprob=0.5"])


def test_evaluation_configs_are_refused_as_a_whole():
    with pytest.raises(ConfigError, match=r"^eval_name: .* is an evaluation config"):
        load_config(raw={"eval_name": "video_classification_frozen", "pretrain": {"model_name": "vit_large"}})


def test_overrides():
    cfg = load_config("configs/tiny_cpu.yaml", ["optimization.lr=0.5", "mask.1.num_blocks=3", "meta.seed=7"])
    assert cfg.optimization.lr == 0.5 and cfg.mask[1].num_blocks == 3 and cfg.meta.seed == 7


@pytest.mark.parametrize("override, key", [
    ("data.patch_size=7", "data.patch_size"),              # does not divide crop 64
    ("data.num_frames=7", "data.num_frames"),              # not a multiple of the tubelet
    ("data.batch_size=0", "data.batch_size"),
    ("data.batch_size=eight", "data.batch_size"),
    ("optimization.ema=[0.9]", "optimization.ema"),
    ("optimization.lr=-1", "optimization.lr"),
    ("loss.std_coeff=-1", "loss.std_coeff"),
    ("loss.cov_coeff=-0.5", "loss.cov_coeff"),
    ("mask.0.spatial_scale=[0.5, 1.5]", "mask.0.spatial_scale"),
    ("mask.0.num_blocks=0", "mask.0.num_blocks"),
    ("meta.dtype=float8", "meta.dtype"),
    ("meta.mask_mode=padded", "meta.mask_mode"),
    ("model.use_rope=maybe", "model.use_rope"),
    ("model.pred_num_heads=5", "model.pred_embed_dim"),    # 96 not divisible by 5
    ("data.nonsense=1", "data.nonsense"),
    ("optimization.is_anneal=true", "optimization.is_anneal"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("configs/tiny_cpu.yaml", [override])


def test_unknown_section_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="trainer"):
        load_config(raw={"trainer": {}})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("configs/tiny_cpu.yaml", ["optimization.lr"])
    with pytest.raises(ConfigError, match="not an index"):
        load_config("configs/tiny_cpu.yaml", ["mask.5.num_blocks=1"])


@pytest.mark.parametrize("config, override, key", [
    ("configs/ac_events_tiny_cpu.yaml", "model.state_dim=3", "model.state_dim"),
    ("configs/ac_events_tiny_cpu.yaml", "model.use_extrinsics=true", "model.use_extrinsics"),
    ("configs/ac_events_tiny_cpu.yaml", "model.action_scale=2.0", "model.action_scale"),
    ("configs/ac_events_tiny_cpu.yaml", "model.action_dim=1", "model.action_dim"),
    ("configs/hjepa_tiny_cpu.yaml", "model.action_dim=0", "model.action_dim"),
    ("configs/lewm_tiny_cpu.yaml", "model.action_dim=0", "model.action_dim"),
])
def test_action_free_predictor_refuses_what_cannot_act(config, override, key):
    """model.action_dim 0 (a predictor without actions) is app vjepa_droid's only, and every action or state
    setting beside it is refused by name."""
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(config, [override])


def test_action_free_predictor_reads_plain_clips_without_masks():
    cfg = load_config("configs/ac_events_tiny_cpu.yaml")
    assert cfg.is_unconditioned and not cfg.uses_trajectories and not cfg.uses_masks
    arm = load_config("configs/ac_arm_tiny_cpu.yaml")
    assert not arm.is_unconditioned and arm.uses_trajectories and not arm.uses_masks
    assert load_config("configs/tiny_cpu.yaml").uses_masks
