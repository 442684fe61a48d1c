"""Build a latent cache (engine.data.latents): every frame of a world-model config's training videos through
its frozen encoder, once, in each orientation the training crops can take.

    python -m engine.datagen latents --config configs/ac_lattice_tiny_cpu.yaml --output data/latents/lattice \
        [--set key=value ...] [--dtype float32|bfloat16] [--device cuda] [--overwrite]

The encoder is the one the trainer builds from the same config (meta.pretrain_checkpoint, else its random
init from meta.seed), each frame encoded alone under the config's meta.dtype, as the V-JEPA 2-AC step encodes
it. Frames are decoded and cropped by the training data path itself (VideoReader.decode_resized with the
transform's box). A video that does not decode is left out and listed (training then skips it, as it skips
an unreadable video). The folder appears whole or not at all: it is written beside its target and renamed.
"""
from __future__ import annotations

import json
import logging
import os
import random
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from engine.config import Config, ConfigError, latent_cache_problem
from engine.core.io import atomic_write_text
from engine.data.latents import STORE_DTYPES, VERSION, frame_level, run_fingerprint
from engine.data.video import VideoReader

logger = logging.getLogger(__name__)


def frozen_encoder_model(cfg: Config):
    """The frozen-encoder step (ACJEPA; H-JEPA's level 1) of the model the trainer would build from cfg
    (same seed, same encoder weights)."""
    from engine.ac_jepa import ACJEPA
    from engine.builders import build_jepa
    random.seed(cfg.meta.seed)
    np.random.seed(cfg.meta.seed)
    torch.manual_seed(cfg.meta.seed)
    model = frame_level(build_jepa(cfg))
    if not isinstance(model, ACJEPA):
        raise ConfigError(f"app {cfg.app}: a latent cache is for the frozen-encoder world models (app vjepa_droid, "
                          f"hjepa)")
    return model.eval()


def build_latent_cache(cfg: Config, output, store_dtype: str = "float32", overwrite: bool = False,
                       frames_per_call: int = 64, progress: bool = False, device: str = "cpu") -> dict:
    """Write the cache folder `output`; returns what it holds (videos, frames, skipped, size) and the seconds
    taken. device: where the encoder runs (frames are decoded on the CPU, as the training loader does)."""
    from engine.builders import build_dataset
    from engine.core.step import autocast

    problem = latent_cache_problem(cfg)
    if problem:
        raise ConfigError(problem)
    if store_dtype not in STORE_DTYPES:
        raise ConfigError(f"--dtype: expected one of {sorted(STORE_DTYPES)}, got {store_dtype!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this torch sees no CUDA device; leave --device out to encode on the CPU")
    output = Path(output)
    if output.exists() and not overwrite:
        raise ConfigError(f"{output}: already exists; pass --overwrite to replace it, or another --output")
    t0 = time.perf_counter()
    model = frozen_encoder_model(cfg)
    encoder_fp = run_fingerprint(model, cfg)
    model.to(dev)
    ds = build_dataset(cfg, train=True, frames=True)
    tf = ds.transform
    flips = (False, True) if tf.horizontal_flip else (False,)
    paths = list(dict.fromkeys(ds.paths))   # a video listed twice is cached once
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.{secrets.token_hex(4)}.tmp"
    os.mkdir(tmp)   # the umask's mode, as any folder the user makes
    videos, skipped, offset, tokens, dim = [], [], 0, None, None
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), desc="latents", unit="video", dynamic_ncols=True)
    try:
        with open(tmp / "latents.bin", "wb") as f:
            for path in paths:
                try:   # decoding only: a video that fails is left out and listed (training skips it too)
                    with VideoReader(path, seek_threshold=ds.seek_threshold, fast_open=ds.fast_open) as vr:
                        info = vr.info
                        box, _ = tf.plan(info.height, info.width, np.random.default_rng(0))   # fixed: no draw moves it
                        spans = [np.arange(a, min(info.num_frames, a + frames_per_call))
                                 for a in range(0, info.num_frames, frames_per_call)]
                        u8 = [[vr.decode_resized(idx, (tf.crop_size, tf.crop_size), box, flip) for flip in flips]
                              for idx in spans]
                except Exception as e:  # noqa: BLE001 -- any unreadable file, as SkipBadFiles
                    logger.warning("skipping %s: %s", path, e)
                    skipped.append(path)
                    if bar is not None:
                        bar.update(1)
                    continue
                chunks = []
                for idx, per_flip in zip(spans, u8):
                    with torch.no_grad(), autocast(cfg.dtype, dev):
                        h = [model.encode(tf.finish(u8_3TSS.to(dev), None)[None]) for u8_3TSS in per_flip]
                    chunks.append(torch.stack([x.float().reshape(len(idx), -1, x.shape[-1]) for x in h], dim=1).cpu())
                lat = torch.cat(chunks)
                tokens, dim = lat.shape[2], lat.shape[3]
                f.write(lat.to(torch.bfloat16).view(torch.int16).numpy().tobytes() if store_dtype == "bfloat16"
                        else lat.numpy().tobytes())
                videos.append({"path": path, "offset": offset, "num_frames": int(info.num_frames),
                               "fps": float(info.fps), "height": int(info.height), "width": int(info.width)})
                offset += int(info.num_frames)
                if bar is not None:
                    bar.update(1)
            f.flush()
            os.fsync(f.fileno())
        if not videos:
            raise ConfigError(f"data.datasets: none of the {len(paths)} videos decoded (first: {skipped[0]})")
        index = {"version": VERSION, "fingerprint": encoder_fp, "dtype": store_dtype,
                 "tokens": tokens, "dim": dim, "flips": len(flips), "frames": offset,
                 "config": str(cfg.source or ""), "videos": videos, "skipped": skipped}
        atomic_write_text(tmp / "index.json", json.dumps(index, indent=1))
        if output.exists():   # --overwrite: the old folder goes only once the new one is complete
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
            os.replace(output, old / output.name)
            os.replace(tmp, output)
            shutil.rmtree(old)
        else:
            os.replace(tmp, output)
    finally:
        if bar is not None:
            bar.close()
        if tmp.exists():
            shutil.rmtree(tmp)
    summary = {k: index[k] for k in ("dtype", "tokens", "dim", "flips", "frames")}
    summary.update(videos=len(videos), skipped=len(skipped), gigabytes=round((output / "latents.bin").stat().st_size
                                                                              / 2 ** 30, 3),
                   seconds=round(time.perf_counter() - t0, 1))
    return summary
