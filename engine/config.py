"""Typed run configuration, read from YAML in the reference repos' layout.

    cfg = load_config("configs/tiny_cpu.yaml", overrides=["optimization.lr=1e-3", "mask.0.num_blocks=4"])
    cfg.data.batch_size, cfg.model.model_name, cfg.mask[0].spatial_scale, cfg.ignored_keys

Sections: data, data_aug, mask, model, loss, optimization, meta, logging, planning (ours: the CEM planner
and its tasks), hierarchy (ours: the upper levels of an `app: hjepa` stack) (+ top-level app/folder and
the launcher keys). The V-JEPA (`configs/pretrain/*.yaml`), V-JEPA 2 (`configs/train/*/*.yaml`) and
I-JEPA (`configs/*.yaml`) files load unchanged: I-JEPA's layout (model keys under meta, one mask
dict) is mapped onto the same typed sections. Keys that only the reference launcher uses, or that no
reference trainer reads, are accepted and listed in `cfg.ignored_keys`. Anything else that is unknown,
ill-typed or impossible raises ConfigError naming the key and what was expected.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from engine.core.io import atomic_write_text
from engine.masks import MaskCollator


class ConfigError(ValueError):
    """A config key is unknown, ill-typed or impossible; the message names it."""


# Keys read only by the reference launchers (SLURM sizes, data copying): accepted, reported, unused.
LAUNCHER_KEYS = {
    "": ("nodes", "tasks_per_node", "cpus_per_task", "mem_per_gpu"),
    "meta": ("copy_data", "sync_gc"),
    "data": ("log_resource_utilization",),
}

# Keys the reference YAMLs carry that no reference trainer reads: accepted, reported, unused.
REFERENCE_UNUSED_KEYS = {
    "data": ("decode_one_clip",),
}

# Keys this engine does not implement, or implements only for some apps. Each maps to the values that
# mean what the engine does anyway (the "off" values) and, where the key acts for some apps only, those
# apps; any other value is refused by name. Implementing a key = deleting its line here.
NOT_SUPPORTED: dict[str, tuple[tuple, tuple, str]] = {
    # key: (accepted values, apps where every value acts, what to do instead)
    "data.mask_type": (("multiblock3d",), (), "for a random tube mask give a mask entry a `ratio`"),
    "data.camera_views": ((None, ["left_mp4_path"]), (), "each camera's video is a trajectory of its own in the "
                          "index (python -m engine.datagen robot --views 2 writes them so)"),
    "data.stereo_view": ((False,), (), "trajectories are read from one camera view"),
    "model.use_mask_tokens": ((True,), (), "the reference's predictor without mask tokens is not implemented"),
    "meta.resume_checkpoint": ((None,), (), "resume an action-conditioned run with --resume"),
    "meta.load_predictor": ((False,), (), "the action-conditioned predictor starts from its initialisation"),
    "meta.context_encoder_key": (("encoder", "target_encoder"), (), "the action-conditioned run has one frozen "
                                                                     "encoder, read from meta.target_encoder_key"),
    "model.pred_is_frame_causal": ((False,), ("vjepa_droid", "hjepa"), "only the action-conditioned predictor has it"),
    "model.use_extrinsics": ((False,), ("vjepa_droid", "hjepa"), "only the action-conditioned predictor has it"),
    "model.action_dim": ((7,), ("vjepa_droid", "hjepa", "lewm"), "only the action-conditioned predictors have it"),
    "model.state_dim": ((None,), ("vjepa_droid", "hjepa"), "only the action-conditioned predictor has it"),
    "loss.auto_steps": ((1,), ("vjepa_droid", "hjepa"), "only the action-conditioned rollout has it"),
    "loss.normalize_reps": ((True,), ("vjepa_droid", "hjepa"), "V-JEPA targets are always layer-normed"),
    "model.action_scale": ((1.0,), ("vjepa_droid", "hjepa", "lewm"), "only the action-conditioned predictors have it"),
    "model.pred_residual": ((False,), ("vjepa_droid", "vjepa"), "the video predictors have it (V-JEPA, V-JEPA 2-AC); "
                                                                "H-JEPA: hierarchy.residual"),
}

# Keys an app does not read (its model or data path has no use for them): for that app, a value other
# than the default is refused by name.
HJEPA_ONLY = ("hierarchy.*", "planning.top_samples", "planning.top_topk", "planning.top_iterations",
              "planning.top_horizon", "planning.top_planner", "planning.graph_data", "planning.graph_neighbours",
              "planning.graph_lookahead")
UNREAD_BY_APP = {
    "vjepa": HJEPA_ONLY,
    "ijepa": HJEPA_ONLY + ("data_aug.*", "loss.reg_coeff", "data.num_clips", "data.num_frames", "data.sampling_rate",
                           "data.fps", "data.clip_duration", "data.dataset_fpcs", "data.datasets_weights",
                           "data.filter_short_videos"),
    "vjepa_droid": HJEPA_ONLY + ("loss.reg_coeff", "loss.std_coeff", "loss.cov_coeff", "loss.sigreg_coeff"),
    "hjepa": ("loss.reg_coeff", "loss.std_coeff", "loss.cov_coeff", "loss.sigreg_coeff", "data.camera_frame"),
    # LeWorldModel: one embedding per frame (no masks), the MSE of the next one plus SIGReg
    "lewm": HJEPA_ONLY + ("loss.reg_coeff", "loss.std_coeff", "loss.cov_coeff", "loss.loss_exp", "loss.auto_steps",
                          "loss.normalize_reps", "model.state_dim", "model.use_rope", "model.use_silu",
                          "model.use_pred_silu", "meta.pretrain_checkpoint"),
}
for _app in ("vjepa", "ijepa", "lewm"):   # only the frozen-encoder world models read a latent cache
    UNREAD_BY_APP[_app] += ("data.latent_cache",)
for _app in ("vjepa", "ijepa"):   # no actions or states to put in a camera's frame
    UNREAD_BY_APP[_app] += ("data.camera_frame",)

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class DataConfig:
    dataset_type: str = "videodataset"
    datasets: list[str] = field(default_factory=list)
    datasets_weights: Optional[list[float]] = None
    dataset_fpcs: Optional[list[int]] = None          # V-JEPA 2: frames per clip for each dataset
    batch_size: int = 24
    num_clips: int = 1                                # clips per video, along the batch (masks repeat per clip)
    num_frames: int = 16
    tubelet_size: int = 2
    sampling_rate: int = 4                            # frame step between sampled frames
    fps: Optional[float] = None                       # V-JEPA 2: sample at this frame rate instead
    clip_duration: Optional[float] = None
    crop_size: int = 224
    patch_size: int = 16
    pin_mem: bool = False
    num_workers: int = 1
    persistent_workers: bool = True                   # DataLoader workers kept between epochs
    filter_short_videos: bool = False                 # skip (and count) videos shorter than one clip
    mask_type: str = "multiblock3d"                  # the reference's name for its block masks
    # V-JEPA 2-AC (robot trajectories)
    camera_views: Optional[list[str]] = None
    stereo_view: bool = False
    camera_frame: bool = False                       # actions and states in each video's camera frame (the
                                                     # reference DROID loader's camera_frame; arm source arrays)
    # I-JEPA (image folders)
    root_path: Optional[str] = None
    image_folder: Optional[str] = None
    crop_scale: list[float] = field(default_factory=lambda: [0.3, 1.0])
    color_jitter_strength: float = 0.0                # s: jitter 0.8 s (brightness/contrast/saturation), 0.2 s hue
    use_color_distortion: bool = False                # p=0.8 colour jitter, then p=0.2 grayscale
    use_gaussian_blur: bool = False                   # p=0.5, radius U(0.1, 2)
    use_horizontal_flip: bool = False
    # ours
    reader: str = "auto"                              # auto | pyav | dali
    dali_threads: int = 2                             # DALI CPU threads per rank
    val_datasets: list[str] = field(default_factory=list)   # labelled index files for the probe
    latent_cache: Optional[str] = None                # vjepa_droid, hjepa: train on a frozen encoder's latents


@dataclass
class DataAugConfig:
    auto_augment: bool = False                        # RandAugment rand-m7-n4-mstd0.5-inc1, one draw per clip
    motion_shift: bool = False                        # crop box moves linearly from a first to a last box
    random_resize_aspect_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    random_resize_scale: list[float] = field(default_factory=lambda: [0.3, 1.0])
    reprob: float = 0.0                               # random erasing: one box through the clip, N(0,1) noise
    horizontal_flip: bool = True


@dataclass
class VideoMaskConfig:
    """One entry of the V-JEPA `mask` list: multiblock-3D blocks, or with `ratio` a random tube mask."""
    aspect_ratio: list[float] = field(default_factory=lambda: [0.75, 1.5])
    num_blocks: int = 8
    spatial_scale: list[float] = field(default_factory=lambda: [0.15, 0.15])
    temporal_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    max_temporal_keep: float = 1.0
    max_keep: Optional[int] = None
    full_complement: bool = False
    pred_full_complement: bool = False
    inv_block: bool = False
    ratio: Optional[float] = None                     # a TubeMask masking this fraction of positions


TUBE_KEYS = ("ratio",)   # the only keys of a tube entry; every other VideoMaskConfig key is a block key


@dataclass
class ImageMaskConfig:
    """I-JEPA multiblock-2D masks (the `mask` dict)."""
    allow_overlap: bool = False
    aspect_ratio: list[float] = field(default_factory=lambda: [0.75, 1.5])
    enc_mask_scale: list[float] = field(default_factory=lambda: [0.85, 1.0])
    min_keep: int = 10
    num_enc_masks: int = 1
    num_pred_masks: int = 4
    patch_size: Optional[int] = None                  # I-JEPA keeps the patch size here
    pred_mask_scale: list[float] = field(default_factory=lambda: [0.15, 0.2])


@dataclass
class ModelConfig:
    model_name: str = "vit_large"
    pred_depth: int = 12
    pred_embed_dim: int = 384
    pred_num_heads: Optional[int] = None
    uniform_power: bool = False
    use_mask_tokens: bool = True
    zero_init_mask_tokens: bool = True
    use_rope: bool = False
    rope_reference_layout: bool = True   # ours: the released V-JEPA 2 RoPE frequency layout (see models/rope.py)
    use_silu: bool = False
    use_pred_silu: bool = False
    wide_silu: bool = True
    use_activation_checkpointing: bool = False
    compile_model: bool = False          # ours: torch.compile every block (dynamic shapes, engine.models.layers); ZeRO 0-2 only
    # V-JEPA 2-AC
    pred_is_frame_causal: bool = False
    use_extrinsics: bool = False
    action_dim: int = 7                  # ours: the action vector's length (the reference fixes 7; 0, app vjepa_droid: no actions)
    state_dim: Optional[int] = None      # ours: the state vector's length (None: action_dim, as the reference)
    action_scale: float = 1.0            # ours: actions are multiplied by this before the AC predictor (1: reference)
    pred_residual: bool = False          # ours: the predictor predicts each token's change (earlier feature + out; false: reference)
    # ours: override the preset's encoder size (small CPU runs)
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    embed_dim: Optional[int] = None


@dataclass
class LossConfig:
    loss_exp: float = 1.0
    reg_coeff: float = 0.0
    # Not in the reference (0 = off, the reference objective): VICReg-style terms on the context encoder's
    # output tokens, which keep small models from collapsing (see engine.jepa.JEPA.spread_terms)
    std_coeff: float = 0.0
    cov_coeff: float = 0.0
    auto_steps: int = 1
    normalize_reps: bool = True
    # Not in the reference (0 = off): LeJEPA's SIGReg on the context encoder's output tokens (engine.sigreg)
    sigreg_coeff: float = 0.0
    sigreg_projections: int = 256     # random 1-D directions per step
    sigreg_knots: int = 17            # points of the Epps-Pulley integral on [0, sigreg_t_max]
    sigreg_t_max: float = 3.0


@dataclass
class OptimizationConfig:
    ipe: Optional[int] = None                         # iterations per epoch (None: the data set's length)
    ipe_scale: float = 1.0
    clip_grad: Optional[float] = None
    weight_decay: float = 0.04
    final_weight_decay: float = 0.4
    epochs: int = 300
    warmup: float = 40                                # epochs of linear warm-up
    start_lr: float = 2e-4
    lr: float = 6.25e-4
    final_lr: float = 1e-6
    ema: list[float] = field(default_factory=lambda: [0.998, 1.0])
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    is_anneal: bool = False                           # V-JEPA 2 cool-down: start from anneal_ckpt at step 0
    anneal_ckpt: Optional[str] = None
    resume_anneal: bool = False                       # continue a cool-down from the run's own checkpoint
    anneal: Optional[float] = None                    # V-JEPA 2-AC: epochs of linear lr decay at the end (WSD)


@dataclass
class MetaConfig:
    seed: int = 0
    dtype: str = "float32"
    use_sdpa: bool = True
    load_checkpoint: bool = False                     # start from read_checkpoint, else resume the run's own
    read_checkpoint: Optional[str] = None             # one of our checkpoints or a reference latest.pt
    save_every_freq: int = -1                         # epochs between kept checkpoints (reference)
    skip_batches: int = -1                            # batches of the data stream skipped at start
    # V-JEPA 2-AC
    resume_checkpoint: Optional[str] = None
    pretrain_checkpoint: Optional[str] = None
    load_predictor: bool = False
    context_encoder_key: str = "encoder"
    target_encoder_key: str = "target_encoder"
    # ours
    mask_mode: str = "ragged"                         # ragged (train every kept token) | compat
    checkpoint_every: int = 0                         # optimizer steps between checkpoints; 0: epoch ends
    eval_freq: int = 0                                # steps between probes on data.val_datasets (0: off)
    eval_samples: int = 256                           # the fixed validation clips that probe reads
    log_every: int = 10                               # steps between log lines (without a progress bar)
    max_nonfinite_in_a_row: int = 3                   # skip non-finite steps; stop at this many in a row


@dataclass
class LoggingConfig:
    folder: Optional[str] = None
    write_tag: str = "jepa"
    tensorboard: bool = True
    wandb: bool = False                               # also log to Weights & Biases (pip install wandb)
    wandb_project: str = "jepa-engine"                # the W&B project of the run (its name: the output folder)


# The planner's energies (engine.planning.cem.ENERGIES implements each) and the rollout steps they score
PLANNING_ENERGIES = ("l1", "l2", "cosine", "pooled_l1")
PLANNING_TASKS = ("reach", "push")
PLANNING_ENERGY_STEPS = ("last", "sum")
# The H-JEPA planner's top level (engine.planning.hierarchical: cem; engine.planning.latent_graph: graph)
TOP_PLANNERS = ("cem", "graph")
GRAPH_KEYS = ("graph_data", "graph_neighbours", "graph_lookahead")


@dataclass
class PlanningConfig:
    """ours: the CEM planner (engine.planning) and the reach task it is scored on (engine.plan). The CEM
    keys are the reference planning utilities' (rollout = horizon, cem_steps = iterations)."""
    samples: int = 100                # action sequences drawn per CEM iteration
    topk: int = 10                    # the best of them refit the sampling distribution
    iterations: int = 10
    horizon: int = 1                  # actions per sequence (predictor steps per rollout)
    momentum_mean: float = 0.15       # new = (1 - m) * top-k statistic + m * old
    momentum_std: float = 0.15
    maxnorm: float = 0.05             # actions are clipped to [-maxnorm, maxnorm] per axis
    task: str = "reach"               # ours: the arm task engine.plan scores: reach (the end effector to a goal
                                      # pose) or push (the cube to a goal spot: engine/planning/push.py)
    subgoals: int = 1                 # ours: the arm tasks give subgoals - 1 images of the oracle's way there too
                                      # (evenly spaced in time); CEM aims at each for max_steps // subgoals
                                      # actions, then at the goal (V-JEPA 2-AC's subgoal images)
    max_steps: int = 30               # the task's step budget per episode
    tolerance: float = 0.05           # success: end effector (push: the cube) within this distance (m) of the goal
    goal_seed: int = 1000             # episodes' scenes and goals come from (goal_seed, episode)
    # ours: the energy CEM minimises between predicted and goal latents, and which predicted steps it scores
    energy: str = "l1"                # l1 (the reference's), l2, cosine, pooled_l1 (PLANNING_ENERGIES)
    energy_steps: str = "last"        # horizon > 1: the last step's energy (the reference's) or the sum over steps
    views: int = 1                    # ours: cameras the reach task films with (90 degrees of yaw apart); CEM
                                      # minimises the mean of the views' energies (engine.planning.ensemble)
    # H-JEPA (engine.planning.hierarchical): the top level's CEM, at its own time step
    top_samples: int = 64
    top_topk: int = 8
    top_iterations: int = 4
    top_horizon: int = 4              # summed displacements (steps of level 2) per planned sequence
    top_planner: str = "cem"          # cem: the keys above | graph: a shortest path over a graph of the
                                      # exploration data's level-2 latents (engine.planning.latent_graph)
    graph_data: Optional[str] = None  # graph: the exploration episodes' index CSV (engine.datagen maze)
    graph_neighbours: int = 4         # graph: links from each node to its nearest nodes of other episodes
    graph_lookahead: int = 1          # graph: the subgoal is this many level-2 steps along the path


