"""The `hierarchy` section of `app: hjepa`: every key acts or is refused by name."""
import pytest

from engine.config import ConfigError, level_steps, load_config

TINY = "configs/hjepa_tiny_cpu.yaml"


def test_tiny_config_loads_with_two_levels_of_three_steps():
    cfg = load_config(TINY)
    assert cfg.is_hierarchical and cfg.is_action_conditioned
    assert level_steps(cfg.frames_per_clip, cfg.hierarchy) == [12, 3]


def test_large_config_loads():
    cfg = load_config("configs/hjepa_vitl16.yaml")
    assert cfg.hierarchy.levels == 3 and level_steps(cfg.frames_per_clip, cfg.hierarchy)[-1] >= 2


@pytest.mark.parametrize("override, match", [
    ("hierarchy.levels=1", "hierarchy.levels: an hjepa stack has >= 2 levels"),
    ("hierarchy.stride=5", "hierarchy.stride: 5 is more than hierarchy.window"),
    ("hierarchy.window=0", "hierarchy.window: must be >= 1"),
    ("hierarchy.embed_dim=90", "hierarchy.embed_dim: 90 is not divisible by hierarchy.num_heads"),
    ("hierarchy.pred_embed_dim=90", "hierarchy.pred_embed_dim: 90 is not divisible"),
    ("hierarchy.train=greedy", "hierarchy.train: expected joint or level_by_level"),
    ("hierarchy.level=1", "hierarchy.level / hierarchy.init_checkpoint: only read with hierarchy.train: level_by_level"),
    ("hierarchy.init_checkpoint=runs/x", "only read with hierarchy.train: level_by_level"),
    ("hierarchy.depth=two", "hierarchy.depth: expected an integer"),
    ("hierarchy.stack=3", "hierarchy.stack: unknown key"),
    ("planning.top_topk=100", "planning.top_topk: 100 is more than planning.top_samples"),
    ("planning.top_horizon=0", "planning.top_horizon: must be >= 1"),
    ("hierarchy.auto_steps=0", "hierarchy.auto_steps: must be >= 1"),
    ("loss.std_coeff=1.0", "loss.std_coeff: 1.0 is not supported with app hjepa"),
    ("planning.top_planner=tree", r"planning.top_planner: unknown 'tree'; expected one of \['cem', 'graph'\]"),
    ("planning.graph_lookahead=2", "planning.graph_lookahead: only the graph top level reads it"),
    ("planning.graph_data=d.csv", "planning.graph_data: only the graph top level reads it"),
    ("planning.top_planner=graph", "planning.graph_data: planning.top_planner graph needs"),
])
def test_bad_hierarchy_values_are_refused_by_name(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TINY, [override])


def test_clips_too_short_for_the_top_level_name_the_length_needed():
    with pytest.raises(ConfigError, match=r"data.dataset_fpcs: clips of 12 frames give \[12, 3, 0\] steps.*>= 32 frames"):
        load_config(TINY, ["hierarchy.levels=3"])


def test_level_by_level_needs_the_levels_below():
    with pytest.raises(ConfigError, match="hierarchy.init_checkpoint: training level 2 alone needs the levels below"):
        load_config(TINY, ["hierarchy.train=level_by_level", "hierarchy.level=2"])
    with pytest.raises(ConfigError, match=r"hierarchy.level: the level to train must lie in 1..2"):
        load_config(TINY, ["hierarchy.train=level_by_level", "hierarchy.level=3"])
    cfg = load_config(TINY, ["hierarchy.train=level_by_level", "hierarchy.level=1"])
    assert cfg.hierarchy.level == 1


@pytest.mark.parametrize("config", ["configs/ac_arm_tiny_cpu.yaml", "configs/tiny_cpu.yaml"])
def test_hierarchy_keys_are_refused_outside_hjepa(config):
    with pytest.raises(ConfigError, match="hierarchy.window: 8 is not supported with app"):
        load_config(config, ["hierarchy.window=8"])
    with pytest.raises(ConfigError, match="planning.top_samples: 10 is not supported with app"):
        load_config(config, ["planning.top_samples=10"])
    with pytest.raises(ConfigError, match="planning.top_planner: 'graph' is not supported with app"):
        load_config(config, ["planning.top_planner=graph"])


def test_graph_keys_are_checked_when_the_graph_plans():
    sets = ["planning.top_planner=graph", "planning.graph_data=d.csv"]
    with pytest.raises(ConfigError, match="planning.graph_neighbours / planning.graph_lookahead: must be >= 0 / >= 1"):
        load_config(TINY, sets + ["planning.graph_lookahead=0"])
    pc = load_config(TINY, sets + ["planning.graph_neighbours=8"]).planning
    assert (pc.top_planner, pc.graph_data, pc.graph_neighbours, pc.graph_lookahead) == ("graph", "d.csv", 8, 1)
