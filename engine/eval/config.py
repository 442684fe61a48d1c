"""Frozen-evaluation configs: the reference repos' eval YAMLs, read unchanged, into one typed EvalConfig.

    ec = load_eval_config("configs/eval/tiny_probe.yaml", overrides=["experiment.optimization.num_epochs=5"])
    ec.data.dataset_val, ec.optimization.heads[0].lr, ec.encoder.model_name, ec.output_folder

Two layouts are read:
- V-JEPA 2 (facebookresearch/vjepa2 configs/eval/*): `experiment: {classifier, data, optimization}` and
  `model_kwargs: {checkpoint, pretrain_kwargs: {encoder}, wrapper_kwargs}`; a grid of probe settings in
  `optimization.multihead_kwargs`. This is also our own layout (configs/eval/).
- V-JEPA (facebookresearch/jepa configs/evals/*): `pretrain`, `data`, `optimization` with one lr / wd;
  mapped onto the first: one grid entry, the classifier's heads = the encoder's, depth 1, the "vjepa"
  pooler layout, the checkpoint at pretrain.folder/pretrain.checkpoint. The weight decay's final value is
  1e-6, as its init_opt leaves it; the clip step is data.frame_step (its eval reads the key from the
  pretrain section, where none of its configs sets it, so the default 4 it falls back to is what they use).
Our additions: `experiment.classifier.layout`, `experiment.features` (cache, workers, train
augmentations), `experiment.knn` (k, temperature), `model_kwargs.pretrain_kwargs.encoder.config` (one
of this engine's training configs: the architecture of a model trained here; its `checkpoint` is a
training checkpoint or a run folder, whose latest checkpoint is taken).
Launcher keys (nodes, tasks_per_node, cpus_per_task, mem_per_gpu, max_workers) and the reference's
probe-resume flag are accepted and listed in `ignored_keys`; any other unknown key, a wrong type or an
impossible value is a ConfigError naming it.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from engine.config import ConfigError, _build, _coerce, load_typed

EVAL_NAMES = ("video_classification_frozen", "image_classification_frozen")
IGNORED_TOP = ("nodes", "tasks_per_node", "cpus_per_task", "mem_per_gpu", "max_workers", "resume_checkpoint")
# the reference's module that wraps its encoder for these evaluations; ours is engine.eval.features
REFERENCE_MODULES = ("evals.video_classification_frozen.modelcustom.vit_encoder_multiclip",
                     "evals.video_classification_frozen.modelcustom.vit_encoder_multiclip_multilevel",
                     "evals.image_classification_frozen.modelcustom.vit_encoder")
CACHE_MODES = ("auto", "always", "never")


@dataclass
class HeadConfig:
    """One probe of the grid: its learning-rate (warm-up then cosine) and weight-decay (cosine) schedules."""
    lr: float = 1e-3
    start_lr: float = 1e-3
    final_lr: float = 0.0
    warmup: float = 0.0                 # epochs
    weight_decay: float = 0.01
    final_weight_decay: float = 0.01


@dataclass
class EvalData:
    dataset_type: str = "VideoDataset"
    dataset_train: Optional[str] = None   # CSV of "path label" lines
    dataset_val: Optional[str] = None
    num_classes: Optional[int] = None     # None: 1 + the largest label seen
    frames_per_clip: int = 16
    frame_step: int = 4
    clip_duration: Optional[float] = None
    num_segments: int = 1                 # clips per video, spread over it
    num_views_per_segment: int = 1        # spatial views per clip at test time
    resolution: int = 224
    normalization: Optional[list[list[float]]] = None   # [[mean x3], [std x3]]
    random_horizontal_flip: bool = True   # training clips' augmentation (the reference's defaults)
    random_resize_scale: list[float] = field(default_factory=lambda: [0.3, 1.0])
    random_resize_aspect_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    num_workers: Optional[int] = None
    # images (image_classification_frozen): root_path/image_folder/{train,val}/<class>/<image>
    root_path: Optional[str] = None
    image_folder: Optional[str] = None
    dataset_name: Optional[str] = None


@dataclass
class EvalClassifier:
    num_heads: Optional[int] = None       # None: the encoder's
    num_probe_blocks: int = 1
    layout: Optional[str] = None          # vjepa | vjepa2 (None: the YAML layout's)


@dataclass
class EvalOptimization:
    batch_size: int = 16
    num_epochs: int = 20
    use_bfloat16: bool = False
    use_pos_embed: bool = False
    attend_across_segments: bool = True
    multihead_kwargs: list[Any] = field(default_factory=lambda: [{}])


@dataclass
class EvalFeatures:
    cache: str = "auto"                   # auto: on disk when they fit; always; never (streamed)
    num_workers: int = 2                  # DataLoader workers decoding clips
    batch_size: int = 16                  # clips per encoder forward
    train_augmentations: int = 1          # augmented copies of each training clip kept in the cache


@dataclass
class EvalKNN:
    k: int = 20
    temperature: float = 0.07


@dataclass
class EvalEncoder:
    model_name: str = "vit_large"
    checkpoint_key: str = "target_encoder"
    patch_size: int = 16
    tubelet_size: int = 2
    frames_per_clip: Optional[int] = None   # the pretraining clip length (V-JEPA layout); None: data's
    uniform_power: bool = False
    use_rope: bool = False
    use_silu: bool = False
    wide_silu: bool = True
    use_sdpa: bool = True
    img_temporal_dim_size: Optional[int] = None
    config: Optional[str] = None            # ours: a training config of this engine


@dataclass
class EvalWrapper:
    max_frames: int = 128
    use_pos_embed: bool = False
    out_layers: Optional[list[int]] = None
    img_as_video_nframes: Optional[int] = None


@dataclass
class EvalConfig:
    eval_name: str
    tag: Optional[str]
    output_folder: Optional[str]
    checkpoint: Optional[str]
    layout: str                            # the YAML's: vjepa | vjepa2
    data: EvalData
    classifier: EvalClassifier
    optimization: EvalOptimization
    heads: list[HeadConfig]
    features: EvalFeatures
    knn: EvalKNN
    encoder: EvalEncoder
    wrapper: EvalWrapper
    ignored_keys: list[str] = field(default_factory=list)
    source: Optional[str] = None

    @property
    def is_image(self) -> bool:
        return self.eval_name == "image_classification_frozen"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _from_vjepa(raw: dict) -> dict:
    """The V-JEPA layout as the V-JEPA 2 one (module docstring)."""
    raw = copy.deepcopy(raw)
    pre, data, opt = (dict(raw.pop(k, None) or {}) for k in ("pretrain", "data", "optimization"))
    enc = {}
    for k in ("model_name", "checkpoint_key", "patch_size", "tubelet_size", "frames_per_clip", "uniform_power",
              "use_silu", "use_sdpa", "use_rope"):
        if k in pre:
            enc[k] = pre.pop(k)
    if "tight_silu" in pre:
        enc["wide_silu"] = pre.pop("tight_silu")
    if "clip_duration" in pre:
        data["clip_duration"] = pre.pop("clip_duration")
    folder, ckpt = pre.pop("folder", None), pre.pop("checkpoint", None)
    write_tag = pre.pop("write_tag", None)
    for k in pre:
        raise ConfigError(f"pretrain.{k}: unknown key for a V-JEPA eval config")
    if "resolution" in opt:
        data["resolution"] = opt.pop("resolution")
    head = {}
    for k in ("lr", "start_lr", "final_lr", "warmup", "weight_decay"):
        if k in opt:
            head[k] = opt.pop(k)
    head.setdefault("final_weight_decay", 1e-6)
    opt["multihead_kwargs"] = [head]
    out = {k: raw.pop(k) for k in list(raw) if k in ("eval_name", "tag", *IGNORED_TOP)}
    for k in raw:
        raise ConfigError(f"{k}: unknown top-level key for a V-JEPA eval config")
    if folder is not None:
        sub = os.path.join(folder, out.get("eval_name") or EVAL_NAMES[0])
        out["folder"] = os.path.join(sub, out["tag"]) if out.get("tag") else sub
    out["experiment"] = {"classifier": {"num_probe_blocks": 1, "layout": "vjepa"}, "data": data, "optimization": opt}
    out["model_kwargs"] = {"checkpoint": os.path.join(folder or "", ckpt) if ckpt else None,
                           "pretrain_kwargs": {"encoder": enc}}
    out["_write_tag"] = write_tag
    return out


def eval_config_from_dict(raw: dict, source: Optional[str] = None) -> EvalConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source or 'eval config'}: expected a YAML mapping at the top level")
    layout = "vjepa2"
    if "pretrain" in raw:
        raw, layout = _from_vjepa(raw), "vjepa"
    raw = dict(raw)
    raw.pop("_write_tag", None)
    ignored: list[str] = []
    top = {"eval_name", "tag", "folder", "experiment", "model_kwargs", "num_workers", *IGNORED_TOP}
    for k in raw:
        if k not in top:
            raise ConfigError(f"{k}: unknown top-level key; an eval config takes {sorted(top)} "
                              "(or the V-JEPA layout: pretrain, data, optimization)")
        if k in IGNORED_TOP:
            ignored.append(k)
    eval_name = _coerce(raw.get("eval_name", EVAL_NAMES[0]), str, "eval_name")
    if eval_name not in EVAL_NAMES:
        raise ConfigError(f"eval_name: {eval_name!r} is not supported here; supported: {list(EVAL_NAMES)}")
    exp = raw.get("experiment") or {}
    if not isinstance(exp, dict):
        raise ConfigError(f"experiment: expected a mapping, got {exp!r}")
    sections = {"classifier": EvalClassifier, "data": EvalData, "optimization": EvalOptimization,
                "features": EvalFeatures, "knn": EvalKNN}
    for k in exp:
        if k not in sections:
            raise ConfigError(f"experiment.{k}: unknown key; experiment takes {sorted(sections)}")
    built = {name: _build(cls, exp.get(name) or {}, f"experiment.{name}", ignored) for name, cls in sections.items()}
    mk = raw.get("model_kwargs") or {}
    if not isinstance(mk, dict):
        raise ConfigError(f"model_kwargs: expected a mapping, got {mk!r}")
    for k in mk:
        if k not in ("checkpoint", "module_name", "pretrain_kwargs", "wrapper_kwargs"):
            raise ConfigError(f"model_kwargs.{k}: unknown key")
    module = mk.get("module_name")
    if module is not None and module not in REFERENCE_MODULES:
        raise ConfigError(f"model_kwargs.module_name: {module!r} is not one of the reference encoder wrappers "
                          f"this evaluation reproduces ({', '.join(REFERENCE_MODULES)})")
    pk = mk.get("pretrain_kwargs") or {}
    for k in pk:
        if k != "encoder":
            raise ConfigError(f"model_kwargs.pretrain_kwargs.{k}: unknown key (frozen classification uses the "
                              "encoder only)")
    encoder = _build(EvalEncoder, pk.get("encoder") or {}, "model_kwargs.pretrain_kwargs.encoder", ignored)
    wrapper = _build(EvalWrapper, mk.get("wrapper_kwargs") or {}, "model_kwargs.wrapper_kwargs", ignored)
    heads_raw = built["optimization"].multihead_kwargs
    if not heads_raw:
        raise ConfigError("experiment.optimization.multihead_kwargs: at least one probe setting is required")
    heads = [_build(HeadConfig, h, f"experiment.optimization.multihead_kwargs.{i}", ignored)
             for i, h in enumerate(heads_raw)]
    data = built["data"]
    if raw.get("num_workers") is not None and data.num_workers is None:
        data.num_workers = _coerce(raw["num_workers"], int, "num_workers")
    if data.num_workers is not None and not (exp.get("features") or {}).get("num_workers"):
        built["features"].num_workers = data.num_workers
    ec = EvalConfig(eval_name=eval_name, tag=_coerce(raw.get("tag"), Optional[str], "tag"),
                    output_folder=_coerce(raw.get("folder"), Optional[str], "folder"),
                    checkpoint=_coerce(mk.get("checkpoint"), Optional[str], "model_kwargs.checkpoint"),
                    layout=layout, heads=heads, encoder=encoder, wrapper=wrapper, ignored_keys=ignored,
                    source=source, **built)
    if ec.classifier.layout is None:
        ec.classifier.layout = layout
    _validate(ec)
    return ec


def _validate(ec: EvalConfig) -> None:
    from engine.eval.attentive import LAYOUTS
    d, o = ec.data, ec.optimization
    if ec.classifier.layout not in LAYOUTS:
        raise ConfigError(f"experiment.classifier.layout: expected one of {LAYOUTS}, got {ec.classifier.layout!r}")
    for key, v in (("experiment.data.num_segments", d.num_segments),
                   ("experiment.data.num_views_per_segment", d.num_views_per_segment),
                   ("experiment.data.frames_per_clip", d.frames_per_clip), ("experiment.data.frame_step", d.frame_step),
                   ("experiment.data.resolution", d.resolution), ("experiment.optimization.batch_size", o.batch_size),
                   ("experiment.optimization.num_epochs", o.num_epochs),
                   ("experiment.classifier.num_probe_blocks", ec.classifier.num_probe_blocks),
                   ("experiment.features.batch_size", ec.features.batch_size),
                   ("experiment.features.train_augmentations", ec.features.train_augmentations),
                   ("experiment.knn.k", ec.knn.k)):
        if v < 1:
            raise ConfigError(f"{key}: must be >= 1, got {v}")
    if ec.knn.temperature <= 0:
        raise ConfigError(f"experiment.knn.temperature: must be > 0, got {ec.knn.temperature}")
    if ec.features.cache not in CACHE_MODES:
        raise ConfigError(f"experiment.features.cache: expected one of {CACHE_MODES}, got {ec.features.cache!r}")
    if o.use_pos_embed or ec.wrapper.use_pos_embed:
        raise ConfigError("use_pos_embed: true is not supported (the reference configs all set false: the probe "
                          "reads the tokens without a temporal position code); set it to false")
    if ec.encoder.img_temporal_dim_size is not None:
        raise ConfigError("model_kwargs.pretrain_kwargs.encoder.img_temporal_dim_size: only null is supported "
                          "(images are repeated over the clip's frames, as wrapper_kwargs.img_as_video_nframes)")
    if d.dataset_type != "VideoDataset" and not ec.is_image:
        raise ConfigError(f"experiment.data.dataset_type: only VideoDataset (CSV of 'path label') is supported, "
                          f"got {d.dataset_type!r}")
    if d.normalization is not None and (len(d.normalization) != 2 or any(len(x) != 3 for x in d.normalization)):
        raise ConfigError(f"experiment.data.normalization: expected [[3 means], [3 stds]], got {d.normalization}")
    for i, h in enumerate(ec.heads):
        if h.lr <= 0 or h.start_lr < 0 or h.final_lr < 0 or h.warmup < 0 or h.weight_decay < 0 \
                or h.final_weight_decay < 0:
            raise ConfigError(f"experiment.optimization.multihead_kwargs.{i}: lr > 0 and non-negative start_lr, "
                              f"final_lr, warmup, weight decays required, got {h}")


def load_eval_config(path=None, overrides=(), raw: Optional[dict] = None) -> EvalConfig:
    """Read an eval YAML (either reference layout), apply `a.b.c=value` overrides, type and check it."""
    return load_typed(eval_config_from_dict, path, overrides, raw)


def image_split_folder(ec: EvalConfig, split: str) -> Path:
    """root_path/image_folder/{train,val}: the reference's ImageNet-style layout."""
    d = ec.data
    if d.root_path is None and d.image_folder is None:
        raise ConfigError("experiment.data.root_path / image_folder: an image folder is required for "
                          "image_classification_frozen")
    return Path(d.root_path or "") / (d.image_folder or "") / split
