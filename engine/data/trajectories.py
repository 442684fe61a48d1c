"""Trajectories: clips that carry the actions and states of their frames (robot episodes written by
engine.datagen.sources: NNNNNN.mp4 + NNNNNN.actions.npy [T, A] + NNNNNN.states.npy [T, S]).

    ds = TrajectoryDataset("data/robot/robot.csv", frames_per_clip=4, frame_step=1, transform=tf)
    loader = make_loader(ds, batch_size=8, seed=0)
    for clips_B3THW, labels_B, traj in loader:        # traj: {"actions": [B, T-1, A], "states": [B, T, S]}

A clip's frames are sampled as any video clip's (same rules, same per-sample seed); its states are the
rows of those frames, and action i is the sum of the per-frame actions from frame idx[i] up to (not
including) idx[i+1], so with a frame step k one action is the displacement commanded over k frames
(the sources' actions are end-effector displacements, which add up). T frames have T-1 actions, the
layout of the V-JEPA 2-AC trainer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.data.datasets import VideoDataset


@dataclass
class TrajectoryClip:
    """One sample: the clip and its per-frame arrays (the loader's collate stacks each field)."""
    clip: torch.Tensor
    actions: torch.Tensor     # float32 [T-1, A]
    states: torch.Tensor      # float32 [T, S]


def arrays_path(video_path, name: str) -> Path:
    p = Path(video_path)
    return p.with_name(f"{p.stem}.{name}.npy")


def clip_arrays(actions_NA: np.ndarray, states_NS: np.ndarray, idx_T: np.ndarray):
    """(actions [T-1, A], states [T, S]) of the clip at frame indices idx_T (increasing)."""
    csum = np.concatenate([np.zeros((1, actions_NA.shape[1]), actions_NA.dtype), np.cumsum(actions_NA, 0)])
    actions = csum[idx_T[1:]] - csum[idx_T[:-1]]
    return actions.astype(np.float32), states_NS[idx_T].astype(np.float32)


WORLD = ("actions", "states")
CAMERA = ("actions_camera", "states_camera")   # the same in the video's camera frame (data.camera_frame)


def check_arrays(path, names) -> None:
    """A whole index without its arrays is a user error, said once, up front (for its first video)."""
    for name in names:
        if not arrays_path(path, name).is_file():
            hint = (" in its camera's frame (data.camera_frame: the arm source writes them; set it false for data "
                    "without)" if name in CAMERA else " (python -m engine.datagen robot ...)")
            raise ValueError(f"{path}: no {arrays_path(path, name).name} beside it; trajectory data needs per-frame "
                             f"actions and states{hint}")


def load_arrays(path, names, idx_T):
    """(actions [T-1, A], states [T, S]) of the clip at frames idx_T, from the arrays `names` beside path."""
    actions, states = (np.load(arrays_path(path, n), allow_pickle=False) for n in names)
    if len(actions) != len(states):
        raise ValueError(f"{path}: {len(actions)} actions but {len(states)} states")
    return clip_arrays(actions, states, np.minimum(idx_T, len(states) - 1))


class TrajectoryDataset(VideoDataset):
    """VideoDataset whose samples are TrajectoryClip (one clip per video: num_clips must be 1). arrays: the
    world-frame actions and states (WORLD) or the camera-frame ones (CAMERA)."""

    def __init__(self, index_csvs, arrays=WORLD, **kw):
        if kw.get("num_clips", 1) != 1:
            raise ValueError(f"TrajectoryDataset: one clip per trajectory (num_clips 1), got {kw['num_clips']}")
        super().__init__(index_csvs, **kw)
        self.arrays = tuple(arrays)
        for path in self.paths[:1]:
            check_arrays(path, self.arrays)

    def _decode(self, vr, clips, rng):
        return super()._decode(vr, clips, rng), load_arrays(vr.path, self.arrays, clips[0])

    def _finish(self, data, rng):
        clip_data, (actions, states) = data
        clip = super()._finish(clip_data, rng)
        return TrajectoryClip(clip, torch.from_numpy(actions), torch.from_numpy(states))
