"""Load and save training checkpoints in the reference repos' layout (V-JEPA, V-JEPA 2, I-JEPA).

    ck = load_reference_checkpoint("vitl16.pth.tar", "vjepa", "configs/pretrain/vitl16.yaml")
    ck.encoder, ck.predictor, ck.target_encoder      # our modules, reference weights, on CPU
    model = ck.to_jepa()                             # the JEPA step around them
    save_reference_checkpoint("out.pth.tar", model, "vjepa", config=ck.config, epoch=ck.epoch)  # resumable there

The layout the reference train scripts write (`torch.save(save_dict, path)`):
    {"encoder": sd, "predictor": sd, "target_encoder": sd, "opt": ..., "scaler": ..., "epoch": int,
     "loss": float, "batch_size": int, "world_size": int, "lr": float}
Each `sd` is the state_dict of a DistributedDataParallel-wrapped module, so its keys carry a prefix:
    vjepa, vjepa2: "module.backbone."   (DDP around the multi-mask wrapper around the model)
    ijepa:         "module."            (DDP around the model)
    vjepa2_ac:     "module."            (the vjepa_droid trainer: DDP around each model)
After the prefix, the names are those of our modules (engine.models keeps the reference's names).

Loading is strict, unlike the reference's own loaders (its hub and fine-tuning loaders load with
strict=False and drop whatever does not fit): any missing, unexpected or mis-shaped key is an error,
and one error lists every such problem across the three models. The architecture comes from the
run's config (model and data sections, read as the reference train script reads them).

A checkpoint without "target_encoder" (some exports keep only the context encoder): by default an
error says so; `missing_target="copy"` starts the target as a copy of the context encoder, which is
the reference's own rule at the start of training (`target_encoder = copy.deepcopy(encoder)`), and
`missing_target="none"` leaves it None.
"""
from __future__ import annotations

import copy
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import nn

from engine.config import Config, ConfigError, load_config
from engine.core.state import ReferenceCheckpointError, match_state

# vjepa2_ac: the vjepa_droid trainer wraps each model in DDP alone (no multi-mask wrapper).
KINDS = {"vjepa": "module.backbone.", "vjepa2": "module.backbone.", "ijepa": "module.", "vjepa2_ac": "module."}
PARTS = ("encoder", "predictor", "target_encoder")
MISSING_TARGET = ("error", "copy", "none")
# Entries besides the three models that the reference train scripts write.
META_KEYS = ("opt", "scaler", "epoch", "loss", "batch_size", "world_size", "lr")


@dataclass
class ReferenceCheckpoint:
    kind: str
    config: Config
    encoder: nn.Module
    predictor: nn.Module
    target_encoder: Optional[nn.Module]
    epoch: Optional[int] = None
    meta: dict = field(default_factory=dict)   # the other entries: opt, scaler, loss, batch_size, ...

    def to_jepa(self):
        """The JEPA step around these models, with the loss of the kind (I-JEPA: smooth L1)."""
        if self.kind == "vjepa2_ac":
            from engine.ac_jepa import ACJEPA
            loss = self.config.loss
            return ACJEPA(self.target_encoder or self.encoder, self.predictor, auto_steps=loss.auto_steps,
                          loss_exp=loss.loss_exp, normalize_reps=loss.normalize_reps)
        from engine.jepa import JEPA
        return JEPA(self.encoder, self.predictor, self.target_encoder,
                    loss="smooth_l1" if self.kind == "ijepa" else "l1", loss_exp=self.config.loss.loss_exp)


def check_kind(kind) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {sorted(KINDS)}, got {kind!r}")
    return kind


# -- config ------------------------------------------------------------------------------------------

