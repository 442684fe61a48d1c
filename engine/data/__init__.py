"""The training-time data path: PyAV / DALI clip decoding, transforms, datasets, tar shards, resumable loader.
The offline tools that make the data (generators, real sources, `prepare`) live in engine.datagen.

Usage:
    from engine.data import VideoDataset, VideoTransform, make_loader
    train_csv = "data/generated/toy/train.csv"     # python -m engine.datagen generate --output data/generated/toy ...
    ds = VideoDataset([train_csv], frames_per_clip=16, frame_step=1, transform=VideoTransform(crop_size=64))
    loader = make_loader(ds, batch_size=8, seed=0, num_workers=2)
    clips_B3THW, labels_B, masks = next(iter(loader))
    # tar shards (python -m engine.datagen prepare ...), each rank reading its own shards:
    ds = ShardVideoDataset("data/shards/index.json", frames_per_clip=16, frame_step=4, transform=...)
    loader = make_loader(ds, batch_size=8, seed=0, rank=rank, world_size=world_size)
    # the same batches decoded by DALI (CPU: VP9/MJPEG; GPU: NVDEC), chosen by select_reader(...)
    loader = make_dali_loader(ds, batch_size=8, seed=0, device="cpu")
"""
from .datasets import ImageFolderDataset, VideoDataset, read_index_csv
from .dali import make_dali_loader, select_reader
from .loader import EpochBatchSampler, ResumableLoader, make_loader
from .shards import ShardBatchSampler, ShardVideoDataset
from .transforms import ImageEvalTransform, ImageTransform, Normalize, VideoEvalTransform, VideoTransform
from .video import VideoDecodeError, VideoReader, decode_clip, frame_step_for, sample_clip_indices

__all__ = [
    "ImageFolderDataset", "VideoDataset", "read_index_csv", "EpochBatchSampler", "ResumableLoader", "make_loader",
    "ImageEvalTransform", "ImageTransform", "VideoEvalTransform", "VideoTransform", "Normalize",
    "VideoDecodeError", "VideoReader", "decode_clip", "frame_step_for", "sample_clip_indices",
    "ShardBatchSampler", "ShardVideoDataset", "make_dali_loader", "select_reader",
]