@dataclass
class HierarchyConfig:
    """ours: H-JEPA (engine.hjepa). Level 1 is the action-conditioned model over frames (the model/loss
    sections); each level above encodes windows of the latents of the level below (temporal mean pooling,
    then a small transformer over the pooled tokens) and predicts them at its own, coarser time step from
    the summed actions of the steps it spans."""
    levels: int = 2                   # levels in the stack, the frame level included
    window: int = 4                   # steps of level k that one step of level k+1 pools
    stride: int = 4                   # steps of level k between two steps of level k+1 (its time step)
    embed_dim: int = 128              # width of every upper level's latents and encoder
    depth: int = 2                    # transformer blocks of each upper encoder
    num_heads: int = 4
    pred_depth: int = 2               # each upper level's action-conditioned predictor
    pred_embed_dim: int = 96
    pred_num_heads: int = 4
    train: str = "joint"              # joint: every level at once | level_by_level: hierarchy.level only
    level: int = 2                    # level_by_level: the level this run trains (the others stay frozen)
    init_checkpoint: Optional[str] = None   # level_by_level: an hjepa run (or file) holding the levels below
    use_states: bool = True           # false: the predictors see zero states (the latents alone carry the state)
    freeze_encoders: bool = False     # true: the upper levels' window encoders keep their random init (their
                                      # EMA targets equal them), as the frozen frame encoder: they cannot collapse
    residual: bool = False            # true: every level's predictor predicts the change of each token from
                                      # the step it reads (a copy costs nothing; the moved ball is what is left)
    auto_steps: Optional[int] = None  # rollout steps of the upper levels' loss (null: loss.auto_steps); a planner
                                      # that rolls level 2 out over top_horizon steps wants it trained that far