def reference_config(config, kind: str) -> Config:
    """Our typed Config from a YAML path, a raw dict in the reference layout, or a Config, checked
    against `kind`. For raw input the V-JEPA train script's own default applies where ours differs
    (model.uniform_power defaults to true there)."""
    if isinstance(config, Config):
        cfg = config
    elif isinstance(config, (str, Path)):
        from engine.config import load_raw
        cfg = load_config(raw=_reference_defaults(load_raw(config), kind))
        cfg.source = str(config)
    elif isinstance(config, Mapping):
        cfg = load_config(raw=_reference_defaults(dict(config), kind))
    else:
        raise TypeError(f"config: expected a YAML path, a dict or an engine Config, got {type(config).__name__}")
    md = cfg.model
    if kind == "ijepa" and not cfg.is_image:
        raise ConfigError("kind 'ijepa' needs an I-JEPA config (a `mask` mapping, model keys under meta); "
                          "this one describes a video run")
    if kind != "ijepa" and cfg.is_image:
        raise ConfigError(f"kind {kind!r} needs a video config; this one is an I-JEPA (image) run")
    if (kind == "vjepa2_ac") != cfg.is_action_conditioned:
        raise ConfigError(f"kind {kind!r} and app {cfg.app!r} disagree: V-JEPA 2-AC checkpoints (kind 'vjepa2_ac') "
                          "go with `app: vjepa_droid` configs, and only they")
    if kind == "vjepa":
        # The V-JEPA train script does not read these keys: a V-JEPA checkpoint has none of them.
        for key in ("use_rope", "use_silu", "use_pred_silu"):
            if getattr(md, key):
                raise ConfigError(f"model.{key}: V-JEPA (kind 'vjepa') has no such option; use kind 'vjepa2'")
        if md.pred_num_heads is not None:
            raise ConfigError("model.pred_num_heads: V-JEPA (kind 'vjepa') uses the encoder's heads; use kind 'vjepa2'")
    return cfg


def _reference_defaults(raw: dict, kind: str) -> dict:
    if kind != "vjepa":
        return raw
    raw = copy.deepcopy(raw)
    model = raw.setdefault("model", {}) or {}
    raw["model"] = model
    model.setdefault("uniform_power", True)
    return raw


def reference_kind(cfg) -> str:
    """The reference repo whose layout fits a run: ijepa for images; vjepa2 when the config uses an
    option only V-JEPA 2 has (RoPE, SiLU, its own predictor heads); else vjepa."""
    if cfg.is_image:
        return "ijepa"
    md = cfg.model
    return "vjepa2" if (md.use_rope or md.use_silu or md.use_pred_silu or md.pred_num_heads is not None) else "vjepa"


# -- load ----------------------------------------------------------------------------------------------

def read_checkpoint(path_or_state, trusted: bool = False) -> tuple[dict, str]:
    """The checkpoint dict (on CPU) and a name for messages. Files load with weights_only=True; a file
    that needs arbitrary unpickling is refused unless `trusted`."""
    if isinstance(path_or_state, Mapping):
        return dict(path_or_state), "checkpoint"
    path = Path(path_or_state)
    if not path.is_file():
        raise FileNotFoundError(f"reference checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trusted:
            raise ReferenceCheckpointError(str(path), [
                f"it holds objects that weights_only loading refuses ({str(e).splitlines()[0]}); "
                "if you trust the file, pass trusted=True"]) from None
        state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, Mapping):
        raise ReferenceCheckpointError(str(path), [f"expected a dict of entries, got {type(state).__name__}"])
    return dict(state), str(path)


def strip_prefix(sd: Mapping, prefix: str, part: str, problems: list[str]) -> Optional[dict]:
    """Keys without the prefix; None (one problem) when no key has it: another repo's layout."""
    keys = list(sd)
    if keys and not any(isinstance(k, str) and k.startswith(prefix) for k in keys):
        problems.append(f"{part}: no key has the prefix {prefix!r} (first keys: {_first(keys)}); "
                        "was it written by another repo (kind)?")
        return None
    out = {}
    for k, v in sd.items():
        if not isinstance(k, str) or not k.startswith(prefix):
            problems.append(f"{part}: key {k!r} lacks the prefix {prefix!r}")
            continue
        out[k[len(prefix):]] = v
    return out


