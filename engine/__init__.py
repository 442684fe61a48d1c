"""A training engine for JEPA world models (I-JEPA, V-JEPA, V-JEPA 2).

    python -m engine.train --config configs/tiny_cpu.yaml       # a run
    from engine import load_config, JEPA, load_reference_checkpoint  # a library
"""
from engine.config import Config, ConfigError, load_config


def __getattr__(name):
    # Heavy parts load on first use, so `import engine` stays cheap for config-only tools.
    if name in ("load_reference_checkpoint", "save_reference_checkpoint"):
        from engine import reference_ckpt
        return getattr(reference_ckpt, name)
    if name == "JEPA":
        from engine.jepa import JEPA
        return JEPA
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


__all__ = ["Config", "ConfigError", "load_config", "JEPA", "load_reference_checkpoint", "save_reference_checkpoint"]
