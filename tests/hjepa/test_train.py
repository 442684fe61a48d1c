"""The tiny H-JEPA config trains through `python -m engine.train` (the loop every app shares), its
checkpoint holds every level, and a resumed run continues with the same losses."""
import subprocess
import sys

import pytest
import torch

from tests.tiny_runs import HJEPA_RUN, HJEPA_TINY, metric_columns, train_args


def args(maze_csv, out, *extra):
    return train_args(HJEPA_TINY, out, HJEPA_RUN + ["optimization.ipe=3", "optimization.warmup=1",
                                                    f"data.datasets=[{maze_csv}]"], *extra)


def losses(folder):
    return metric_columns(folder, "loss", "loss_tf", "loss_rollout")


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
