"""Why does CEM fail where it fails? Checks of the planning energy and the predictor on held-out reach episodes.

    python -m engine.planning.diagnose --config configs/ac_arm_tiny_cpu.yaml [--checkpoint runs/ac_arm [...]]
        [--episodes 8] [--set section.key=value ...]

Per held-out episode (the planner's: planning.goal_seed), the arm is driven by the oracle from its start
to the goal, and at each pose of that path:
    energy vs distance: the planning energy (planning.energy; l1: the reference's) of the TRUE frame
        against the end effector's true distance to the goal; `spearman` is their rank correlation over
        the path (1: the energy is monotone in the distance, what CEM needs).
    greedy with a perfect predictor: each of the 26 unit-grid directions (maxnorm per axis) is executed in
        the simulator from that pose and its true next frame scored by the energy; `greedy_gain` is the
        distance the lowest-energy one removes, as a fraction of what the best direction removes (1: a
        horizon-1 planner with an exact predictor would pick the best move).
With a checkpoint (its predictor): the same 26 candidates rolled out by the predictor instead:
    `pred_rank_corr`: rank correlation of the predicted energies with the true-frame energies;
    `pred_gain`: the distance the predictor's lowest-energy candidate removes, as greedy_gain;
    `err_1step` / `err_copy`: the predictor's L1 to the true next latent vs copying the current latent.
energy by camera axis: from the goal pose, 2 actions along the camera's right, up and depth (its ray)
    axes; `e_right` / `e_up` / `e_depth`: the energy reached per metre moved (what the energy sees of each).
Several checkpoints: their ensemble (engine.planning.ensemble; the energies and errors are the members'
means). Without a checkpoint the encoder is the config's (meta.pretrain_checkpoint, or its seeded random init).
"""
from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

GRID = np.array([d for d in itertools.product((-1, 0, 1), repeat=3) if any(d)], dtype=np.float64)


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if np.std(ra) > 0 and np.std(rb) > 0 else float("nan")


def world_model(cfg, checkpoint):
    """(the world model to diagnose, whether it was trained on camera-frame actions and states)."""
    from engine.planning.cem import LatentWorldModel
    from engine.planning.ensemble import EnsembleWorldModel
    from engine.planning.world_model import load_world_models
    if checkpoint:
        wm, train_cfg = load_world_models(checkpoint, views=cfg.planning.views)
        return wm, train_cfg.data.camera_frame
    from engine.builders import build_jepa
    torch.manual_seed(cfg.meta.seed)   # the training run's initial weights
    wm = LatentWorldModel(build_jepa(cfg), cfg.data.crop_size)
    return (wm if cfg.planning.views == 1 else EnsembleWorldModel([wm], cfg.planning.views)), False


@torch.no_grad()
def diagnose_episode(task, ep, wm, maxnorm: float, with_predictor: bool, poses: int = 4, kind: str = "l1") -> dict:
    """kind: the planning energy scored (planning.energy)."""
    from engine.planning.cem import energy
    from engine.planning.reach import oracle_action
    arm, pb = task.arm, task.arm.pb
    goal_z = wm.encode_frame(ep.goal_image)
    task._reset(ep.index)
    path_d, path_e = [], []
    rows = {"greedy_gain": [], "pred_gain": [], "pred_rank_corr": [], "err_1step": [], "err_copy": []}
    step = 0
    while True:
        d = float(np.linalg.norm(arm.ee()[0] - ep.goal_pos))
        frame, state = arm.render(task.size), arm.state()
        z = wm.encode_frame(frame)
        path_d.append(d)
        path_e.append(float(energy(z, goal_z, kind)[0]))
        if d < task.tolerance or step >= task.max_steps:
            break
        if step < poses:
            saved, target = pb.saveState(physicsClientId=arm.cid), arm.target.copy()
            true_e, true_d, true_z = [], [], []
            for g in GRID:
                arm.act(g * maxnorm, task.substeps)
                zn = wm.encode_frame(arm.render(task.size))
                true_z.append(zn)
                true_e.append(float(energy(zn, goal_z, kind)[0]))
                true_d.append(float(np.linalg.norm(arm.ee()[0] - ep.goal_pos)))
                pb.restoreState(saved, physicsClientId=arm.cid)
                arm.target = target.copy()
            pb.removeState(saved, physicsClientId=arm.cid)
            gain = d - np.asarray(true_d)
            best = gain.max()
            rows["greedy_gain"].append(gain[int(np.argmin(true_e))] / best if best > 0 else np.nan)
            if with_predictor:
                acts = torch.as_tensor(GRID * maxnorm, dtype=torch.float32)[:, None]
                pred = wm.rollout(z, state, acts)
                pred_e = energy(pred, goal_z, kind).numpy()
                rows["pred_rank_corr"].append(spearman(pred_e, true_e))
                rows["pred_gain"].append(gain[int(np.argmin(pred_e))] / best if best > 0 else np.nan)
                tz = torch.cat(true_z)
                rows["err_1step"].append(float((pred - tz).abs().mean()))
                rows["err_copy"].append(float((z - tz).abs().mean()))
        arm.act(oracle_action(arm.target, ep.goal_pos), task.substeps)
        step += 1
    out = {"episode": ep.index, "start_m": path_d[0], "spearman": spearman(path_e, path_d),
           "energy_start": path_e[0], "energy_goal": path_e[-1]}
    out.update({k: float(np.nanmean(v)) for k, v in rows.items() if v})
    return out


