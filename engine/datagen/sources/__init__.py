"""Real video sources that need no download: a pybullet robot arm, a pybullet maze and Atari games (ale-py's
bundled ROMs).

Usage:
    from engine.datagen.sources import generate_robot, generate_atari
    csv = generate_robot("data/robot", 40, num_frames=32, size=64)     # + <stem>.actions.npy / .states.npy
    csv = generate_atari("data/atari", 40, num_frames=32)
    python -m engine.datagen robot --output data/robot --num 40
    python -m engine.datagen atari --output data/atari --num 40
    python -m engine.datagen maze --output data/generated/maze --num 300

Each writes real video files, the per-frame arrays beside each video (row t belongs to frame t), an
index CSV in the reference format ("<abs path> <label>") and a JSON describing the classes and arrays.
`python -m engine.datagen prepare --input DIR/<name>.csv` carries the arrays into tar shards.
"""
from .atari import generate_atari
from .pybullet_arm import generate_robot
from .pybullet_maze import generate_maze

__all__ = ["generate_atari", "generate_maze", "generate_robot"]
