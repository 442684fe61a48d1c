"""Build the parts of a run from its typed config: models, masks, data.

    encoder, predictor = build_models(cfg)
    model = build_jepa(cfg)
    mask_sampler = build_mask_sampler(cfg)
    dataset = build_dataset(cfg, train=True)
    build_latent_cache(cfg, "data/latents/x")    # a frozen encoder's latents of every training frame
"""
from __future__ import annotations

from pathlib import Path

from engine.config import Config, ConfigError


def encoder_kwargs(cfg: Config) -> dict:
    from engine.models.vit import VIT_SIZES
    size = dict(VIT_SIZES[cfg.model.model_name])
    md = cfg.model
    for key in ("depth", "num_heads", "embed_dim"):
        if getattr(md, key) is not None:
            size[key] = getattr(md, key)
    if size["embed_dim"] % size["num_heads"]:
        raise ConfigError(f"model: embed_dim {size['embed_dim']} is not divisible by num_heads {size['num_heads']}")
    kw = dict(img_size=cfg.data.crop_size, patch_size=cfg.patch_size, num_frames=cfg.frames_per_clip,
              tubelet_size=cfg.data.tubelet_size, use_sdpa=cfg.meta.use_sdpa,
              use_activation_checkpointing=md.use_activation_checkpointing, **size)
    preset_rope = size.pop("use_rope", False)   # the *_rope presets
    if not cfg.is_image:
        kw.update(uniform_power=md.uniform_power, use_rope=md.use_rope or preset_rope, use_silu=md.use_silu,
                  wide_silu=md.wide_silu, rope_reference_layout=md.rope_reference_layout)
    return kw


def build_models(cfg: Config):
    from engine.models.predictor import build_predictor
    from engine.models.vit import VisionTransformer
    kw = encoder_kwargs(cfg)
    if cfg.is_lewm:
        from engine.models.lewm import ActionPredictor, FrameEncoder
        md = cfg.model
        encoder = FrameEncoder(VisionTransformer(**dict(kw, num_frames=1)))   # one frame at a time
        predictor = ActionPredictor(encoder.embed_dim, md.pred_depth, md.pred_num_heads or encoder.vit.num_heads,
                                    history=cfg.frames_per_clip - 1, action_dim=md.action_dim)
        return encoder, predictor
    if cfg.is_action_conditioned:
        from engine.models.ac_predictor import build_ac_predictor
        # The encoder sees one frame at a time; its position table is that of its pretraining clips.
        encoder = VisionTransformer(**dict(kw, num_frames=cfg.data.num_frames))
        return encoder, build_ac_predictor(cfg, encoder)
    encoder = VisionTransformer(**kw)
    predictor = build_predictor(cfg, encoder)
    return encoder, predictor


def num_mask_tokens(cfg: Config) -> int:
    return 1 if cfg.is_image else len(cfg.mask)


def build_jepa(cfg: Config):
    model = _build_jepa(cfg)
    if cfg.model.compile_model:
        from engine.models.layers import compile_blocks
        compile_blocks(model)
    return model


def _build_jepa(cfg: Config):
    from engine.jepa import JEPA
    encoder, predictor = build_models(cfg)
    if cfg.is_lewm:
        from engine.lewm import build_lewm
        return build_lewm(cfg, encoder, predictor)
    if cfg.is_action_conditioned:
        from engine.ac_jepa import load_encoder_weights
        if cfg.meta.pretrain_checkpoint:
            load_encoder_weights(encoder, cfg.meta.pretrain_checkpoint, cfg.meta.target_encoder_key)
        else:
            import logging
            logging.getLogger("engine.train").warning(
                "meta.pretrain_checkpoint is not set: the frozen encoder keeps its random init")
        frame_level = build_ac_jepa(cfg, encoder, predictor)
        if cfg.is_hierarchical:
            from engine.hjepa import build_hjepa
            return build_hjepa(cfg, frame_level)
        return frame_level
    lc = cfg.loss
    sigreg = None
    if lc.sigreg_coeff > 0:
        from engine.sigreg import SIGReg
        sigreg = SIGReg(lc.sigreg_projections, lc.sigreg_knots, lc.sigreg_t_max)
    return JEPA(encoder, predictor, loss="smooth_l1" if cfg.is_image else "l1", loss_exp=lc.loss_exp,
                reg_coeff=0.0 if cfg.is_image else lc.reg_coeff, std_coeff=lc.std_coeff, cov_coeff=lc.cov_coeff,
                sigreg=sigreg, sigreg_coeff=lc.sigreg_coeff)


