"""Atari gameplay from ale-py (its ROMs ship with the wheel): frames, the actions played and the RAM state.

Usage:
    from engine.datagen.sources import generate_atari
    csv = generate_atari("data/atari", 20, num_frames=32, games=("breakout", "pong"))
    # data/atari/atari/000003.mp4 (208x160) + 000003.actions.npy (int64 [T]) + 000003.states.npy (uint8 [T, 128] RAM)
    python -m engine.datagen atari --output data/atari --num 20 [--frames 32 --games breakout pong --size 80]

Video i plays games[i % len(games)] (its label): after a reset and a random number of no-op frames,
a sticky random policy (keep the previous action with probability `sticky`, else draw uniformly from
the game's minimal action set) acts every `frameskip` emulator frames; one video frame is kept per
action. Row t of the arrays belongs to frame t: the screen and RAM seen, then the ALE action id taken.
The emulator runs with repeat_action_probability 0, so video i depends only on (seed, i).
"""
from __future__ import annotations

import numpy as np

from .common import write_episodes

GAMES = ("breakout", "pong", "space_invaders", "freeway", "ms_pacman")


class _Games:
    """One ALEInterface per game, loaded on first use (loading a ROM takes ~0.2 s)."""

    def __init__(self):
        self.ales = {}

    def get(self, game: str):
        if game not in self.ales:
            import ale_py
            from ale_py import roms

            if game not in roms.get_all_rom_ids():
                raise ValueError(f"unknown Atari game {game!r}; ale-py ships: {', '.join(roms.get_all_rom_ids())}")
            ale = ale_py.ALEInterface()
            ale.setLoggerMode(ale_py.LoggerMode.Error)
            ale.setFloat("repeat_action_probability", 0.0)
            ale.setInt("random_seed", 0)
            ale.loadROM(roms.get_rom_path(game))
            self.ales[game] = ale
        return self.ales[game]


def _resize(frame_HW3: np.ndarray, size: int | None) -> np.ndarray:
    """Short side to `size` (None: as is), then centre-cropped to multiples of 4 (the 4:2:0 writer's rule)."""
    if size:
        from PIL import Image

        H, W, _ = frame_HW3.shape
        w = size if W <= H else int(round(W * size / H))
        h = size if H < W else int(round(H * size / W))
        frame_HW3 = np.asarray(Image.fromarray(frame_HW3).resize((w, h), Image.BILINEAR))
    H, W, _ = frame_HW3.shape
    top, left = (H % 4) // 2, (W % 4) // 2
    return frame_HW3[top:top + H - H % 4, left:left + W - W % 4]


def play(ale, rng: np.random.Generator, num_frames: int = 32, frameskip: int = 4, sticky: float = 0.75,
         size: int | None = None):
    """(uint8 frames [T, H, W, 3], int64 ALE action ids [T], uint8 RAM [T, 128]) of one play."""
    ale.reset_game()
    for _ in range(int(rng.integers(0, 30))):  # random no-op start: different openings
        ale.act(0)
    actions_set = ale.getMinimalActionSet()
    frames, actions, states = [], [], []
    a = actions_set[int(rng.integers(len(actions_set)))]
    for _ in range(num_frames):
        if ale.game_over():
            ale.reset_game()
        frames.append(_resize(ale.getScreenRGB(), size))
        states.append(ale.getRAM().copy())
        if rng.uniform() >= sticky:
            a = actions_set[int(rng.integers(len(actions_set)))]
        actions.append(int(a.value))
        for _ in range(frameskip):
            ale.act(a)
    return np.stack(frames), np.asarray(actions, np.int64), np.stack(states)


def generate_atari(out_dir, num_videos: int, *, num_frames: int = 32, games=GAMES, frameskip: int = 4,
                   fps: int = 15, size: int | None = None, codec: str = "h264", seed: int = 0, name: str = "atari",
                   progress: bool = False):
    """Write num_videos plays (game i % len(games)); return the index CSV path.

    size: short side in pixels (None: 208x160, the 210x160 screen less 2 rows for 4:2:0 video).
    """
    games = tuple(games)
    meta = {"source": "ale-py", "classes": list(games), "num_frames": num_frames, "frameskip": frameskip,
            "size": size, "seed": seed, "arrays": {"actions": "int64 [T] ALE action id",
                                                   "states": "uint8 [T, 128] console RAM"}}
    envs = _Games()
    for g in games:  # fail early on an unknown name
        envs.get(g)

    def episode(i):
        label = i % len(games)
        frames, actions, states = play(envs.get(games[label]), np.random.default_rng([seed, i]), num_frames,
                                       frameskip, size=size)
        return frames, label, actions, states

    return write_episodes(out_dir, name, num_videos, episode, size=None, codec=codec, fps=fps, meta=meta,
                          progress=progress, unit="plays")
