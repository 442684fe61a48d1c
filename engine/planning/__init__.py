"""Planning in latent space with an action-conditioned world model (V-JEPA 2-AC).

    from engine.planning import load_world_model, cem_plan
    wm, cfg = load_world_model("runs/ac_arm")            # an `app: vjepa_droid` training run
    actions_HA, energy = cem_plan(wm, wm.encode_frame(frame), state, wm.encode_frame(goal), cfg.planning)

cem: the CEM planner and the world-model wrapper; world_model: trained runs loaded (several: an ensemble,
engine.planning.ensemble, the mean of their energies); reach: the pybullet reach task, its baselines and
oracle; push: the cube-pushing task on the same scenes. `python -m engine.plan` runs them closed loop.
"""
from engine.planning.cem import LatentWorldModel, cem_plan, energy
from engine.planning.ensemble import EnsembleWorldModel
from engine.planning.world_model import load_world_model, load_world_models

__all__ = ["EnsembleWorldModel", "LatentWorldModel", "cem_plan", "energy", "load_world_model", "load_world_models"]