def build_ac_jepa(cfg: Config, encoder, predictor):
    """The V-JEPA 2-AC step around these models, with the config's loss and action settings."""
    from engine.ac_jepa import ACJEPA
    return ACJEPA(encoder, predictor, auto_steps=cfg.loss.auto_steps, loss_exp=cfg.loss.loss_exp,
                  normalize_reps=cfg.loss.normalize_reps, action_scale=cfg.model.action_scale,
                  residual=cfg.model.pred_residual)


def build_mask_sampler(cfg: Config):
    from engine.masks import MaskCollator
    mask_tokens = None
    fpcs = cfg.data.dataset_fpcs
    if not cfg.is_image and fpcs:
        # V-JEPA 2 indexes mask tokens by frames-per-clip group, not by mask config; clips here have
        # the longest group's length, so every config uses that group's token.
        mask_tokens = [list(fpcs).index(max(fpcs))] * len(cfg.mask)
    return MaskCollator.from_config(cfg.mask, cfg.token_grid, mode=cfg.meta.mask_mode, mask_tokens=mask_tokens)


def build_dataset(cfg: Config, train: bool = True, index_files=None, frames: bool = False):
    """The training data set (random crops) or an evaluation one (center crops, labelled). With
    data.latent_cache the training set gives the cached latents of its clips (engine.data.latents);
    frames=True: the frame data set all the same (what the cache is built from)."""
    from engine.data.datasets import ImageFolderDataset, VideoDataset
    from engine.data.transforms import ImageTransform, VideoTransform, VideoEvalTransform, ImageEvalTransform
    d, aug = cfg.data, cfg.data_aug
    if cfg.is_image:
        if train:
            tf = ImageTransform(d.crop_size, scale=tuple(d.crop_scale), horizontal_flip=d.use_horizontal_flip,
                                color_distortion=d.use_color_distortion, color_jitter_strength=d.color_jitter_strength,
                                gaussian_blur=d.use_gaussian_blur)
        else:
            tf = ImageEvalTransform(d.crop_size)
        # the reference reads root_path/image_folder (an absolute image_folder stands alone)
        root = index_files or (str(Path(d.root_path or "", d.image_folder)) if d.image_folder else None)
        if root is None:
            raise ConfigError("data.image_folder: an image folder (under data.root_path, if given) is required "
                              "for app ijepa")
        return ImageFolderDataset(root, transform=tf)
    files = index_files if index_files is not None else d.datasets
    if not files:
        raise ConfigError("data.datasets: at least one index file (CSV of 'path label' lines) is required")
    if train:
        tf = VideoTransform(d.crop_size, random_resize_scale=tuple(aug.random_resize_scale),
                            random_resize_aspect_ratio=tuple(aug.random_resize_aspect_ratio),
                            horizontal_flip=aug.horizontal_flip, auto_augment=aug.auto_augment,
                            motion_shift=aug.motion_shift, reprob=aug.reprob)
    else:
        tf = VideoEvalTransform(d.crop_size)
    kw = dict(frames_per_clip=cfg.frames_per_clip, frame_step=d.sampling_rate, fps=d.fps, duration=d.clip_duration,
              num_clips=d.num_clips if train else 1, transform=tf)
    arrays = {}
    if cfg.uses_trajectories:
        from engine.data.trajectories import CAMERA, WORLD
        arrays = {"arrays": CAMERA if d.camera_frame else WORLD}
    if train and d.latent_cache and not frames:
        from engine.data.latents import LatentCache, LatentTrajectoryDataset, LatentVideoDataset
        if cfg.uses_trajectories:   # as TrajectoryDataset: no short-video filter
            return LatentTrajectoryDataset(LatentCache(d.latent_cache), files, weights=d.datasets_weights, **arrays,
                                           **kw)
        ds = LatentVideoDataset(LatentCache(d.latent_cache), files, weights=d.datasets_weights, **kw)
        ds.filter_short_videos = d.filter_short_videos
        return ds
    if cfg.uses_trajectories:
        from engine.data.trajectories import TrajectoryDataset
        if d.dataset_type.lower() != "videodataset":
            raise ConfigError(f"data.dataset_type: action-conditioned runs read trajectory index CSVs "
                              f"(VideoDataset), got {d.dataset_type!r}")
        return TrajectoryDataset(files, weights=d.datasets_weights if train else None, **arrays, **kw)
    if d.dataset_type.lower() == "webdataset":
        from engine.data.shards import ShardVideoDataset
        if d.datasets_weights is not None and train:
            raise ConfigError("data.datasets_weights: not supported with dataset_type webdataset (a shard stream "
                              "has no per-dataset weights); merge the shard sets or drop the weights")
        ds = ShardVideoDataset(files, **kw)
    else:
        ds = VideoDataset(files, weights=d.datasets_weights if train else None, **kw)
    ds.filter_short_videos = d.filter_short_videos and train
    return ds


