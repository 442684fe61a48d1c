"""engine.planning: CEM on a known energy, batched rollouts, the reach task's errors, `python -m engine.plan`."""
import types

import numpy as np
import pytest
import torch

from engine.config import load_config
from engine.planning.cem import LatentWorldModel, cem_plan


class ShiftModel:
    """A world model whose latent moves by the action sum: the energy's minimiser is known."""
    action_dim = 3

    def __init__(self):
        self.calls = []

    def rollout(self, z0, state, acts_KHA):
        self.calls.append(tuple(acts_KHA.shape))
        return z0 + acts_KHA.sum(1)[:, None, :]

    def rollout_steps(self, z0, state, acts_KHA):
        self.calls.append(tuple(acts_KHA.shape))
        return z0[:, None] + acts_KHA.cumsum(1)[:, :, None, :]


def test_cem_finds_the_action_that_reaches_the_goal():
    pc = load_config("configs/ac_arm_tiny_cpu.yaml", ["planning.samples=64", "planning.topk=8",
                                                      "planning.iterations=12", "planning.horizon=2"]).planning
    wm, z0 = ShiftModel(), torch.zeros(1, 1, 3)
    want = torch.tensor([0.02, -0.03, 0.01])          # reachable in 2 steps within maxnorm 0.03 per axis
    actions, e = cem_plan(wm, z0, None, z0 + want, pc, torch.Generator().manual_seed(0))
    assert actions.shape == (2, 3)
    torch.testing.assert_close(actions.sum(0), want, atol=4e-3, rtol=0)
    assert e < 2e-3
    # one batched rollout of all samples per iteration (and one for the final mean)
    assert wm.calls == [(64, 2, 3)] * 12 + [(1, 2, 3)]


def test_summed_energy_prefers_getting_there_first():
    """Horizon 2 towards a goal one step away: the last step's energy (the reference's) is indifferent to the
    order of the two actions; summed over the steps it is lowest for the whole move first, then staying."""
    pc = load_config("configs/ac_arm_tiny_cpu.yaml", ["planning.samples=64", "planning.topk=8",
                                                      "planning.iterations=12", "planning.horizon=2",
                                                      "planning.energy_steps=sum"]).planning
    z0, want = torch.zeros(1, 1, 3), torch.tensor([0.02, -0.03, 0.01])
    actions, e = cem_plan(ShiftModel(), z0, None, z0 + want, pc, torch.Generator().manual_seed(0))
    torch.testing.assert_close(actions[0], want, atol=4e-3, rtol=0)
    torch.testing.assert_close(actions[1], torch.zeros(3), atol=4e-3, rtol=0)
    assert e < 4e-3


def test_energies_rank_a_constructed_pair_differently():
    """Goal: four tokens (1, 1). A: one token off by 0.8 in both features, (0.2, 1.8); B: every token off by 0.5
    in the first feature, (1.5, 1). L1 and the pooled L1 prefer A (less total difference), L2 prefers B (no
    large difference), cosine prefers B (A's far token turns away from the goal's). Each value by hand."""
    from engine.planning.cem import energy
    goal = torch.ones(1, 4, 2)
    a, b = goal.clone(), goal.clone()
    a[0, 0] = torch.tensor([0.2, 1.8])
    b[0, :, 0] = 1.5
    z = torch.cat([a, b])
    cos_a, cos_b = 2.0 / (3.28 ** 0.5 * 2 ** 0.5), 2.5 / (3.25 ** 0.5 * 2 ** 0.5)
    want = {"l1": [1.6 / 8, 2.0 / 8], "l2": [1.28 / 8, 1.0 / 8], "pooled_l1": [0.2, 0.25],
            "cosine": [(1 - cos_a) / 4, 1 - cos_b]}
    for kind, (ea, eb) in want.items():
        torch.testing.assert_close(energy(z, goal, kind), torch.tensor([ea, eb]), atol=1e-6, rtol=1e-6)
    assert [int(energy(z, goal, k).argmin()) for k in ("l1", "pooled_l1", "l2", "cosine")] == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="unknown planning energy 'l3'"):
        energy(z, goal, "l3")


