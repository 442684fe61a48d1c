"""The tiny H-JEPA config trains through `python -m engine.train` (the loop every app shares), its
checkpoint holds every level, and a resumed run continues with the same losses."""
import csv
import subprocess
import sys

import pytest
import torch

SMALL = ["model.pred_depth=1", "hierarchy.depth=1", "hierarchy.pred_depth=1", "hierarchy.embed_dim=32",
         "hierarchy.num_heads=2", "hierarchy.pred_embed_dim=48", "hierarchy.pred_num_heads=2", "data.batch_size=2",
         "data.num_workers=0", "optimization.ipe=3", "optimization.epochs=2", "optimization.warmup=1",
         "meta.checkpoint_every=2", "logging.tensorboard=false"]


@pytest.fixture(scope="module")
def maze_csv(tmp_path_factory):
    from engine.datagen.sources import generate_maze
    return generate_maze(tmp_path_factory.mktemp("maze"), 4, num_frames=14, size=32, seed=0)


def args(maze_csv, out, *extra):
    sets = [a for o in SMALL + [f"data.datasets=[{maze_csv}]"] for a in ("--set", o)]
    return ["--config", "configs/hjepa_tiny_cpu.yaml", "--output", str(out), "--no-progress", *sets, *extra]


def losses(folder):
    with open(folder / "metrics.csv") as f:
        return [(int(r["step"]), r["loss"], r["loss_tf"], r["loss_rollout"]) for r in csv.DictReader(f)]


def test_tiny_config_trains_every_level_and_resumes_exactly(maze_csv, tmp_path):
    r = subprocess.run([sys.executable, "-m", "engine.train", *args(maze_csv, tmp_path / "a", "--max-steps", "4")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    state = torch.load(tmp_path / "a" / "checkpoints" / "step_0000004.pt", weights_only=False)
    for part in ("encoder", "predictor", "target_encoder"):
        assert {k.split(".")[0] for k in state[part]} == {"level1", "level2"}
    # the level-2 target moved (EMA) and the frozen frame encoder did not
    from engine.planning.world_model import load_world_model
    hj, _ = load_world_model(tmp_path / "a", hierarchical=True)
    assert not torch.equal(state["target_encoder"]["level2.embed.weight"], state["encoder"]["level2.embed.weight"])
    assert hj.num_levels == 2
    first = losses(tmp_path / "a")
    assert [s for s, *_ in first] == [0, 1, 2, 3]
    assert float(first[-1][1]) < float(first[0][1])
    # the same run in this process, stopped after 2 steps and resumed: the same losses, bitwise
    from engine.train import main
    main(args(maze_csv, tmp_path / "b", "--max-steps", "2"))
    main(args(maze_csv, tmp_path / "b", "--max-steps", "4", "--resume"))
    assert losses(tmp_path / "b") == first


def test_a_bad_hierarchy_key_is_one_line_naming_it(maze_csv, tmp_path, capsys):
    from engine.train import main
    with pytest.raises(SystemExit) as e:
        main(args(maze_csv, tmp_path, "--set", "hierarchy.stride=9"))
    assert e.value.code == 2
    assert "hierarchy.stride: 9 is more than hierarchy.window" in capsys.readouterr().err