@dataclass
class Config:
    app: str = "vjepa"                                # vjepa | ijepa | vjepa_droid | hjepa | lewm
    folder: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    data_aug: DataAugConfig = field(default_factory=DataAugConfig)
    mask: Any = field(default_factory=lambda: [VideoMaskConfig()])   # list[VideoMaskConfig] | ImageMaskConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    planning: PlanningConfig = field(default_factory=PlanningConfig)
    hierarchy: HierarchyConfig = field(default_factory=HierarchyConfig)
    ignored_keys: list[str] = field(default_factory=list)
    source: Optional[str] = None

    # -- derived quantities every part needs ---------------------------------------------------
    @property
    def is_image(self) -> bool:
        return self.app == "ijepa"

    @property
    def is_action_conditioned(self) -> bool:
        """The frame level is V-JEPA 2-AC's (a frozen encoder, an action-conditioned predictor)."""
        return self.app in ("vjepa_droid", "hjepa")

    @property
    def is_hierarchical(self) -> bool:
        return self.app == "hjepa"

    @property
    def is_lewm(self) -> bool:
        """LeWorldModel: encoder and action-conditioned predictor trained together from pixels."""
        return self.app == "lewm"

    @property
    def is_unconditioned(self) -> bool:
        """The frame level's predictor takes no actions or states (model.action_dim 0): it learns the
        videos' own dynamics from plain clips."""
        return self.is_action_conditioned and self.model.action_dim == 0

    @property
    def uses_trajectories(self) -> bool:
        """Clips come with their actions and states (engine.data.trajectories)."""
        return (self.is_action_conditioned and not self.is_unconditioned) or self.is_lewm

    @property
    def uses_masks(self) -> bool:
        """Batches carry mask sets (the V-JEPA / I-JEPA step); the world models predict whole frames."""
        return not (self.is_action_conditioned or self.is_lewm)

    @property
    def frames_per_clip(self) -> int:
        if self.is_image:
            return 1
        if self.data.dataset_fpcs:
            return max(self.data.dataset_fpcs)
        return self.data.num_frames

    @property
    def patch_size(self) -> int:
        if self.is_image and self.mask.patch_size is not None:
            return self.mask.patch_size
        return self.data.patch_size

    @property
    def token_grid(self) -> tuple[int, ...]:
        """Tokens per axis: (T', H', W') for video, (H', W') for images."""
        hw = self.data.crop_size // self.patch_size
        if self.is_image:
            return (hw, hw)
        return (self.frames_per_clip // self.data.tubelet_size, hw, hw)

    @property
    def dtype(self):
        import torch
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.meta.dtype]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("ignored_keys")
        d.pop("source")
        return d