def _first(keys, n: int = 6) -> str:
    keys = [str(k) for k in keys]
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_reference_checkpoint(path_or_state_dict, kind: str, config, *, missing_target: str = "error",
                              ignore_keys: Iterable[str] = (), trusted: bool = False) -> ReferenceCheckpoint:
    """Build our encoder / predictor / target encoder from `config` and load a reference checkpoint
    into them, strictly (see the module docstring).

    path_or_state_dict: a checkpoint file or the dict torch.load returned.
    kind: "vjepa", "vjepa2", "ijepa" or "vjepa2_ac" (the repo and trainer that wrote it; it fixes the key
        prefix; vjepa2_ac: the action-conditioned predictor, with an `app: vjepa_droid` config).
    config: the run's YAML (path), the parsed dict, or an engine Config.
    missing_target: "error" | "copy" | "none", for a checkpoint without "target_encoder".
    ignore_keys: names (after the prefix) that may appear and are dropped on purpose.
    """
    check_kind(kind)
    if missing_target not in MISSING_TARGET:
        raise ValueError(f"missing_target: expected one of {MISSING_TARGET}, got {missing_target!r}")
    cfg = reference_config(config, kind)
    state, source = read_checkpoint(path_or_state_dict, trusted)

    from engine.builders import build_models
    encoder, predictor = build_models(cfg)
    prefix = KINDS[kind]
    problems: list[str] = []
    parts = [p for p in PARTS if p in state]
    for p in ("encoder", "predictor"):
        if p not in state:
            problems.append(f"no {p!r} entry (entries: {_first(state)})")
    has_target = "target_encoder" in state
    if not has_target and missing_target == "error":
        problems.append(f"no 'target_encoder' entry (entries: {_first(state)}); pass missing_target='copy' to "
                        "start the target from the context encoder (the reference's rule at the start of "
                        "training) or missing_target='none'")
    target = copy.deepcopy(encoder) if has_target else None
    modules = {"encoder": encoder, "predictor": predictor, "target_encoder": target}
    to_load = {}
    for p in parts:
        sd = state[p]
        if not isinstance(sd, Mapping):
            problems.append(f"{p}: expected a state dict, got {type(sd).__name__}")
            continue
        stripped = strip_prefix(sd, prefix, p, problems)
        if stripped is not None:
            to_load[p] = match_state(modules[p], stripped, p, problems, ignore_keys)
    if problems:
        raise ReferenceCheckpointError(source, problems)
    for p, sd in to_load.items():
        modules[p].load_state_dict(sd, strict=True)
    if not has_target and missing_target == "copy":
        target = copy.deepcopy(encoder)
    if target is not None:
        for prm in target.parameters():
            prm.requires_grad_(False)
    meta = {k: v for k, v in state.items() if k not in PARTS}
    epoch = state.get("epoch")
    return ReferenceCheckpoint(kind, cfg, encoder, predictor, target, int(epoch) if epoch is not None else None, meta)


# -- save ----------------------------------------------------------------------------------------------

def _state(part, name: str) -> dict:
    if isinstance(part, nn.Module):
        sd = part.state_dict()
    elif isinstance(part, Mapping):
        sd = part
    else:
        raise TypeError(f"{name}: expected a module or a state dict, got {type(part).__name__}")
    # fp32 on CPU, as the reference keeps its master weights; own storage so the file holds no views.
    return {k: (v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone()
                if torch.is_tensor(v) else v) for k, v in sd.items()}


def _named_params(part) -> list[tuple[str, torch.Tensor]]:
    if isinstance(part, nn.Module):
        return [(n, p.detach()) for n, p in part.named_parameters()]
    return [(n, v) for n, v in part.items() if torch.is_tensor(v)]   # our modules hold no buffers


def reference_opt_state(encoder, predictor, betas=(0.9, 0.999), eps: float = 1e-8) -> dict:
    """A fresh optimizer state (no moments yet) in the layout of the reference `init_opt`: AdamW with
    four groups, [encoder weights, predictor weights, encoder biases and 1-D params, predictor biases
    and 1-D params], the last two with WD_exclude and weight_decay 0. The reference resume calls
    opt.load_state_dict(checkpoint["opt"]) (V-JEPA 2 without a try), so the entry must fit; its
    schedulers overwrite lr and weight decay on the first step."""
    enc, pred = _named_params(encoder), _named_params(predictor)

    def decayed(n, p):
        return "bias" not in n and p.dim() != 1

    groups = [
        {"params": [p for n, p in enc if decayed(n, p)]},
        {"params": [p for n, p in pred if decayed(n, p)]},
        {"params": [p for n, p in enc if not decayed(n, p)], "WD_exclude": True, "weight_decay": 0},
        {"params": [p for n, p in pred if not decayed(n, p)], "WD_exclude": True, "weight_decay": 0},
    ]
    # Placeholders of the right shapes: building the optimizer must not touch the caller's tensors.
    for g in groups:
        g["params"] = [torch.empty(p.shape) for p in g["params"]]
    return torch.optim.AdamW(groups, betas=tuple(betas), eps=eps).state_dict()


