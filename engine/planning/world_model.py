"""The world models engine.train runs wrote, loaded for planning and evaluation.

    wm, cfg = load_world_model("runs/ac_arm")                        # app vjepa_droid or lewm: a LatentWorldModel
    wm, cfg = load_world_models(["runs/ac_s0", "runs/ac_s1"])        # several: their EnsembleWorldModel
    wm, cfg = load_world_models(["runs/ac_arm2"], views=2)           # one model, two cameras' mean energy
    hj, cfg = load_world_model("runs/hjepa_tiny", hierarchical=True)  # app hjepa: the HJEPA stack, eval mode
    encoder, predictor, cfg = load_level("runs/hjepa_tiny", 2)       # one level: its EMA target, its predictor

Each takes a run folder (its latest checkpoint) or a checkpoint file; a checkpoint of another app is
refused by name (FileNotFoundError / ValueError naming the path).
"""
from __future__ import annotations

from engine.builders import build_ac_jepa, build_models
from engine.config import config_from_dict
from engine.core.checkpoint import read_run_checkpoint
from engine.hjepa import build_hjepa, build_upper_levels, level_state
from engine.planning.cem import LatentWorldModel
from engine.planning.ensemble import EnsembleWorldModel

TRAIN_HINT = {"vjepa_droid": "python -m engine.train --config configs/ac_arm_tiny_cpu.yaml",
              "hjepa": "python -m engine.train --config configs/hjepa_tiny_cpu.yaml"}
FLAT_APPS = ("vjepa_droid", "lewm")   # the world models the flat planner takes


def _read(checkpoint, app: str | tuple):
    """(state, the run's Config); an hjepa run's Config builds the whole stack (every level, nothing
    loaded from its hierarchy.init_checkpoint)."""
    state, path = read_run_checkpoint(checkpoint, app, "--checkpoint", TRAIN_HINT["vjepa_droid" if app == FLAT_APPS
                                                                                 else app])
    raw = dict(state["config"])
    if app == "hjepa":
        raw["hierarchy"] = dict(raw.get("hierarchy") or {}, train="joint", level=2, init_checkpoint=None)
    return state, config_from_dict(raw, source=str(path))


def load_world_model(checkpoint, device: str = "cpu", hierarchical: bool = False):
    """(the world model, its run's Config): a LatentWorldModel of an `app: vjepa_droid` or `app: lewm` run,
    or with `hierarchical` the HJEPA of an `app: hjepa` run with every level loaded."""
    state, cfg = _read(checkpoint, "hjepa" if hierarchical else FLAT_APPS)
    if cfg.is_unconditioned:
        raise ValueError(f"{cfg.source}: model.action_dim 0, a predictor without actions: nothing to plan with "
                         "(it scores surprise: python -m engine.eval anomaly)")
    encoder, predictor = build_models(cfg)
    if cfg.is_lewm:
        from engine.lewm import build_lewm
        model = build_lewm(cfg, encoder, predictor)
        encoder.load_state_dict(state["encoder"])
        predictor.load_state_dict(state["predictor"])
        return LatentWorldModel(model.to(device), cfg.data.crop_size), cfg
    frame_level = build_ac_jepa(cfg, encoder, predictor)
    if not hierarchical:
        encoder.load_state_dict(state["encoder"])
        predictor.load_state_dict(state["predictor"])
        return LatentWorldModel(frame_level.to(device), cfg.data.crop_size), cfg
    model = build_hjepa(cfg, frame_level)
    for part in ("encoder", "predictor", "target_encoder"):
        getattr(model, part).load_state_dict(state[part])
    return model.to(device).eval(), cfg


def load_world_models(checkpoints, device: str = "cpu", hierarchical: bool = False, views: int = 1):
    """(the world model of one checkpoint, or the EnsembleWorldModel of several flat ones, of `views`
    cameras, or of a model trained in camera frames (its planner sets the frames); the first run's Config)."""
    checkpoints = list(checkpoints)
    if len(checkpoints) == 1 and views == 1:
        wm, cfg = load_world_model(checkpoints[0], device, hierarchical)
        return (EnsembleWorldModel([wm]) if not hierarchical and cfg.data.camera_frame else wm), cfg
    if hierarchical:
        raise ValueError(f"a hierarchical world model is planned with alone, from one camera: got {len(checkpoints)} "
                         f"checkpoints, {views} views")
    loaded = [load_world_model(c, device) for c in checkpoints]
    frames = [cfg.data.camera_frame for _, cfg in loaded]
    if len(set(frames)) > 1:
        raise ValueError(f"the ensemble's runs differ in data.camera_frame ({frames}): their actions must be in one "
                         f"frame")
    return EnsembleWorldModel([wm for wm, _ in loaded], views), loaded[0][1]


def load_level(checkpoint, k: int, device: str = "cpu"):
    """One level of an hjepa run alone, for evaluation or probing: (its EMA target encoder, its predictor,
    Config), read strictly from that level's entries only. Level 1's encoder is the frozen frame encoder."""
    state, cfg = _read(checkpoint, "hjepa")
    if not 1 <= k <= cfg.hierarchy.levels:
        raise ValueError(f"{cfg.source}: level {k} does not exist (the run has levels 1..{cfg.hierarchy.levels})")
    encoder, predictor = build_models(cfg)
    if k > 1:
        encs, preds = build_upper_levels(cfg, build_ac_jepa(cfg, encoder, predictor))
        encoder, predictor = encs[k - 2], preds[k - 2]
    encoder.load_state_dict(level_state(state, "target_encoder", k))
    predictor.load_state_dict(level_state(state, "predictor", k))
    return encoder.to(device).eval(), predictor.to(device).eval(), cfg
