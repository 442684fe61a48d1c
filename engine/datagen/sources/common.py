"""Shared writer for the real sources: video + per-frame arrays + index CSV, written atomically.

Usage:
    with SourceWriter(out_dir, name="robot", codec="h264", fps=10) as w:
        w.add(i, frames_THW3, label, actions_TA, states_TS)      # -> out_dir/robot/000017.mp4 (+ .npy files)
    csv_path = w.csv_path                                         # out_dir/robot.csv, written on exit
    csv_path = write_episodes(out_dir, "robot", 30, episode, size=64, ...)   # episode(i) -> frames, label, arrays
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..synthetic import CODECS, write_video


def _save_npy(path: Path, a: np.ndarray):
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, a, allow_pickle=False)
    os.replace(tmp, path)


class SourceWriter:
    def __init__(self, out_dir, name: str, codec: str = "h264", fps: int = 10, meta: dict | None = None):
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
        self.out_dir = Path(out_dir).resolve()
        self.video_dir = self.out_dir / name
        self.video_dir.mkdir(parents=True, exist_ok=True)
        self.name, self.codec, self.fps, self.meta = name, codec, fps, dict(meta or {})
        self.csv_path = self.out_dir / f"{name}.csv"
        self.lines: list[str] = []

    def add(self, i: int, frames_THW3: np.ndarray, label: int, actions: np.ndarray, states: np.ndarray,
            more: dict | None = None) -> Path:
        """more: other per-frame arrays by name (written as NNNNNN.<name>.npy)."""
        T = len(frames_THW3)
        arrays = {"actions": actions, "states": states, **(more or {})}
        if any(len(a) != T for a in arrays.values()):
            raise ValueError(f"video {i}: {T} frames but " + ", ".join(f"{len(a)} {k}" for k, a in arrays.items()))
        path = self.video_dir / f"{i:06d}{CODECS[self.codec][2]}"
        for name, a in arrays.items():
            _save_npy(path.with_name(f"{path.stem}.{name}.npy"), np.asarray(a))
        write_video(path, frames_THW3, fps=self.fps, codec=self.codec)  # last: its presence means complete
        self.lines.append(f"{path} {int(label)}\n")
        return path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:
            return
        tmp = self.csv_path.with_name(f".{self.csv_path.name}.tmp")
        tmp.write_text("".join(self.lines))
        os.replace(tmp, self.csv_path)
        meta = dict(self.meta, name=self.name, codec=self.codec, fps=self.fps, num_videos=len(self.lines))
        self.csv_path.with_suffix(".json").write_text(json.dumps(meta, indent=1))


def write_episodes(out_dir, name: str, num_videos: int, episode, *, size: int | None, codec: str, fps: int,
                   meta: dict, progress: bool = False, unit: str = "episodes", close=None) -> Path:
    """Write episode(i) -> (frames_THW3, label, actions_TA, states_TS) for i < num_videos through one
    SourceWriter; return its index CSV. `close` (the simulator's) runs however the writing ends. An episode
    may give a list of V such tuples instead (its views; each may add a dict of more arrays): each is written
    as its own trajectory, video i * V + k."""
    try:
        if size is not None and size % 4:
            raise ValueError(f"size must be a multiple of 4 (4:2:0 video), got {size}")
        it = range(num_videos)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc=f"{name} {unit} -> {out_dir}", unit="video")
        with SourceWriter(out_dir, name, codec=codec, fps=fps, meta=meta) as w:
            for i in it:
                videos = episode(i)
                videos = videos if isinstance(videos, list) else [videos]
                for k, video in enumerate(videos):
                    w.add(i * len(videos) + k, *video)
    finally:
        if close is not None:
            close()
    return w.csv_path