def test_unknown_energy_options_are_refused_by_name():
    from engine.config import PLANNING_ENERGIES, ConfigError
    from engine.planning.cem import ENERGIES
    assert tuple(ENERGIES) == PLANNING_ENERGIES            # every name the config takes has its energy
    assert load_config("configs/ac_arm_tiny_cpu.yaml").planning.energy == "l1"   # the reference's by default
    with pytest.raises(ConfigError, match="planning.energy: unknown 'l3'"):
        load_config("configs/ac_arm_tiny_cpu.yaml", ["planning.energy=l3"])
    with pytest.raises(ConfigError, match="planning.energy_steps: unknown 'mean'"):
        load_config("configs/ac_arm_tiny_cpu.yaml", ["planning.energy_steps=mean"])
    with pytest.raises(ConfigError, match="planning.energy_steps: 'sum' is for the flat planner"):
        load_config("configs/hjepa_tiny_cpu.yaml", ["planning.energy_steps=sum"])
    with pytest.raises(ConfigError, match="planning.views: must be >= 1, got 0"):
        load_config("configs/ac_arm_tiny_cpu.yaml", ["planning.views=0"])
    with pytest.raises(ConfigError, match="planning.views: 2, but the maze task has one camera"):
        load_config("configs/hjepa_tiny_cpu.yaml", ["planning.views=2"])
    with pytest.raises(ConfigError, match="planning.task: unknown 'stack'; expected one of"):
        load_config("configs/ac_arm_tiny_cpu.yaml", ["planning.task=stack"])
    with pytest.raises(ConfigError, match="planning.task: 'push' is an arm task"):
        load_config("configs/hjepa_tiny_cpu.yaml", ["planning.task=push"])
    for config in ("configs/hjepa_tiny_cpu.yaml", "configs/tiny_cpu.yaml"):
        with pytest.raises(ConfigError, match="data.camera_frame"):
            load_config(config, ["data.camera_frame=true"])
    with pytest.raises(ConfigError, match="data.camera_frame: True, but model.action_dim 0 means"):
        load_config("configs/ac_events_tiny_cpu.yaml", ["data.camera_frame=true"])   # an unconditioned predictor


def test_summed_energy_needs_each_steps_latents():
    pc = load_config("configs/ac_arm_tiny_cpu.yaml", ["planning.energy_steps=sum"]).planning

    class LastOnly:
        action_dim = 3

        def rollout(self, z0, state, acts_KHA):
            return z0 + acts_KHA.sum(1)[:, None, :]
    with pytest.raises(ValueError, match="'sum' needs each step's latents, and LastOnly rolls out only the last"):
        cem_plan(LastOnly(), torch.zeros(1, 1, 3), None, torch.zeros(1, 1, 3), pc)


@pytest.fixture(scope="module")
def tiny_world_model():
    from engine.builders import build_jepa
    cfg = load_config("configs/ac_arm_tiny_cpu.yaml", ["data.crop_size=32", "model.pred_depth=1"])
    torch.manual_seed(0)
    return LatentWorldModel(build_jepa(cfg), cfg.data.crop_size)


def test_rollout_calls_the_predictor_once_per_horizon_step(tiny_world_model):
    wm = tiny_world_model
    seen = []
    hook = wm.model.predictor.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        z0 = wm.encode_frame(np.zeros((32, 32, 3), np.uint8))
        out = wm.rollout(z0, np.zeros(10, np.float32), torch.zeros(5, 3, 3))
    finally:
        hook.remove()
    n, D = wm.model.tokens_per_frame, z0.shape[-1]
    assert out.shape == (5, n, D)
    assert seen == [(5, n, D), (5, 2 * n, D), (5, 3 * n, D)]


