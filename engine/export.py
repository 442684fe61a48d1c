"""Weights for other code: export a JEPA to safetensors, and load one back from that file or from a
checkpoint in the reference layout (`from_pretrained`; hubconf.py wraps it for torch.hub).

    export_safetensors(model, "model.safetensors", cfg)       # a JEPA, a ReferenceCheckpoint or a run folder
    model = from_pretrained("model.safetensors")              # the config travels in the file's metadata
    model = from_pretrained("vitl16.pth.tar", config="configs/vjepa_vitl16.yaml", kind="vjepa")   # reference layout

The safetensors file holds plain tensors (no pickle: safe to load from anyone) named
`encoder.<name>`, `predictor.<name>`, `target_encoder.<name>` with the reference's parameter names,
and metadata: `format` ("jepa-engine"), `config` (the run's typed config as YAML) and `kind`.
Loading is strict, like load_reference_checkpoint: a missing, unexpected or mis-shaped tensor is an
error listing every such name.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
import yaml
from torch import nn

from engine.config import Config, load_config

FORMAT = "jepa-engine"
PARTS = ("encoder", "predictor", "target_encoder")


class ExportError(ValueError):
    """A file is not what export_safetensors writes, or its tensors do not fit the config's model."""


def export_safetensors(model, path, config: Config | None = None, kind: str = "vjepa") -> Path:
    """Write `model`'s encoder, predictor and target encoder to `path` (atomically), with its config.

    model: a JEPA (anything with .encoder/.predictor/.target_encoder), a ReferenceCheckpoint (its own
        config and kind are used), or a run folder written by engine.train (its latest checkpoint and
        config.yaml).
    config: the Config the model was built from (not needed for a checkpoint or a run folder).
    """
    from safetensors.torch import save

    from engine.core.io import atomic_write_bytes
    model, config, kind = _resolve(model, config, kind)
    if config is None:
        raise ExportError("export_safetensors: pass config= (the Config the model was built from)")
    tensors = {}
    for part in PARTS:
        module = getattr(model, part, None)
        if module is None:
            continue
        sd = module if isinstance(module, dict) else module.state_dict()
        # safetensors stores each tensor once, contiguous, with no shared storage
        tensors.update({f"{part}.{k}": v.detach().to("cpu").contiguous().clone() for k, v in sd.items()})
    meta = {"format": FORMAT, "kind": kind, "config": yaml.safe_dump(config.to_dict(), sort_keys=False)}
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return path


def from_pretrained(path, config=None, kind: str | None = None, *, missing_target: str = "copy") -> nn.Module:
    """The JEPA (encoder, predictor, target encoder) in `path`, loaded strictly, in eval mode.

    path: a .safetensors file from export_safetensors (config and kind come from it), or a checkpoint in
        the reference layout (.pth.tar: needs `config`, the run's YAML or Config, and `kind`: "vjepa",
        "vjepa2" or "ijepa").
    missing_target: for reference checkpoints without a target encoder ("copy": start it from the
        encoder; "error"; "none").
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        model = _from_safetensors(path, config)
    else:
        if config is None or kind is None:
            raise ExportError(f"{path}: a reference-layout checkpoint needs config= (its run's YAML) and kind= "
                              "('vjepa', 'vjepa2' or 'ijepa')")
        from engine.reference_ckpt import load_reference_checkpoint
        model = load_reference_checkpoint(path, kind, config, missing_target=missing_target).to_jepa()
    return model.eval()


def _from_safetensors(path: Path, config) -> nn.Module:
    from safetensors import safe_open

    from engine.builders import build_jepa
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ExportError(f"{path}: not written by export_safetensors (metadata format {meta.get('format')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if config is None:
        cfg = load_config(raw=yaml.safe_load(meta["config"]))
    else:
        cfg = config if isinstance(config, Config) else load_config(config)
    model = build_jepa(cfg)
    own = {f"{part}.{k}": v for part in PARTS for k, v in getattr(model, part).state_dict().items()}
    problems = [f"missing {k}" for k in own if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k not in own]
    problems += [f"{k}: shape {tuple(tensors[k].shape)}, the model expects {tuple(v.shape)}"
                 for k, v in own.items() if k in tensors and tensors[k].shape != v.shape]
    if problems:
        raise ExportError(f"{path}: {len(problems)} tensor(s) do not fit the config's model: " + "; ".join(problems[:20]))
    for part in PARTS:
        prefix = part + "."
        getattr(model, part).load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                                             strict=True)
    return model


def _resolve(model, config, kind):
    """(object with the three parts, Config, kind) from a JEPA, a ReferenceCheckpoint or a run folder."""
    from engine.reference_ckpt import ReferenceCheckpoint
    if isinstance(model, ReferenceCheckpoint):
        return model, config or model.config, model.kind
    if isinstance(model, (str, Path)) and Path(model).is_dir():
        from engine.core.checkpoint import load_latest
        folder = Path(model)
        state = load_latest(folder)
        if state is None:
            raise ExportError(f"{folder}: no checkpoint (checkpoints/latest) to export")
        cfg = config or load_config(folder / "config.yaml")
        return SimpleNamespace(**{p: state.get(p) for p in PARTS}), cfg, kind
    return model, config, kind
