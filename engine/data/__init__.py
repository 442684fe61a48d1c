"""Data pipeline: synthetic video/image generators, PyAV clip decoding, transforms, datasets, resumable loader.

Usage:
    from engine.data import generate_split, VideoDataset, VideoTransform, make_loader
    train_csv, val_csv = generate_split("data/generated/toy", train=300, val=60)
    ds = VideoDataset([train_csv], frames_per_clip=16, frame_step=1, transform=VideoTransform(crop_size=64))
    loader = make_loader(ds, batch_size=8, seed=0, num_workers=2)
    clips_B3THW, labels_B, masks = next(iter(loader))
    # tar shards (python -m engine.data prepare ...), each rank reading its own shards:
    ds = ShardVideoDataset("data/shards/index.json", frames_per_clip=16, frame_step=4, transform=...)
    loader = make_loader(ds, batch_size=8, seed=0, rank=rank, world_size=world_size)
    # the same batches decoded by DALI (CPU: VP9/MJPEG; GPU: NVDEC), chosen by select_reader(...)
    loader = make_dali_loader(ds, batch_size=8, seed=0, device="cpu")
"""
from .datasets import ImageFolderDataset, VideoDataset, read_index_csv
from .images import generate_images
from .dali import make_dali_loader, select_reader
from .loader import EpochBatchSampler, ResumableLoader, make_loader
from .shards import ShardBatchSampler, ShardVideoDataset, ShardWriter
from .synthetic import MOTION_CLASSES, generate_split, generate_videos, write_counter_video, write_video
from .transforms import ImageEvalTransform, ImageTransform, Normalize, VideoEvalTransform, VideoTransform
from .video import VideoDecodeError, VideoReader, decode_clip, frame_step_for, sample_clip_indices

__all__ = [
    "ImageFolderDataset", "VideoDataset", "read_index_csv", "generate_images", "EpochBatchSampler",
    "ResumableLoader", "make_loader", "MOTION_CLASSES", "generate_split", "generate_videos",
    "write_counter_video", "write_video", "ImageEvalTransform", "ImageTransform",
    "VideoEvalTransform", "VideoTransform", "Normalize",
    "VideoDecodeError", "VideoReader", "decode_clip", "frame_step_for", "sample_clip_indices",
    "ShardBatchSampler", "ShardVideoDataset", "ShardWriter", "make_dali_loader", "select_reader",
]
