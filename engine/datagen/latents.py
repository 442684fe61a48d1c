"""Write a latent cache (engine.data.latents): every frame of a frame data set's videos through a frozen
encoder, once, in each orientation its training crops can take.

    python -m engine.datagen latents --config configs/ac_lattice_tiny_cpu.yaml --output data/latents/lattice \
        [--set key=value ...] [--dtype float32|bfloat16] [--device cuda] [--workers N] [--overwrite]
    torchrun --nproc_per_node 8 -m engine.datagen latents --device cuda ...   # each rank a share of the videos

The command builds the encoder and the data set from the config (engine.builders.build_latent_cache); this
module decodes and writes. Frames are decoded and cropped by the training data path itself
(VideoReader.decode_resized with the transform's box). A video that does not decode is left out and listed
(training then skips it, as it skips an unreadable video). The folder appears whole or not at all: it is
written beside its target and renamed. Under a launcher every rank writes its own latents file into it.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engine.core.io import atomic_write_text
from engine.core.world import barrier, from_rank0, world
from engine.data.latents import STORE_DTYPES, VERSION, LatentCacheError
from engine.data.video import VideoReader

logger = logging.getLogger(__name__)


class _DecodedVideos(torch.utils.data.Dataset):
    """Item i: (path, VideoInfo, [per span of frames_per_call frames: [per flip: uint8 [3, T, S, S]]]), or
    (path, None, the error) for a video that does not decode: run in DataLoader workers beside the encoder."""

    def __init__(self, dataset, paths, flips, frames_per_call: int):
        self.dataset, self.paths, self.flips, self.frames_per_call = dataset, paths, flips, frames_per_call

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path, ds, tf = self.paths[i], self.dataset, self.dataset.transform
        try:   # decoding only: a video that fails is left out and listed (training skips it too)
            with VideoReader(path, seek_threshold=ds.seek_threshold, fast_open=ds.fast_open) as vr:
                info = vr.info
                box, _ = tf.plan(info.height, info.width, np.random.default_rng(0))   # fixed: no draw moves it
                spans = [np.arange(a, min(info.num_frames, a + self.frames_per_call))
                         for a in range(0, info.num_frames, self.frames_per_call)]
                return path, info, [[vr.decode_resized(idx, (tf.crop_size, tf.crop_size), box, flip)
                                     for flip in self.flips] for idx in spans]
        except Exception as e:  # noqa: BLE001 -- any unreadable file, as SkipBadFiles
            return path, None, f"{type(e).__name__}: {e}"


def _as_is(item):
    return item


def write_latent_cache(dataset, encode: Callable[[torch.Tensor], torch.Tensor], fingerprint: dict, output, *,
                       store_dtype: str = "float32", overwrite: bool = False, frames_per_call: int = 64,
                       workers: int = 0, progress: bool = False, source: str = "") -> dict:
    """Write the cache folder `output` for `dataset` (a VideoDataset with a fixed-crop VideoTransform):
    encode(uint8 frames [3, T, S, S]) -> float32 latents [T, N, D] on the CPU, each frame alone; `workers`
    DataLoader processes decode the next videos meanwhile (0: decode in turn). In a process group (a
    launcher's ranks, all seeing `output`'s folder) rank r encodes videos r, r + W, ... into its own file and
    rank 0 writes the index once every rank is done; a rank that fails fails every rank, naming it. Returns
    what the folder holds (videos, frames, skipped, size) and the seconds taken."""
    if store_dtype not in STORE_DTYPES:
        raise LatentCacheError(f"--dtype: expected one of {sorted(STORE_DTYPES)}, got {store_dtype!r}")
    rank, size = world()
    output = Path(output)
    if from_rank0(output.exists()) and not overwrite:
        raise LatentCacheError(f"{output}: already exists; pass --overwrite to replace it, or another --output")
    t0 = time.perf_counter()
    paths = list(dict.fromkeys(dataset.paths))   # a video listed twice is cached once
    tmp = Path(from_rank0(str(output.parent / f".{output.name}.{secrets.token_hex(4)}.tmp")))
    made = None
    if rank == 0:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(tmp)   # the umask's mode, as any folder the user makes
        except OSError as e:   # said to every rank (the broadcast is the barrier), or they wait for rank 0
            made = f"{type(e).__name__}: {e}"
    made = from_rank0(made)
    if made is not None:
        raise LatentCacheError(f"{output}: cannot make the cache's folder beside it ({made}); pass an --output "
                               f"in a folder every rank can write")
    failure = None
    try:
        try:
            part = _write_part(dataset, paths[rank::size], encode, tmp / _file_name(rank, size), store_dtype,
                               frames_per_call, workers, progress and rank == 0)
        except Exception as e:  # noqa: BLE001 -- every rank must learn of it, or the others wait for this one
            failure, part = e, {"error": f"{type(e).__name__}: {e}"}
        parts = _exchange(tmp, part, rank, size)
        errors = [(r, p["error"]) for r, p in enumerate(parts) if "error" in p]
        if failure is not None:
            raise failure
        if errors:
            r, why = errors[0]
            raise LatentCacheError(f"rank {r} of {size} failed writing its share of the latent cache: {why}")
        files = [{"name": _file_name(r, size), "frames": p["frames"]} for r, p in enumerate(parts)]
        by_path = {v["path"]: dict(v, file=r) for r, p in enumerate(parts) for v in p["videos"]}
        videos = [by_path[p] for p in paths if p in by_path]
        skipped = [p for p in paths if p not in by_path]
        if not videos:
            raise LatentCacheError(f"data.datasets: none of the {len(paths)} videos decoded (first: {skipped[0]})")
        shape = next(p["shape"] for p in parts if p["videos"])   # [tokens, dim]: one encoder, one shape
        index = {"version": VERSION, "fingerprint": fingerprint, "dtype": store_dtype, "tokens": shape[0],
                 "dim": shape[1], "flips": parts[0]["flips"], "frames": sum(f["frames"] for f in files),
                 "config": source, "files": files, "videos": videos, "skipped": skipped}
        published = None
        if rank == 0:
            try:
                _publish(tmp, output, index)
            except Exception as e:  # noqa: BLE001 -- as above: the other ranks are waiting to hear
                failure, published = e, f"{type(e).__name__}: {e}"
        published = from_rank0(published)
        if failure is not None:
            raise failure
        if published is not None:
            raise LatentCacheError(f"rank 0 of {size} failed publishing the latent cache: {published}")
    finally:
        if rank == 0 and tmp.exists():
            shutil.rmtree(tmp)
    frame_bytes = index["flips"] * index["tokens"] * index["dim"] * np.dtype(STORE_DTYPES[store_dtype]).itemsize
    summary = {k: index[k] for k in ("dtype", "tokens", "dim", "flips", "frames")}
    summary.update(videos=len(videos), skipped=len(skipped), files=len(files),
                   gigabytes=round(index["frames"] * frame_bytes / 2 ** 30, 3),
                   seconds=round(time.perf_counter() - t0, 1))
    return summary


def _file_name(rank: int, size: int) -> str:
    return "latents.bin" if size == 1 else f"latents-{rank:05d}-of-{size:05d}.bin"


def _write_part(dataset, paths, encode, out: Path, store_dtype: str, frames_per_call: int, workers: int,
                progress: bool) -> dict:
    """Encode `paths` into the latents file `out`: what it holds, as the index lists it."""
    flips = (False, True) if dataset.transform.horizontal_flip else (False,)
    decoded = torch.utils.data.DataLoader(_DecodedVideos(dataset, paths, flips, frames_per_call), batch_size=None,
                                          num_workers=workers if paths else 0, collate_fn=_as_is)
    videos, offset, shape = [], 0, None
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), desc="latents", unit="video", dynamic_ncols=True)
    try:
        with open(out, "wb") as f:
            for path, info, u8 in decoded:
                if info is None:
                    logger.warning("skipping %s: %s", path, u8)
                else:
                    lat = torch.cat([torch.stack([encode(x) for x in per_flip], dim=1) for per_flip in u8])
                    shape = [lat.shape[2], lat.shape[3]]                                   # [T, flips, N, D]
                    f.write(lat.to(torch.bfloat16).view(torch.int16).numpy().tobytes() if store_dtype == "bfloat16"
                            else lat.numpy().tobytes())
                    videos.append({"path": path, "offset": offset, "num_frames": int(info.num_frames),
                                   "fps": float(info.fps), "height": int(info.height), "width": int(info.width)})
                    offset += int(info.num_frames)
                if bar is not None:
                    bar.update(1)
            f.flush()
            os.fsync(f.fileno())
    finally:
        if bar is not None:
            bar.close()
    return {"videos": videos, "frames": offset, "shape": shape, "flips": len(flips)}


def _exchange(tmp: Path, part: dict, rank: int, size: int) -> list[dict]:
    """Every rank's part, on every rank: through the shared folder, as the latents themselves."""
    if size == 1:
        return [part]
    try:
        atomic_write_text(tmp / f"part-{rank:05d}.json", json.dumps(part))
    except OSError:   # the readers below find it missing and name this rank; raising here would leave them waiting
        pass
    barrier()
    parts = []
    for r in range(size):
        try:
            parts.append(json.loads((tmp / f"part-{r:05d}.json").read_text()))
        except (OSError, ValueError) as e:   # each rank sees the same files: all fail alike
            parts.append({"error": f"its list of what it wrote is not readable in {tmp} ({type(e).__name__}: {e})"})
    barrier()   # every rank has read them before rank 0 may remove the folder
    return parts


def _publish(tmp: Path, output: Path, index: dict) -> None:
    """Write the index into the finished folder and rename it to `output` (an old one goes only now)."""
    for part in tmp.glob("part-*.json"):
        part.unlink()
    atomic_write_text(tmp / "index.json", json.dumps(index, indent=1))
    if output.exists():   # --overwrite: the old folder goes only once the new one is complete
        old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
        os.replace(output, old / output.name)
        os.replace(tmp, output)
        shutil.rmtree(old)
    else:
        os.replace(tmp, output)