def test_ensemble_energy_is_the_mean_of_its_members_energies(tiny_world_model):
    """Two differently seeded models: the ensemble's latents are theirs side by side, its rollout each one's own
    rollout, and so the planning energy of its rollout is the mean of the two members' energies."""
    from engine.builders import build_jepa
    from engine.planning.cem import energy
    from engine.planning.ensemble import EnsembleWorldModel
    cfg = load_config("configs/ac_arm_tiny_cpu.yaml", ["data.crop_size=32", "model.pred_depth=1"])
    torch.manual_seed(1)
    other = LatentWorldModel(build_jepa(cfg), cfg.data.crop_size)
    members = [tiny_world_model, other]
    ens = EnsembleWorldModel(members)
    rng = np.random.default_rng(0)
    frame, goal = (rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2))
    state, acts = rng.normal(size=10).astype(np.float32), torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(0))
    z0, zg = ens.encode_frame(frame), ens.encode_frame(goal)
    D = tiny_world_model.encode_frame(frame).shape[-1]
    assert z0.shape[-1] == 2 * D
    e_members = [energy(m.rollout(m.encode_frame(frame), state, acts), m.encode_frame(goal)) for m in members]
    assert not torch.allclose(e_members[0], e_members[1])          # the members differ: the mean is a real mean
    out = ens.rollout(z0, state, acts)
    torch.testing.assert_close(out[..., D:], other.rollout(other.encode_frame(frame), state, acts))
    torch.testing.assert_close(energy(out, zg), (e_members[0] + e_members[1]) / 2)
    steps = ens.rollout_steps(z0, state, acts)                      # each step's latents, the members' side by side
    torch.testing.assert_close(steps[:, -1], out)
    torch.testing.assert_close(steps[..., :D], tiny_world_model.rollout_steps(tiny_world_model.encode_frame(frame),
                                                                              state, acts))


def test_two_views_energy_is_the_mean_of_each_cameras_energy(tiny_world_model):
    """One model, two cameras: the latents are each view's side by side, and the energy of the rollout is the
    mean of the energies one camera alone gives."""
    from engine.planning.cem import energy
    from engine.planning.ensemble import EnsembleWorldModel
    wm = tiny_world_model
    both = EnsembleWorldModel([wm], views=2)
    rng = np.random.default_rng(1)
    frames, goals = (rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8) for _ in range(2))
    state, acts = rng.normal(size=10).astype(np.float32), torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(1))
    per_view = [energy(wm.rollout(wm.encode_frame(f), state, acts), wm.encode_frame(g)) for f, g in zip(frames, goals)]
    assert not torch.allclose(per_view[0], per_view[1])
    torch.testing.assert_close(energy(both.rollout(both.encode_frame(frames), state, acts), both.encode_frame(goals)),
                               (per_view[0] + per_view[1]) / 2)
    with pytest.raises(ValueError, match=r"goal image: expected one image per camera, \[2, S, S, 3\] \(planning.views\), "
                                         r"got shape \(32, 32, 3\)"):
        both.encode_frame(goals[0], "goal image")


def test_camera_frames_turn_each_views_state_and_actions_before_its_rollout(tiny_world_model):
    """A model trained in camera frames: per view, the rollout gets the state and candidate actions in that
    camera's frame (engine.planning.reach.camera_frames), so the energy is the mean of those rollouts'."""
    from engine.planning.cem import energy
    from engine.planning.ensemble import EnsembleWorldModel
    wm = tiny_world_model
    both = EnsembleWorldModel([wm], views=2)
    turn = [lambda s, a: (s * 0.5, a.flip(-1)), lambda s, a: (s + 1.0, -a)]
    both.frames = turn
    rng = np.random.default_rng(2)
    frames, goals = (rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8) for _ in range(2))
    state, acts = rng.normal(size=10).astype(np.float32), torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(2))
    want = [energy(wm.rollout(wm.encode_frame(f), *t(state, acts)), wm.encode_frame(g)) for f, g, t in
            zip(frames, goals, turn)]
    got = energy(both.rollout(both.encode_frame(frames), state, acts), both.encode_frame(goals))
    torch.testing.assert_close(got, (want[0] + want[1]) / 2)
    both.frames = None
    assert not torch.allclose(energy(both.rollout(both.encode_frame(frames), state, acts), both.encode_frame(goals)),
                              got)


