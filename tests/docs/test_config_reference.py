"""docs/config.md is what docs/gen_config_reference.py writes from the typed config today, and it lists
every key of every section."""
import dataclasses
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", ROOT / "docs" / "gen_config_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_config_reference_is_current():
    text = _generator().render()
    assert (ROOT / "docs" / "config.md").read_text() == text, \
        "docs/config.md is stale: run `python docs/gen_config_reference.py` and commit the result"


def test_config_reference_lists_every_key():
    from engine import config as c
    text = (ROOT / "docs" / "config.md").read_text()
    for cls in (c.DataConfig, c.DataAugConfig, c.VideoMaskConfig, c.ImageMaskConfig, c.ModelConfig, c.LossConfig,
                c.OptimizationConfig, c.MetaConfig, c.LoggingConfig):
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in text, f"docs/config.md misses {cls.__name__}.{f.name}"
