"""Offline data tools: they write the files the training-time data path (engine.data) reads, and nothing
in engine.data imports them.

Usage:
    python -m engine.datagen --help                            # generate, events, images, robot, atari, prepare, bench
    from engine.datagen import generate_split, generate_images, prepare
    train_csv, val_csv = generate_split("data/generated/toy", train=300, val=60)    # moving-object videos
    root = generate_images("data/generated/images", 500)                             # ImageFolder layout
    index = prepare(train_csv, "data/shards", codec="vp9", size=128)                 # tar shards + index.json

Modules: synthetic (procedural videos, intuitive-physics event pairs, the atomic video writer and the
frame-counter test video), images (procedural images), sources (pybullet arm and Atari episodes with
actions and states), prepare (transcode, resize, shard), shard_writer (the tar layout's writer).
"""
from .images import generate_images
from .prepare import prepare
from .shard_writer import ShardWriter
from .synthetic import (CODECS, MOTION_CLASSES, generate_events, generate_split, generate_videos, read_counter,
                        write_counter_video, write_video)

__all__ = [
    "generate_images", "prepare", "ShardWriter", "CODECS", "MOTION_CLASSES", "generate_events", "generate_split",
    "generate_videos", "read_counter", "write_counter_video", "write_video",
]