def test_camera_frames_of_the_scene_are_the_sources():
    """The planner's per-camera turn of (state, actions) is the arm source's to_camera for that camera."""
    pytest.importorskip("pybullet", reason="pybullet (requirements.txt) is not installed")
    from engine.datagen.sources.pybullet_arm import camera_matrix, to_camera
    from engine.planning.reach import ReachTask, camera_frames
    task = ReachTask(size=32, views=2)
    try:
        task.episode(0)
        fns, cams = camera_frames(task.arm), [camera_matrix(v) for v in task.arm.cameras]
        state = task.arm.state()
    finally:
        task.close()
    acts = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(0))
    for fn, M in zip(fns, cams):
        s, a = fn(state, acts)
        want_a, want_s = to_camera(M, acts.reshape(-1, 3).numpy(), state[None])
        np.testing.assert_allclose(s, want_s[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.reshape(-1, 3).numpy(), want_a, rtol=1e-5, atol=1e-6)


def test_ensemble_of_mismatched_models_is_refused(tiny_world_model):
    from engine.planning.ensemble import EnsembleWorldModel
    with pytest.raises(ValueError, match="needs world models and views, got 0 model"):
        EnsembleWorldModel([])
    other = LatentWorldModel(tiny_world_model.model, 64)
    with pytest.raises(ValueError, match=r"differ in crop_size: \[32, 64\]"):
        EnsembleWorldModel([tiny_world_model, other])


def test_goal_image_of_the_wrong_size_is_refused(tiny_world_model):
    with pytest.raises(ValueError, match="goal image: expected an RGB image of 32x32"):
        tiny_world_model.encode_frame(np.zeros((64, 64, 3), np.uint8), "goal image")


def test_checkpoint_of_another_kind_is_refused(tmp_path):
    from engine.planning.world_model import load_world_model
    cfg = load_config("configs/tiny_cpu.yaml")
    path = tmp_path / "step.pt"
    torch.save({"config": cfg.to_dict(), "encoder": {}, "predictor": {}}, path)
    with pytest.raises(ValueError, match="`app: vjepa` run, not a checkpoint of an `app: vjepa_droid or lewm` run"):
        load_world_model(path)
    with pytest.raises(FileNotFoundError, match="no checkpoints/latest"):
        load_world_model(tmp_path)


def test_unreachable_goal_is_refused():
    pytest.importorskip("pybullet", reason="pybullet (requirements.txt) is not installed")
    from engine.planning.reach import ReachTask, UnreachableGoal
    task = ReachTask(size=32)
    try:
        with pytest.raises(UnreachableGoal, match="outside the arm's workspace"):
            task.episode(0, goal_pos=[1.5, 0.0, 0.3])
        with pytest.raises(UnreachableGoal, match="not reachable: the oracle"):
            task.episode(0, goal_pos=[0.75, 0.35, 0.04])   # a workspace corner the arm cannot reach
    finally:
        task.close()


def test_camera_axes_are_the_scene_cameras():
    """The axes the diagnosis moves along: orthonormal, and the backward one points from the camera's target to
    its eye (1.25 m away, 30 degrees above, as the arm source places it)."""
    pytest.importorskip("pybullet", reason="pybullet (requirements.txt) is not installed")
    from engine.planning.diagnose import camera_axes
    from engine.planning.reach import ReachTask
    task = ReachTask(size=32)
    try:
        task.episode(0)
        axes = camera_axes(task.arm)
        view = np.asarray(task.arm.view, dtype=np.float64).reshape(4, 4)
    finally:
        task.close()
    np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-6)
    eye = -axes.T @ view[3, :3]                       # the camera's position: -R^T t
    to_eye = eye - np.array([0.45, 0.0, 0.3])
    np.testing.assert_allclose(np.linalg.norm(to_eye), 1.25, rtol=1e-5)
    np.testing.assert_allclose(axes[2], to_eye / 1.25, atol=1e-5)
    np.testing.assert_allclose(axes[2][2], np.sin(np.radians(30)), atol=1e-5)


