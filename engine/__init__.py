"""A training engine for JEPA world models (I-JEPA, V-JEPA, V-JEPA 2).

    python -m engine.train --config configs/tiny_cpu.yaml        # a run
    import engine                                                # a library: the names in engine.__all__
    model = engine.build_model(engine.load_config("configs/tiny_cpu.yaml"))

`engine.__all__` is the whole public API (the README's "Using it as a library" lists it); everything
else is internal and may change. The heavy parts load on first use, so `import engine` stays cheap
for config-only tools.
"""
from __future__ import annotations

import importlib

from engine.config import Config, ConfigError, load_config

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access)
_LAZY = {
    # the model, one step of it, the EMA target, optimizer groups and schedules
    "JEPA": "engine.jepa",
    "build_model": "engine.api",
    "jepa_loss": "engine.api",
    "TargetEMA": "engine.api",
    "param_groups": "engine.api",
    "schedules": "engine.api",
    "set_lr_wd": "engine.api",
    "prepare_for_zero3": "engine.api",
    "unwrap": "engine.api",
    # data: datasets of a config, its mask sampler, the resumable loader
    "build_dataset": "engine.builders",
    "build_mask_sampler": "engine.builders",
    "make_loader": "engine.data.loader",
    # checkpoints in the reference layout; weights as safetensors
    "load_reference_checkpoint": "engine.reference_ckpt",
    "save_reference_checkpoint": "engine.reference_ckpt",
    "export_safetensors": "engine.export",
    "from_pretrained": "engine.export",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["__version__", "Config", "ConfigError", "load_config", *_LAZY]
