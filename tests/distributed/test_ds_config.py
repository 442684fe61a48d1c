"""DeepSpeed config handling (no process group): batch sizes, precision guard, offload, stage files."""
import json

import pytest

from engine.runtime.deepspeed_engine import ds_config_path, load_ds_config, zero_stage


def test_stage_files_exist_and_parse():
    for s in range(4):
        cfg = json.loads(ds_config_path(s).read_text())
        assert zero_stage(cfg) == s and not cfg["bf16"]["enabled"]
    assert json.loads(ds_config_path(3).read_text())["zero_optimization"]["stage3_param_persistence_threshold"] == 0


def test_batch_sizes_filled_from_run_config():
    ds = load_ds_config(2, micro_batch=8, world_size=4, grad_accum=3)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == (8, 3, 96)
    assert ds["gradient_clipping"] == 0.0 and ds["zero_allow_untested_optimizer"]


def test_deepspeed_clipping_refused_with_the_fix():
    """The step clips per module (optimization.clip_grad); DeepSpeed's one global clip would be a second rule."""
    with pytest.raises(ValueError, match="optimization.clip_grad"):
        load_ds_config({"gradient_clipping": 1.0}, micro_batch=1, world_size=1)


def test_bf16_section_refused_with_the_fix():
    with pytest.raises(ValueError, match="meta.dtype=bfloat16"):
        load_ds_config({"bf16": {"enabled": True}}, micro_batch=1, world_size=1)


def test_offload_needs_zero():
    with pytest.raises(ValueError, match="stage >= 1"):
        load_ds_config(0, micro_batch=1, world_size=1, offload_optimizer=True)
    ds = load_ds_config(3, micro_batch=1, world_size=1, offload_optimizer=True)
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu" and ds["zero_force_ds_cpu_optimizer"] is False