CAMERA_AXES = ("right", "up", "depth")


def camera_axes(arm) -> np.ndarray:
    """The scene camera's right, up and backward (towards the eye) unit axes in world coordinates, [3, 3]: the
    rows of its view matrix's rotation (pybullet returns the matrix column-major)."""
    return np.asarray(arm.view, dtype=np.float64).reshape(4, 4)[:3, :3].T


@torch.no_grad()
def energy_by_camera_axis(task, ep, wm, maxnorm: float, kind: str = "l1", steps: int = 2) -> dict:
    """How much the energy sees each direction: from the goal pose, `steps` actions of length maxnorm along
    each camera axis (both signs), the energy of the frame reached per metre the end effector moved,
    {"e_right", "e_up", "e_depth"}. A single view sees depth (along its ray) only as the arm's size and
    shape: a low e_depth means goals are ambiguous along the ray, and CEM stalls on false minima there."""
    from engine.planning.cem import energy
    arm, pb = task.arm, task.arm.pb
    goal_z = wm.encode_frame(ep.goal_image)
    task._reset(ep.index)
    task.drive_to(ep.goal_pos)
    start, saved, target = arm.ee()[0].copy(), pb.saveState(physicsClientId=arm.cid), arm.target.copy()
    out = {}
    for name, axis in zip(CAMERA_AXES, camera_axes(arm)):
        per_m = []
        for sign in (1.0, -1.0):
            for _ in range(steps):
                arm.act(sign * axis * maxnorm, task.substeps)
            moved = float(np.linalg.norm(arm.ee()[0] - start))
            per_m.append(float(energy(wm.encode_frame(arm.render(task.size)), goal_z, kind)[0]) / max(moved, 1e-6))
            pb.restoreState(saved, physicsClientId=arm.cid)
            arm.target = target.copy()
        out[f"e_{name}"] = float(np.mean(per_m))
    pb.removeState(saved, physicsClientId=arm.cid)
    return out


def diagnosis_args(prog: str, description: str, argv, checkpoint_help: str, poses_help: str, checkpoint_required=False,
                   several=False, extra=None):
    """The planning diagnoses' command line (--config, --checkpoint, --episodes, --poses, --set): (args, Config).
    several: --checkpoint takes one or more runs (a list); extra(parser) adds a diagnosis' own options."""
    from engine.config import load_config
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint", default=None, required=checkpoint_required, nargs="+" if several else None,
                   help=checkpoint_help)
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--poses", type=int, default=4, help=poses_help)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    if extra is not None:
        extra(p)
    args = p.parse_args(argv)
    return args, load_config(args.config, args.overrides)


def main(argv=None):
    from engine.planning.reach import ReachTask, camera_frames
    args, cfg = diagnosis_args("python -m engine.planning.diagnose", __doc__.split("\n")[0], argv,
                               "an action-conditioned run: also check its predictor; several: their ensemble's",
                               "poses per episode with the 26-direction test", several=True)
    wm, camera_frame = world_model(cfg, args.checkpoint)
    pc = cfg.planning
    task = ReachTask(size=cfg.data.crop_size, tolerance=pc.tolerance, max_steps=pc.max_steps, seed=pc.goal_seed,
                     views=pc.views)
    rows = []
    try:
        for i in range(args.episodes):
            ep = task.episode(i)
            if camera_frame:   # the scene's cameras, as the planner gives them (engine.plan)
                wm.frames = camera_frames(task.arm)
            r = diagnose_episode(task, ep, wm, pc.maxnorm, args.checkpoint is not None, args.poses, pc.energy)
            r.update(energy_by_camera_axis(task, ep, wm, pc.maxnorm, pc.energy))
            rows.append(r)
            print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()), flush=True)
    finally:
        task.close()
    keys = [k for k in rows[0] if k != "episode"]
    print("mean: " + " ".join(f"{k} {np.nanmean([r[k] for r in rows]):.3f}" for k in keys))
    return rows


if __name__ == "__main__":
    main()