def test_plan_cli_runs_closed_loop(tmp_path):
    """A one-step-trained tiny model plans one short episode next to the baselines and writes its table."""
    pytest.importorskip("pybullet", reason="pybullet (requirements.txt) is not installed")
    from engine.datagen.__main__ import main as data_main
    from engine.plan import main as plan_main
    from engine.train import main as train_main
    data_main(["robot", "--output", str(tmp_path / "arm"), "--num", "2", "--frames", "8", "--size", "32",
               "--policies", "explore"])
    small = ["--set", "data.crop_size=32", "--set", "model.pred_depth=1"]
    train_main(["--config", "configs/ac_arm_tiny_cpu.yaml", "--output", str(tmp_path / "run"), "--max-steps", "1",
                "--no-progress", "--set", f"data.datasets=[{tmp_path / 'arm' / 'robot.csv'}]",
                "--set", "data.batch_size=2", "--set", "data.num_workers=0", *small])
    rows = plan_main(["--config", "configs/ac_arm_tiny_cpu.yaml", "--checkpoint", str(tmp_path / "run"),
                      "--episodes", "1", "--csv", str(tmp_path / "plan.csv"), "--set", "planning.samples=8",
                      "--set", "planning.topk=2", "--set", "planning.iterations=1", "--set", "planning.max_steps=3"])
    by = {r["controller"]: r for r in rows}
    assert set(by) == {"cem", "random", "zero", "oracle"}
    assert by["cem"]["seconds_per_action"] > 0 and by["cem"]["steps"] == 3
    assert by["zero"]["success_rate"] == 0.0 and by["oracle"]["final_distance_m"] < by["zero"]["final_distance_m"]
    assert len((tmp_path / "plan.csv").read_text().splitlines()) == 5
    assert "energy,energy_steps" in (tmp_path / "plan.csv").read_text().splitlines()[0]
    # the run twice over as an ensemble: the same energies, so the same plan, and the CSV names both
    twice = plan_main(["--config", "configs/ac_arm_tiny_cpu.yaml", "--checkpoint", str(tmp_path / "run"),
                       str(tmp_path / "run"), "--episodes", "1", "--csv", str(tmp_path / "plan.csv"), "--baselines",
                       "--set", "planning.samples=8", "--set", "planning.topk=2", "--set", "planning.iterations=1",
                       "--set", "planning.max_steps=3"])
    assert [r["controller"] for r in twice] == ["cem"]
    assert twice[0]["final_distance_m"] == pytest.approx(by["cem"]["final_distance_m"], rel=1e-6)
    assert f"{tmp_path / 'run'} + {tmp_path / 'run'}" in (tmp_path / "plan.csv").read_text().splitlines()[-1]
    # two cameras: the task renders both, the goal and every frame are [2, S, S, 3], the CSV says so
    two = plan_main(["--config", "configs/ac_arm_tiny_cpu.yaml", "--checkpoint", str(tmp_path / "run"),
                     "--episodes", "1", "--csv", str(tmp_path / "plan.csv"), "--baselines", "--set", "planning.views=2",
                     "--set", "planning.samples=8", "--set", "planning.topk=2", "--set", "planning.iterations=1",
                     "--set", "planning.max_steps=3"])
    assert [r["controller"] for r in two] == ["cem"] and two[0]["steps"] == 3
    lines = (tmp_path / "plan.csv").read_text().splitlines()
    assert dict(zip(lines[0].split(","), lines[-1].split(",")))["views"] == "2"
    # a model trained on camera-frame actions and states plans with them turned into each camera's frame
    train_main(["--config", "configs/ac_arm_tiny_cpu.yaml", "--output", str(tmp_path / "cam"), "--max-steps", "1",
                "--no-progress", "--set", f"data.datasets=[{tmp_path / 'arm' / 'robot.csv'}]", "--set",
                "data.camera_frame=true", "--set", "data.batch_size=2", "--set", "data.num_workers=0", *small])
    cam = plan_main(["--config", "configs/ac_arm_tiny_cpu.yaml", "--checkpoint", str(tmp_path / "cam"),
                     "--episodes", "1", "--baselines", "--set", "planning.views=2", "--set", "planning.samples=8",
                     "--set", "planning.topk=2", "--set", "planning.iterations=1", "--set", "planning.max_steps=2"])
    assert cam[0]["steps"] == 2
    with pytest.raises(SystemExit):   # one world frame, one camera frame: refused, one line
        plan_main(["--config", "configs/ac_arm_tiny_cpu.yaml", "--checkpoint", str(tmp_path / "run"),
                   str(tmp_path / "cam"), "--episodes", "1", "--baselines"])
    # the push task: the same planner, scored by the cube's distance to its goal; the CSV names the task
    push = plan_main(["--config", "configs/ac_arm_tiny_cpu.yaml", "--checkpoint", str(tmp_path / "run"),
                      "--episodes", "1", "--csv", str(tmp_path / "plan.csv"), "--baselines", "zero", "--set",
                      "planning.task=push", "--set", "planning.samples=8", "--set", "planning.topk=2", "--set",
                      "planning.iterations=1", "--set", "planning.max_steps=2"])
    by = {r["controller"]: r for r in push}
    assert set(by) == {"cem", "zero"} and by["cem"]["steps"] == 2
    assert by["zero"]["final_distance_m"] == pytest.approx(0.10, abs=0.015)   # the cube stays where it was
    lines = (tmp_path / "plan.csv").read_text().splitlines()
    assert dict(zip(lines[0].split(","), lines[-1].split(",")))["task"] == "push"


