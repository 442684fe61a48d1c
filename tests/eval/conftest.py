"""Shared fixtures of the eval tests: a small generated video data set and an eval config for it."""
import numpy as np
import pytest
import torch
import yaml

from engine.eval.config import load_eval_config
from engine.eval.features import build_encoder


@pytest.fixture(scope="session")
def eval_yaml(tmp_path_factory):
    from engine.datagen.synthetic import generate_split
    root = tmp_path_factory.mktemp("eval")
    train_csv, val_csv = generate_split(root / "videos", train=12, val=6, size=32, num_frames=8, num_classes=3, seed=0)
    raw = {"eval_name": "video_classification_frozen", "folder": str(root / "out"),
           "experiment": {
               "classifier": {"num_heads": 3, "num_probe_blocks": 2, "layout": "vjepa2"},
               "data": {"dataset_train": str(train_csv), "dataset_val": str(val_csv), "frames_per_clip": 4,
                        "frame_step": 1, "num_segments": 2, "num_views_per_segment": 2, "resolution": 32},
               "features": {"num_workers": 0, "batch_size": 6, "train_augmentations": 2,
                            "cache": "always"},   # auto would stream on a nearly full disk
               "optimization": {"batch_size": 4, "num_epochs": 2, "multihead_kwargs": [
                   {"lr": 1e-3, "start_lr": 1e-4, "warmup": 1}, {"lr": 1e-4, "start_lr": 1e-4}]}},
           "model_kwargs": {"checkpoint": str(root / "ck.pt"),
                            "pretrain_kwargs": {"encoder": {"config": "configs/tiny_cpu.yaml"}}}}
    path = root / "eval.yaml"
    path.write_text(yaml.safe_dump(raw))
    enc = build_encoder(load_eval_config(path), random_init=True, seed=3)
    # as the trainer writes it: RNG states beside the weights (objects weights-only loading refuses)
    torch.save({"target_encoder": {f"module.backbone.{k}": v for k, v in enc.state_dict().items()},
                "rng": {"numpy": np.random.get_state()}}, root / "ck.pt")
    return path