SECTIONS = {
    "data": DataConfig, "data_aug": DataAugConfig, "model": ModelConfig, "loss": LossConfig,
    "optimization": OptimizationConfig, "meta": MetaConfig, "logging": LoggingConfig, "planning": PlanningConfig,
    "hierarchy": HierarchyConfig,
}


# -- typed construction ------------------------------------------------------------------------

def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key: str):
    """Check `value` against the annotation `tp`; ints are accepted for floats. Errors name `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {_type_name(args[0])}, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads 1e-3 without a dot as a string: accept numeric strings.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls, raw: dict, prefix: str, ignored: list[str], launcher_keys=()):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else k
        if k in launcher_keys:
            ignored.append(key)
            continue
        if k not in fields:
            raise ConfigError(f"{key}: unknown key; {cls.__name__} accepts {sorted(fields)}")
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


def _ijepa_to_common(raw: dict) -> dict:
    """I-JEPA keeps model keys under meta and names a few things differently: map them."""
    raw = copy.deepcopy(raw)
    meta = raw["meta"] = raw.get("meta") or {}
    model = raw["model"] = raw.get("model") or {}
    for src, dst in (("model_name", "model_name"), ("pred_depth", "pred_depth"), ("pred_emb_dim", "pred_embed_dim")):
        if src in meta:
            model[dst] = meta.pop(src)
    if "use_bfloat16" in meta:
        meta["dtype"] = "bfloat16" if meta.pop("use_bfloat16") else "float32"
    raw["app"] = "ijepa"
    return raw


def config_from_dict(raw: dict, source: Optional[str] = None) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source or 'config'}: expected a YAML mapping at the top level")
    ignored: list[str] = []
    if "eval_name" in raw:
        raise ConfigError(f"eval_name: {raw['eval_name']!r} is an evaluation config (the reference's evals); "
                          "engine.train takes pretraining configs (evaluate with engine.eval)")
    if isinstance(raw.get("mask"), dict) or raw.get("app") == "ijepa":
        raw = _ijepa_to_common(raw)
    top_fields = {"app", "folder", "mask", *SECTIONS}
    kwargs: dict = {}
    for k, v in raw.items():
        if k in LAUNCHER_KEYS[""]:
            ignored.append(k)
        elif k not in top_fields:
            raise ConfigError(f"{k}: unknown top-level key; expected one of {sorted(top_fields)}")
    # `optimization.ema: none`: the target is the encoder itself (momentum 0: after each step the target
    # equals the encoder), which LeJEPA makes safe with SIGReg (checked below).
    opt_raw = raw.get("optimization") or {}
    ema_none = isinstance(opt_raw, dict) and isinstance(opt_raw.get("ema"), str) and opt_raw["ema"].lower() == "none"
    if ema_none:
        raw = dict(raw, optimization=dict(opt_raw, ema=[0.0, 0.0]))
    kwargs["app"] = _coerce(raw.get("app", "vjepa"), str, "app")
    kwargs["folder"] = _coerce(raw.get("folder"), Optional[str], "folder")
    for name, cls in SECTIONS.items():
        unused = LAUNCHER_KEYS.get(name, ()) + REFERENCE_UNUSED_KEYS.get(name, ())
        kwargs[name] = _build(cls, raw.get(name) or {}, name, ignored, unused)
    mask = raw.get("mask")
    if kwargs["app"] == "ijepa":
        kwargs["mask"] = _build(ImageMaskConfig, mask or {}, "mask", ignored)
    elif mask is None:
        kwargs["mask"] = [VideoMaskConfig()]
    elif isinstance(mask, list):
        kwargs["mask"] = [_build(VideoMaskConfig, m, f"mask.{i}", ignored) for i, m in enumerate(mask)]
        for i, m in enumerate(mask):
            block_keys = sorted(set(m) - set(TUBE_KEYS)) if isinstance(m, dict) and m.get("ratio") is not None else []
            if block_keys:
                raise ConfigError(f"mask.{i}.{block_keys[0]}: a tube mask entry (with ratio) takes no block keys; "
                                  f"remove {block_keys} or the ratio")
    else:
        raise ConfigError(f"mask: expected a list of mask configs (video) or a mapping (I-JEPA), got {mask!r}")
    cfg = Config(**kwargs, ignored_keys=ignored, source=source)
    if cfg.meta.eval_freq and not cfg.data.val_datasets:
        cfg.ignored_keys.append("meta.eval_freq")   # the reference YAMLs set it with no labelled set to read
    validate(cfg)
    if ema_none and cfg.loss.sigreg_coeff <= 0:
        raise ConfigError("optimization.ema: none (targets from the encoder itself, no EMA) needs "
                          "loss.sigreg_coeff > 0: without a moving target nothing else keeps the features from collapsing")
    return cfg


# -- validation of values ----------------------------------------------------------------------

def _range(key, pair, lo, hi, lo_open=True):
    if len(pair) != 2 or pair[0] > pair[1]:
        raise ConfigError(f"{key}: expected [min, max] with min <= max, got {pair}")
    for v in pair:
        if (v <= lo if lo_open else v < lo) or v > hi:
            raise ConfigError(f"{key}: values must lie in {'(' if lo_open else '['}{lo}, {hi}], got {pair}")


def _refuse_unsupported(cfg: Config) -> None:
    for key, (accepted, apps, instead) in NOT_SUPPORTED.items():
        section, name = key.split(".")
        if not hasattr(getattr(cfg, section), name):   # a section of the other layout (I-JEPA / video)
            continue
        value = getattr(getattr(cfg, section), name)
        if value in accepted or cfg.app in apps:
            continue
        where = f" with app {cfg.app}" if apps else ""
        raise ConfigError(f"{key}: {value!r} is not supported{where} ({instead}); accepted: "
                          f"{' or '.join(repr(v) for v in accepted)}")


def _refuse_unread(cfg: Config) -> None:
    for pattern in UNREAD_BY_APP.get(cfg.app, ()):
        section, name = pattern.split(".")
        obj = getattr(cfg, section)
        names = [f.name for f in dataclasses.fields(obj)] if name == "*" else [name]
        default = type(obj)()
        for n in names:
            if getattr(obj, n) != getattr(default, n):
                raise ConfigError(f"{section}.{n}: {getattr(obj, n)!r} is not supported with app {cfg.app} (it does "
                                  f"not read this key); remove it")


def validate(cfg: Config) -> None:
    _refuse_unsupported(cfg)
    _refuse_unread(cfg)
    d, o, m = cfg.data, cfg.optimization, cfg.meta
    if cfg.app not in ("vjepa", "ijepa", "vjepa_droid", "hjepa", "lewm"):
        raise ConfigError(f"app: expected vjepa, ijepa, vjepa_droid, hjepa or lewm, got {cfg.app!r}")
    if m.dtype not in DTYPES:
        raise ConfigError(f"meta.dtype: expected one of {DTYPES}, got {m.dtype!r}")
    if m.eval_freq < 0 or m.eval_samples < 4:
        raise ConfigError(f"meta.eval_freq / eval_samples: need eval_freq >= 0 (0: off) and eval_samples >= 4, "
                          f"got {m.eval_freq} / {m.eval_samples}")
    if m.mask_mode not in ("ragged", "compat"):
        raise ConfigError(f"meta.mask_mode: expected ragged or compat, got {m.mask_mode!r}")
    if d.reader not in ("auto", "pyav", "dali"):
        raise ConfigError(f"data.reader: expected auto, pyav or dali, got {d.reader!r}")
    if not cfg.is_image and d.dataset_type.lower() not in ("videodataset", "webdataset"):
        raise ConfigError(f"data.dataset_type: expected VideoDataset (index CSVs) or webdataset (tar shards), "
                          f"got {d.dataset_type!r}")
    if d.dali_threads < 1:
        raise ConfigError(f"data.dali_threads: must be >= 1, got {d.dali_threads}")
    for key, v in (("data.batch_size", d.batch_size), ("data.crop_size", d.crop_size),
                   ("data.tubelet_size", d.tubelet_size), ("data.num_clips", d.num_clips),
                   ("data.sampling_rate", d.sampling_rate), ("optimization.epochs", o.epochs),
                   ("meta.max_nonfinite_in_a_row", m.max_nonfinite_in_a_row)):
        if v < 1:
            raise ConfigError(f"{key}: must be >= 1, got {v}")
    patch_key = "mask.patch_size" if cfg.is_image and cfg.mask.patch_size is not None else "data.patch_size"
    if cfg.patch_size < 1 or d.crop_size % cfg.patch_size:
        raise ConfigError(f"{patch_key}: {cfg.patch_size} must be >= 1 and divide data.crop_size ({d.crop_size})")
    if not cfg.is_image:
        fpc_key = "data.dataset_fpcs" if d.dataset_fpcs else "data.num_frames"
        if cfg.frames_per_clip < 1 or cfg.frames_per_clip % d.tubelet_size:
            raise ConfigError(f"{fpc_key}: frames per clip ({cfg.frames_per_clip}) must be a positive multiple "
                              f"of data.tubelet_size ({d.tubelet_size})")
    if d.num_workers < 0:
        raise ConfigError(f"data.num_workers: must be >= 0, got {d.num_workers}")
    if d.datasets_weights is not None and len(d.datasets_weights) != len(d.datasets):
        raise ConfigError(f"data.datasets_weights: {len(d.datasets_weights)} weights for {len(d.datasets)} datasets")
    if d.dataset_fpcs is not None and d.datasets and len(d.dataset_fpcs) != len(d.datasets):
        raise ConfigError(f"data.dataset_fpcs: {len(d.dataset_fpcs)} values for {len(d.datasets)} datasets")
    if d.color_jitter_strength < 0:
        raise ConfigError(f"data.color_jitter_strength: must be >= 0, got {d.color_jitter_strength}")
    if not 0.0 <= cfg.data_aug.reprob <= 1.0:
        raise ConfigError(f"data_aug.reprob: expected a probability in [0, 1], got {cfg.data_aug.reprob}")
    _range("data_aug.random_resize_scale", cfg.data_aug.random_resize_scale, 0.0, float("inf"))
    _range("data_aug.random_resize_aspect_ratio", cfg.data_aug.random_resize_aspect_ratio, 0.0, float("inf"))
    if d.latent_cache:
        problem = latent_cache_problem(cfg)
        if problem:
            raise ConfigError(problem)
    if len(o.ema) != 2 or not all(0.0 <= v <= 1.0 for v in o.ema):
        raise ConfigError(f"optimization.ema: expected [start, end] momenta in [0, 1], got {o.ema}")
    if len(o.betas) != 2 or not all(0.0 <= v < 1.0 for v in o.betas):
        raise ConfigError(f"optimization.betas: expected two values in [0, 1), got {o.betas}")
    for key, v in (("optimization.lr", o.lr), ("optimization.start_lr", o.start_lr),
                   ("optimization.final_lr", o.final_lr), ("optimization.weight_decay", o.weight_decay),
                   ("optimization.final_weight_decay", o.final_weight_decay), ("optimization.warmup", o.warmup)):
        if v < 0:
            raise ConfigError(f"{key}: must be >= 0, got {v}")
    if o.ipe is not None and o.ipe < 1:
        raise ConfigError(f"optimization.ipe: must be >= 1, got {o.ipe}")
    if o.ipe_scale <= 0:
        raise ConfigError(f"optimization.ipe_scale: must be > 0, got {o.ipe_scale}")
    if o.clip_grad is not None and o.clip_grad <= 0:
        raise ConfigError(f"optimization.clip_grad: must be > 0 or null, got {o.clip_grad}")
    if o.is_anneal and o.anneal_ckpt is None:
        raise ConfigError("optimization.anneal_ckpt: required when optimization.is_anneal is true")
    if cfg.loss.loss_exp <= 0:
        raise ConfigError(f"loss.loss_exp: must be > 0, got {cfg.loss.loss_exp}")
    if cfg.loss.sigreg_projections < 1 or cfg.loss.sigreg_knots < 2 or cfg.loss.sigreg_t_max <= 0:
        raise ConfigError(f"loss.sigreg_projections / sigreg_knots / sigreg_t_max: need >= 1 / >= 2 / > 0, got "
                          f"{cfg.loss.sigreg_projections} / {cfg.loss.sigreg_knots} / {cfg.loss.sigreg_t_max}")
    for key in ("reg_coeff", "std_coeff", "cov_coeff", "sigreg_coeff"):
        if getattr(cfg.loss, key) < 0:
            raise ConfigError(f"loss.{key}: must be >= 0, got {getattr(cfg.loss, key)}")
    _validate_masks(cfg)
    _validate_model(cfg)
    if cfg.is_hierarchical:
        _validate_hierarchy(cfg)


def latent_cache_problem(cfg: Config) -> Optional[str]:
    """Why cfg's training clips cannot come from a latent cache (engine.data.latents), or None: a frame's
    latents must depend on the video, the frame and the flip alone."""
    d, aug = cfg.data, cfg.data_aug
    what = "data.latent_cache: a latent cache needs"
    if not cfg.is_action_conditioned:
        return f"{what} a frozen-encoder world model (app vjepa_droid or hjepa), got app {cfg.app}"
    for key, v in (("random_resize_scale", aug.random_resize_scale),
                   ("random_resize_aspect_ratio", aug.random_resize_aspect_ratio)):
        if list(v) != [1.0, 1.0]:
            return f"{what} a fixed crop: data_aug.{key} is {list(v)}, set it to [1.0, 1.0]"
    for key, on in (("auto_augment", aug.auto_augment), ("motion_shift", aug.motion_shift),
                    ("reprob", aug.reprob > 0)):
        if on:
            return f"{what} frames that depend on nothing drawn but the flip: turn data_aug.{key} off"
    if d.num_clips != 1:
        return f"{what} one clip per video: data.num_clips is {d.num_clips}"
    if d.dataset_type.lower() != "videodataset":
        return f"{what} index CSVs (data.dataset_type VideoDataset), got {d.dataset_type!r}"
    return None


def _validate_masks(cfg: Config) -> None:
    """The mask generators check their own options (one validation, engine.masks.common): build them once."""
    if not cfg.is_image and not cfg.mask:
        raise ConfigError("mask: at least one mask config is needed")
    try:
        MaskCollator.from_config(cfg.mask, cfg.token_grid, mode=cfg.meta.mask_mode)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _validate_model(cfg: Config) -> None:
    md = cfg.model
    try:
        from engine.models.vit import VIT_SIZES
    except ImportError:  # models not importable (e.g. a config-only install): skip the name check
        VIT_SIZES = None
    if VIT_SIZES is not None and md.model_name not in VIT_SIZES:
        raise ConfigError(f"model.model_name: unknown {md.model_name!r}; expected one of {sorted(VIT_SIZES)}")
    for key, v in (("model.pred_depth", md.pred_depth), ("model.pred_embed_dim", md.pred_embed_dim)):
        if v < 1:
            raise ConfigError(f"{key}: must be >= 1, got {v}")
    for key, v in (("model.depth", md.depth), ("model.num_heads", md.num_heads), ("model.embed_dim", md.embed_dim),
                   ("model.pred_num_heads", md.pred_num_heads)):
        if v is not None and v < 1:
            raise ConfigError(f"{key}: must be >= 1, got {v}")
    if md.embed_dim is not None and md.num_heads is not None and md.embed_dim % md.num_heads:
        raise ConfigError(f"model.embed_dim: {md.embed_dim} is not divisible by model.num_heads ({md.num_heads})")
    if md.action_scale <= 0:
        raise ConfigError(f"model.action_scale: must be > 0, got {md.action_scale}")
    if md.action_dim == 0:
        _validate_unconditioned(cfg)
    elif md.action_dim < 2 or (md.state_dim is not None and md.state_dim < 1):
        raise ConfigError(f"model.action_dim / model.state_dim: must be >= 2 (or 0: no actions, app vjepa_droid) / "
                          f">= 1, got {md.action_dim} / {md.state_dim}")
    if cfg.loss.auto_steps < 1:
        raise ConfigError(f"loss.auto_steps: must be >= 1, got {cfg.loss.auto_steps}")
    if (cfg.is_action_conditioned or cfg.is_lewm) and cfg.frames_per_clip < 2:
        raise ConfigError(f"data.dataset_fpcs: a world-model run needs clips of >= 2 frames, got "
                          f"{cfg.frames_per_clip}")
    if cfg.is_lewm:
        _validate_lewm(cfg)
    pl = cfg.planning
    for key in ("samples", "topk", "iterations", "horizon", "max_steps", "views"):
        if getattr(pl, key) < 1:
            raise ConfigError(f"planning.{key}: must be >= 1, got {getattr(pl, key)}")
    for key in ("top_samples", "top_topk", "top_iterations", "top_horizon"):
        if getattr(pl, key) < 1:
            raise ConfigError(f"planning.{key}: must be >= 1, got {getattr(pl, key)}")
    for top in ("", "top_"):
        if getattr(pl, top + "topk") > getattr(pl, top + "samples"):
            raise ConfigError(f"planning.{top}topk: {getattr(pl, top + 'topk')} is more than planning.{top}samples "
                              f"({getattr(pl, top + 'samples')})")
    for key in ("momentum_mean", "momentum_std"):
        if not 0.0 <= getattr(pl, key) < 1.0:
            raise ConfigError(f"planning.{key}: must lie in [0, 1), got {getattr(pl, key)}")
    if pl.energy not in PLANNING_ENERGIES:
        raise ConfigError(f"planning.energy: unknown {pl.energy!r}; expected one of {list(PLANNING_ENERGIES)}")
    if pl.energy_steps not in PLANNING_ENERGY_STEPS:
        raise ConfigError(f"planning.energy_steps: unknown {pl.energy_steps!r}; expected one of "
                          f"{list(PLANNING_ENERGY_STEPS)}")
    if cfg.is_hierarchical and pl.energy_steps != "last":
        raise ConfigError(f"planning.energy_steps: {pl.energy_steps!r} is for the flat planner; the hierarchical one "
                          f"scores the level-2 window its actions end in, the last step only")
    if pl.task not in PLANNING_TASKS:
        raise ConfigError(f"planning.task: unknown {pl.task!r}; expected one of {list(PLANNING_TASKS)}")
    if not 1 <= pl.subgoals <= pl.max_steps:
        raise ConfigError(f"planning.subgoals: must lie in 1..planning.max_steps ({pl.max_steps}), got {pl.subgoals}")
    if cfg.is_hierarchical and pl.subgoals != 1:
        raise ConfigError(f"planning.subgoals: {pl.subgoals}, but the maze's planner makes its own subgoals (the top "
                          f"level's); subgoal images are for the arm tasks")
    if cfg.is_hierarchical and pl.task != "reach":
        raise ConfigError(f"planning.task: {pl.task!r} is an arm task; the hierarchical planner is scored on the "
                          f"maze")
    if cfg.is_hierarchical and pl.views != 1:
        raise ConfigError(f"planning.views: {pl.views}, but the maze task has one camera (from above); views is for "
                          f"the arm reach task")
    _validate_top_planner(pl)
    if pl.maxnorm <= 0 or pl.tolerance <= 0:
        raise ConfigError(f"planning.maxnorm / planning.tolerance: must be > 0, got {pl.maxnorm} / {pl.tolerance}")
    if md.pred_num_heads is not None and md.pred_embed_dim % md.pred_num_heads:
        raise ConfigError(f"model.pred_embed_dim: {md.pred_embed_dim} is not divisible by "
                          f"model.pred_num_heads ({md.pred_num_heads})")


def _validate_top_planner(pl: PlanningConfig) -> None:
    if pl.top_planner not in TOP_PLANNERS:
        raise ConfigError(f"planning.top_planner: unknown {pl.top_planner!r}; expected one of {list(TOP_PLANNERS)}")
    if pl.top_planner != "graph":
        for key in GRAPH_KEYS:
            if getattr(pl, key) != getattr(PlanningConfig, key):
                raise ConfigError(f"planning.{key}: only the graph top level reads it; planning.top_planner is "
                                  f"{pl.top_planner!r}")
        return
    if not pl.graph_data:
        raise ConfigError("planning.graph_data: planning.top_planner graph needs the exploration episodes' index CSV")
    if pl.graph_neighbours < 0 or pl.graph_lookahead < 1:
        raise ConfigError(f"planning.graph_neighbours / planning.graph_lookahead: must be >= 0 / >= 1, got "
                          f"{pl.graph_neighbours} / {pl.graph_lookahead}")


def _validate_unconditioned(cfg: Config) -> None:
    """model.action_dim 0: the frame-causal predictor sees latents only, so every action setting is refused."""
    md = cfg.model
    if cfg.app != "vjepa_droid":
        raise ConfigError(f"model.action_dim: 0 (no actions) is for app vjepa_droid; app {cfg.app} needs actions")
    for key, value, off in (("model.state_dim", md.state_dim, None), ("model.use_extrinsics", md.use_extrinsics, False),
                            ("model.action_scale", md.action_scale, 1.0), ("data.camera_frame", cfg.data.camera_frame,
                                                                           False)):
        if value != off:
            raise ConfigError(f"{key}: {value!r}, but model.action_dim 0 means a predictor without actions or "
                              f"states; leave it at {off!r}")


def _validate_lewm(cfg: Config) -> None:
    from engine.models.vit import VIT_SIZES
    width = cfg.model.embed_dim or VIT_SIZES[cfg.model.model_name]["embed_dim"]
    if cfg.model.pred_embed_dim != width:
        raise ConfigError(f"model.pred_embed_dim: {cfg.model.pred_embed_dim}, but app lewm's predictor works at the "
                          f"encoder's width; set it to {width}")
    if cfg.loss.sigreg_coeff <= 0:
        raise ConfigError("loss.sigreg_coeff: app lewm needs > 0 (SIGReg is all that keeps its embeddings from "
                          "collapsing; the paper uses ~0.1)")
    if list(cfg.optimization.ema) != [0.0, 0.0]:
        raise ConfigError(f"optimization.ema: {cfg.optimization.ema} but app lewm has no target encoder; "
                          "set optimization.ema: none")


def level_steps(frames: int, h: HierarchyConfig) -> list[int]:
    """Steps per clip of `frames` frames at each level: frames at level 1, then (steps below - window)
    // stride + 1 (the windows that fit)."""
    steps = [frames]
    for _ in range(1, h.levels):
        steps.append((steps[-1] - h.window) // h.stride + 1)
    return steps


def _validate_hierarchy(cfg: Config) -> None:
    h = cfg.hierarchy
    for key in ("levels", "window", "stride", "embed_dim", "depth", "num_heads", "pred_depth", "pred_embed_dim",
                "pred_num_heads"):
        if getattr(h, key) < 1:
            raise ConfigError(f"hierarchy.{key}: must be >= 1, got {getattr(h, key)}")
    if h.auto_steps is not None and h.auto_steps < 1:
        raise ConfigError(f"hierarchy.auto_steps: must be >= 1 (or null: loss.auto_steps), got {h.auto_steps}")
    if h.levels < 2:
        raise ConfigError(f"hierarchy.levels: an hjepa stack has >= 2 levels, got {h.levels}; one level is "
                          "app: vjepa_droid")
    if h.stride > h.window:
        raise ConfigError(f"hierarchy.stride: {h.stride} is more than hierarchy.window ({h.window}): steps of the "
                          "level below would belong to no window")
    if h.embed_dim % h.num_heads:
        raise ConfigError(f"hierarchy.embed_dim: {h.embed_dim} is not divisible by hierarchy.num_heads ({h.num_heads})")
    if h.pred_embed_dim % h.pred_num_heads:
        raise ConfigError(f"hierarchy.pred_embed_dim: {h.pred_embed_dim} is not divisible by "
                          f"hierarchy.pred_num_heads ({h.pred_num_heads})")
    steps = level_steps(cfg.frames_per_clip, h)
    if steps[-1] < 2:
        need = cfg.frames_per_clip
        while level_steps(need, h)[-1] < 2:
            need += 1
        fpc_key = "data.dataset_fpcs" if cfg.data.dataset_fpcs else "data.num_frames"
        raise ConfigError(f"{fpc_key}: clips of {cfg.frames_per_clip} frames give {steps} steps per level with "
                          f"hierarchy.window {h.window} / stride {h.stride}; the top level needs >= 2 (use clips of "
                          f">= {need} frames, or fewer levels / a smaller window)")
    if h.train not in ("joint", "level_by_level"):
        raise ConfigError(f"hierarchy.train: expected joint or level_by_level, got {h.train!r}")
    if h.train == "joint":
        if h.level != HierarchyConfig.level or h.init_checkpoint is not None:
            raise ConfigError("hierarchy.level / hierarchy.init_checkpoint: only read with hierarchy.train: "
                              "level_by_level (joint trains every level); remove them")
    else:
        if not 1 <= h.level <= h.levels:
            raise ConfigError(f"hierarchy.level: the level to train must lie in 1..{h.levels} (hierarchy.levels), "
                              f"got {h.level}")
        if h.level > 1 and h.init_checkpoint is None:
            raise ConfigError(f"hierarchy.init_checkpoint: training level {h.level} alone needs the levels below "
                              "it trained: name the hjepa run (or checkpoint file) that trained them")


# -- YAML + command-line overrides -------------------------------------------------------------

def _apply_override(raw: dict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    path, value = item.split("=", 1)
    parts = path.strip().split(".")
    node: Any = raw
    for i, p in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise ConfigError(f"--set {path}: {where} is not an index of a {len(node)}-item list")
            node = node[int(p)]
        else:
            node = node.setdefault(p, {})
            if node is None:
                node = raw[p] = {}
    last = parts[-1]
    parsed = yaml.safe_load(value) if value.strip() else None
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {path}: {last} is not an index of a {len(node)}-item list")
        node[int(last)] = parsed
    elif isinstance(node, dict):
        node[last] = parsed
    else:
        raise ConfigError(f"--set {path}: {'.'.join(parts[:-1])} is not a section")


def load_raw(path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if raw is None:
        raise ConfigError(f"{p}: the file is empty; start from a config in configs/ (e.g. configs/tiny_cpu.yaml)")
    return raw


def load_config(path=None, overrides=(), raw: Optional[dict] = None) -> Config:
    """Read a YAML file (or a parsed dict), apply `section.key=value` overrides, type and check it."""
    return load_typed(config_from_dict, path, overrides, raw)


def load_typed(from_dict, path=None, overrides=(), raw: Optional[dict] = None):
    """from_dict(raw dict, source) on a YAML file (or a parsed dict) after `a.b.c=value` overrides; its
    ConfigError names the file. The one loader of the training and the evaluation configs."""
    if raw is None:
        raw = load_raw(path) if path is not None else {}
    raw = copy.deepcopy(raw)
    for item in overrides or ():
        _apply_override(raw, item)
    try:
        return from_dict(raw, source=str(path) if path is not None else None)
    except ConfigError as e:
        if path is not None:
            raise ConfigError(f"{path}: {e}") from None
        raise


def save_config(cfg: Config, path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