def test_push_oracle_brings_the_cube_to_its_goal_and_the_arm_alone_does_not_count():
    pytest.importorskip("pybullet", reason="pybullet (requirements.txt) is not installed")
    from engine.planning.push import PUSH_DISTANCE, PushTask
    from engine.planning.reach import UnreachableGoal, oracle_action
    task = PushTask(size=32, tolerance=0.04, max_steps=40)
    try:
        ep = task.episode(3)
        assert np.linalg.norm(ep.goal_pos[:2] - ep.start_pos[:2]) == pytest.approx(PUSH_DISTANCE, abs=0.02)
        assert ep.goal_image.shape == (32, 32, 3)
        oracle = task.run(ep, lambda frame, state, e, arm: task.oracle(e))
        assert oracle.success and oracle.final_distance <= 0.04
        zero = task.run(ep, lambda frame, state, e, arm: np.zeros(3))
        start = np.linalg.norm(ep.goal_pos[:2] - ep.start_pos[:2])
        assert not zero.success and zero.final_distance == pytest.approx(start, abs=1e-3)
        # the end effector taken high above the cube's goal leaves the cube where it was
        above = ep.goal_pos + [0, 0, 0.25]
        hover = task.run(ep, lambda frame, state, e, arm: oracle_action(arm.target, above))
        assert np.linalg.norm(task.arm.ee()[0] - above) < 0.05 and not hover.success
        with pytest.raises(UnreachableGoal, match="outside the cube's area"):
            task.episode(0, goal_pos=[0.9, 0.0])
    finally:
        task.close()



def test_subgoal_images_come_from_the_oracles_way_and_are_aimed_at_in_turn(monkeypatch):
    pytest.importorskip("pybullet", reason="pybullet (requirements.txt) is not installed")
    import engine.planning.cem as cem
    from engine.plan import planner
    from engine.planning.push import PushTask
    task = PushTask(size=32, subgoals=3)
    try:
        ep = task.episode(3)
    finally:
        task.close()
    assert len(ep.subgoal_images) == 2 and all(im.shape == (32, 32, 3) for im in ep.subgoal_images)
    ims = ep.subgoal_images + [ep.goal_image]
    assert all(not np.array_equal(a, b) for a, b in zip(ims, ims[1:]))   # the arm moved between them

    class Tagged:   # encode_frame gives each image its own tag: which one CEM aims at is then readable
        def encode_frame(self, image, what="frame"):
            return torch.tensor(float(next((k for k, im in enumerate(ims) if im is image), -1)))

    aims = []
    monkeypatch.setattr(cem, "cem_plan", lambda wm, z0, state, goal, pc, gen: (aims.append(int(goal)) or
                                                                              (torch.zeros(1, 3), None)))
    pc = load_config("configs/ac_arm_tiny_cpu.yaml", ["planning.subgoals=3", "planning.max_steps=7"]).planning
    act = planner(Tagged(), pc, seed=0, steps_per_subgoal=pc.max_steps // pc.subgoals)
    for _ in range(8):
        act(np.zeros((32, 32, 3), np.uint8), np.zeros(10), ep, None)
    assert aims == [0, 0, 1, 1, 2, 2, 2, 2]   # 7 // 3 = 2 actions per subgoal, then the goal
    with pytest.raises(Exception, match="planning.subgoals: must lie in 1..planning.max_steps"):
        load_config("configs/ac_arm_tiny_cpu.yaml", ["planning.subgoals=0"])
    with pytest.raises(Exception, match="planning.subgoals: 2, but the maze's planner makes its own subgoals"):
        load_config("configs/hjepa_tiny_cpu.yaml", ["planning.subgoals=2"])
