"""Writes tar shards in the layout engine.data.shards reads (see there), each tar appearing atomically.

Usage:
    with ShardWriter("data/shards", shard_size=100) as w:          # data/shards/shard-000000.tar, ...
        w.write("000017", video_bytes, "mp4", {"label": 2, "fps": 8.0, "num_frames": 16, "duration": 2.0},
                arrays={"actions": actions_TA, "states": states_TS})
    w.shards                                                        # [{"path", "count", "frames", "duration"}]
"""
from __future__ import annotations

import io
import json
import math
import os
import tarfile
from pathlib import Path

import numpy as np

from engine.data.shards import VIDEO_EXTS


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: same input -> same bytes
    tf.addfile(info, io.BytesIO(data))


def _npy_bytes(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


class ShardWriter:
    """Writes samples into out_dir/<prefix>-NNNNNN.tar, `shard_size` samples per tar; each tar appears atomically."""

    def __init__(self, out_dir, shard_size: int = 100, prefix: str = "shard"):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_size, self.prefix = int(shard_size), prefix
        self.shards: list[dict] = []  # per finished shard: path, count, frames, duration
        self._tf, self._cur, self._keys = None, None, set()

    def write(self, key: str, video: bytes, ext: str, meta: dict, arrays: dict | None = None):
        """Add one sample; meta needs label, num_frames, fps (duration, width, height... are kept as given)."""
        if "." in key or not key or key in self._keys:
            raise ValueError(f"shard key {key!r}: must be non-empty, unique and without dots")
        if ext not in VIDEO_EXTS:
            raise ValueError(f"video extension {ext!r}: expected one of {VIDEO_EXTS}")
        missing = [k for k in ("label", "num_frames", "fps") if k not in meta]
        if missing:
            raise ValueError(f"sample {key}: meta lacks {missing}")
        if self._tf is None:
            path = self.out_dir / f"{self.prefix}-{len(self.shards):06d}.tar"
            tmp = path.with_name(f".{path.name}.tmp")
            self._tf = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)
            self._cur = {"path": path.name, "count": 0, "frames": 0, "duration": 0.0, "_tmp": tmp}
        self._keys.add(key)
        label, nf, fps = int(meta["label"]), int(meta["num_frames"]), float(meta["fps"])
        _tar_add(self._tf, f"{key}.{ext}", video)
        _tar_add(self._tf, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        _tar_add(self._tf, f"{key}.cls", str(label).encode())
        _tar_add(self._tf, f"{key}.info.i32", np.asarray([label, nf, math.ceil(fps)], "<i4").tobytes())
        for name, a in (arrays or {}).items():
            _tar_add(self._tf, f"{key}.{name}.npy", _npy_bytes(a))
        c = self._cur
        c["count"] += 1
        c["frames"] += nf
        c["duration"] += float(meta.get("duration", nf / fps if fps else 0.0))
        if c["count"] >= self.shard_size:
            self._finish_shard()

    def _finish_shard(self):
        self._tf.close()
        c = self._cur
        os.replace(c.pop("_tmp"), self.out_dir / c["path"])
        c["duration"] = round(c["duration"], 4)
        self.shards.append(c)
        self._tf = self._cur = None

    def close(self) -> list[dict]:
        if self._tf is not None:
            self._finish_shard()
        return self.shards

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
