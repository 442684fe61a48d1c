"""engine.runtime.resume.check_config: a run saved before the engine gained a key resumes."""
import pytest

from engine.config import load_config
from engine.runtime.errors import RunError
from engine.runtime.resume import check_config


def test_a_key_missing_from_the_saved_config_reads_as_its_default():
    now = load_config("configs/ac_arm_tiny_cpu.yaml").to_dict()
    saved = {k: (dict(v) if isinstance(v, dict) else v) for k, v in now.items()}
    del saved["model"]["pred_residual"]            # a run saved before the key existed
    assert check_config(saved, now, "run") == {}
    changed = load_config("configs/ac_arm_tiny_cpu.yaml", ["model.pred_residual=true"]).to_dict()
    with pytest.raises(RunError, match=r"changed model.pred_residual: False -> True"):
        check_config(saved, changed, "run")