def build_loader(cfg: Config, dataset, device, mask_sampler=None, rank: int = 0, world_size: int = 1,
                 batch_size: int | None = None):
    """The training loader: PyAV in DataLoader workers, or DALI where `data.reader` (auto | pyav | dali)
    and the device and codec call for it. Both yield (clips, labels, masks) and resume from state_dict."""
    import torch
    from engine.data.loader import make_loader
    d = cfg.data
    device = torch.device(device)
    B = batch_size or d.batch_size
    reader = "pyav"
    # DALI only where asked for, or by `auto` on a GPU; on CPU `auto` is PyAV whatever the codec (no
    # need to open a file to find out, and in-memory data sets have none).
    from engine.data.latents import LatentVideoDataset
    decodes = not cfg.is_image and not isinstance(dataset, LatentVideoDataset)   # a latent cache decodes nothing
    if decodes and (d.reader == "dali" or (d.reader == "auto" and device.type == "cuda")):
        from engine.data.dali import dataset_codec, select_reader
        try:
            reader = select_reader(dataset_codec(dataset), device.type, d.reader)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if reader == "dali":
        from engine.data.dali import make_dali_loader
        if d.num_clips != 1:
            raise ConfigError(f"data.num_clips: the DALI reader takes one clip per video, got {d.num_clips}")
        aug = cfg.data_aug
        for key, on in (("auto_augment", aug.auto_augment), ("motion_shift", aug.motion_shift),
                        ("reprob", aug.reprob > 0)):
            if on:
                raise ConfigError(f"data_aug.{key}: not supported by the DALI reader; use data.reader: pyav")
        return make_dali_loader(dataset, batch_size=B, seed=cfg.meta.seed, mask_sampler=mask_sampler,
                                device=str(device), rank=rank, world_size=world_size, num_threads=d.dali_threads)
    return make_loader(dataset, batch_size=B, seed=cfg.meta.seed, mask_sampler=mask_sampler,
                       num_workers=d.num_workers, persistent_workers=d.persistent_workers, rank=rank,
                       world_size=world_size,
                       pin_memory=d.pin_mem and device.type == "cuda",
                       # on a GPU, uint8 clips cross the bus and are normalised there (4x fewer bytes)
                       device=device if device.type == "cuda" else None)


def build_frozen_frame_step(cfg: Config):
    """The frozen-encoder step (engine.ac_jepa.ACJEPA; H-JEPA's level 1) of the model the trainer builds
    from cfg: the same seeds first, so the same encoder weights (its checkpoint, or its random init)."""
    import random

    import numpy as np
    import torch

    from engine.ac_jepa import ACJEPA
    from engine.data.latents import frame_level
    random.seed(cfg.meta.seed)
    np.random.seed(cfg.meta.seed)
    torch.manual_seed(cfg.meta.seed)
    step = frame_level(build_jepa(cfg))
    if not isinstance(step, ACJEPA):
        raise ConfigError(f"app {cfg.app}: a latent cache is for the frozen-encoder world models (app vjepa_droid, "
                          "hjepa)")
    return step.eval()


def build_latent_cache(cfg: Config, output, store_dtype: str = "float32", overwrite: bool = False,
                       progress: bool = False, device: str = "cpu", workers: int = 0) -> dict:
    """`python -m engine.datagen latents`: cfg's frozen encoder's latents of every frame of its training
    videos, written to `output` (engine.datagen.latents). device: where the encoder runs; frames are
    decoded on the CPU, as the training loader does, by `workers` processes beside it (0: in turn)."""
    import torch

    from engine.config import latent_cache_problem
    from engine.core.step import autocast
    from engine.data.latents import run_fingerprint
    from engine.datagen.latents import write_latent_cache
    problem = latent_cache_problem(cfg)
    if problem:
        raise ConfigError(problem)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this torch sees no CUDA device; leave --device out to encode on the CPU")
    step = build_frozen_frame_step(cfg)
    fingerprint = run_fingerprint(step, cfg)   # before it moves: the trainer takes it on the built model
    step.to(dev)
    dataset = build_dataset(cfg, train=True, frames=True)

    def encode(u8_3TSS):   # each frame alone, under the run's autocast: [T, N, D] float32 on the CPU
        with torch.no_grad(), autocast(cfg.dtype, dev):
            h = step.encode(dataset.transform.finish(u8_3TSS.to(dev), None)[None])
        return h.float().reshape(u8_3TSS.shape[1], -1, h.shape[-1]).cpu()

    return write_latent_cache(dataset, encode, fingerprint, output, store_dtype=store_dtype, overwrite=overwrite,
                              workers=workers, progress=progress, source=str(cfg.source or ""))