# GradScaler's state at construction: the reference resume loads it when its run uses a scaler
# (bf16/fp16), and fails on the None an fp32 run writes.
FRESH_SCALER = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                "_growth_tracker": 0}


def reference_state(obj_or_parts, kind: str, config=None, **meta: Any) -> dict:
    """The checkpoint dict in the reference layout (see save_reference_checkpoint)."""
    prefix = KINDS[check_kind(kind)]
    if isinstance(obj_or_parts, Mapping):
        parts = dict(obj_or_parts)
        unknown = sorted(set(parts) - set(PARTS))
        if unknown:
            raise ValueError(f"obj_or_parts: unknown part(s) {unknown}; expected {list(PARTS)}")
        base_meta = {}
    else:
        parts = {p: getattr(obj_or_parts, p, None) for p in PARTS}
        base_meta = {}
        if isinstance(obj_or_parts, ReferenceCheckpoint):
            base_meta = dict(obj_or_parts.meta)
            if obj_or_parts.epoch is not None:
                base_meta["epoch"] = obj_or_parts.epoch
            config = config if config is not None else obj_or_parts.config
    for p in ("encoder", "predictor"):
        if parts.get(p) is None:
            raise ValueError(f"obj_or_parts: no {p!r} to save")
    unknown = sorted(set(meta) - set(META_KEYS))
    if unknown:
        raise ValueError(f"save_reference_checkpoint: unknown entries {unknown}; expected some of {list(META_KEYS)}")
    out = {}
    for p in PARTS:
        if parts.get(p) is not None:
            out[p] = {prefix + k: v for k, v in _state(parts[p], p).items()}
    merged = {k: None for k in META_KEYS}
    merged["epoch"] = 0
    merged.update(base_meta)
    merged.update(meta)
    if merged["opt"] is None:
        opt_cfg = config.optimization if isinstance(config, Config) else None
        betas = opt_cfg.betas if opt_cfg is not None and kind != "ijepa" else (0.9, 0.999)
        eps = opt_cfg.eps if opt_cfg is not None and kind != "ijepa" else 1e-8
        merged["opt"] = reference_opt_state(parts["encoder"], parts["predictor"], betas, eps)
    if merged["scaler"] is None:
        merged["scaler"] = dict(FRESH_SCALER)
    out.update({k: merged[k] for k in META_KEYS})
    return out


def save_reference_checkpoint(path, obj_or_parts, kind: str, config=None, **meta: Any) -> None:
    """Write a checkpoint the reference train scripts can resume, atomically.

    obj_or_parts: a ReferenceCheckpoint (its loaded entries are kept unless overridden here), a JEPA
        (anything with .encoder/.predictor/.target_encoder), or a dict {"encoder": ..., "predictor": ...,
        "target_encoder": ...} of modules or state dicts.
    config: the run's Config, for the optimizer's betas/eps (a ReferenceCheckpoint brings its own).
    meta: the other entries (epoch, loss, batch_size, world_size, lr, opt, scaler). Without an `opt`, a
        fresh optimizer state in the reference layout is written (the reference then resumes at `epoch`
        with new Adam moments); without a `scaler`, GradScaler's initial state.
    """
    from engine.core.io import atomic_torch_save
    atomic_torch_save(reference_state(obj_or_parts, kind, config, **meta), path)


__all__ = ["ReferenceCheckpoint", "ReferenceCheckpointError", "load_reference_checkpoint",
           "save_reference_checkpoint", "reference_state", "reference_config", "reference_opt_state"]
