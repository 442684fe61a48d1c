"""uint8 clip transport (workers ship uint8, the consumer normalises) gives the model the same values.

Run: .venv/bin/python -m pytest tests/data/test_uint8_transport.py -q
"""
import copy

import numpy as np
import pytest
import torch

from engine.data import ImageFolderDataset, ImageTransform, VideoDataset, VideoTransform, make_loader
from engine.data.transforms import Normalize, resize_planar
from engine.datagen import generate_images


def _fused_float_path(u8_3THW, tf):
    """The transform's floats computed another way: one fused multiply-add straight from the uint8 clip."""
    n = tf.normalize
    return torch.addcmul(n.bias_C.view(3, 1, 1, 1), u8_3THW.contiguous(), n.scale_C.view(3, 1, 1, 1))


def _normalize_floor(n) -> float:
    """Two fp32 roundings of terms up to |255 scale| + |bias|: the tolerance of Normalize against the fused
    multiply-add (it scales with those terms, not with the result, which may be near 0)."""
    return 2 * torch.finfo(torch.float32).eps * float((255 * n.scale_C + n.bias_C.abs()).max())


def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _expected_batch(ds, keys):
    """A batch built sample by sample with the fused float path, from the loader's (index, seed, _) keys."""
    twin = copy.copy(ds)
    twin.transform = ds.transform.as_uint8()
    return torch.stack([_fused_float_path(twin[(index, seed)][0], ds.transform) for index, seed, _ in keys])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_float_batches_match_fused_path(vp9_csv, num_workers):
    ds = VideoDataset([vp9_csv], frames_per_clip=6, frame_step=2, transform=VideoTransform(crop_size=24))
    loader = make_loader(ds, batch_size=3, seed=4, num_workers=num_workers)
    keys_per_batch = list(loader.sampler)  # epoch 0, before iterating
    got = _batches(loader, 2)
    assert loader.normalize is not None  # the workers shipped uint8
    for (clips, labels, masks), keys in zip(got, keys_per_batch):
        assert clips.dtype == torch.float32 and clips.shape == (3, 3, 6, 24, 24)
        assert (clips - _expected_batch(ds, keys)).abs().max().item() <= _normalize_floor(ds.transform.normalize)
        # and exactly what the transform's own float output (per sample) stacks to
        assert torch.equal(clips, torch.stack([ds[(i, s)][0] for i, s, _ in keys]))


def test_uint8_clips_and_consumer_side_normalise(vp9_csv):
    ds = VideoDataset([vp9_csv], frames_per_clip=4, frame_step=2, transform=VideoTransform(crop_size=16))
    floats = _batches(make_loader(ds, batch_size=4, seed=1), 2)
    u8 = make_loader(ds, batch_size=4, seed=1, clip_dtype=torch.uint8)
    raw = _batches(u8, 2)
    on_dev = _batches(make_loader(ds, batch_size=4, seed=1, device="cpu"), 2)
    for f, r, d in zip(floats, raw, on_dev):
        assert r[0].dtype == torch.uint8 and r[0].shape == f[0].shape
        assert torch.equal(u8.normalize(r[0]), f[0]) and torch.equal(d[0], f[0])
        assert torch.equal(r[1], f[1])
    assert ds.transform.dtype == torch.float32  # the user's transform is left as it was


def test_several_clips_and_images_go_through_uint8(vp9_csv, tmp_path):
    ds = VideoDataset([vp9_csv], frames_per_clip=4, frame_step=2, num_clips=2, transform=VideoTransform(16))
    clips, _, _ = next(iter(make_loader(ds, batch_size=2, seed=0)))
    keys = next(iter(make_loader(ds, batch_size=2, seed=0).sampler))
    want = [ds[(i, s)][0] for i, s, _ in keys]
    assert clips.shape == (4, 3, 4, 16, 16)   # the clips of a video along the batch, clip-major
    assert torch.equal(clips, torch.stack([w[k] for k in range(2) for w in want]))
    root = generate_images(tmp_path / "img", 6, size=24, seed=0)
    ids = ImageFolderDataset(root, transform=ImageTransform(crop_size=16))
    loader = make_loader(ids, batch_size=3, seed=2)
    x, _, _ = next(iter(loader))
    keys = next(iter(loader.sampler))
    assert loader.normalize.channel_dim == -3 and x.dtype == torch.float32 and x.shape == (3, 3, 16, 16)
    assert torch.equal(x, torch.stack([ids[(i, s)][0] for i, s, _ in keys]))


def test_bad_arguments_name_the_problem(vp9_csv):
    ds = VideoDataset([vp9_csv], frames_per_clip=4, frame_step=2, transform=VideoTransform(16))
    with pytest.raises(ValueError, match="clip_dtype"):
        make_loader(ds, batch_size=2, seed=0, clip_dtype=torch.float16)
    raw = VideoDataset([vp9_csv], frames_per_clip=4, frame_step=2)  # no transform: nothing to normalise with
    with pytest.raises(ValueError, match="uint8 twin"):
        make_loader(raw, batch_size=2, seed=0, clip_dtype=torch.uint8)
    x, _, _ = next(iter(make_loader(raw, batch_size=2, seed=0)))  # passed through untouched, as before
    assert x.dtype == torch.uint8 and x.shape[-1] == 3
    with pytest.raises(TypeError, match="uint8"):
        Normalize()(torch.zeros(3, 2, 4, 4))
    with pytest.raises(ValueError, match="3 channels"):
        Normalize()(torch.zeros(4, 2, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="dtype"):
        VideoTransform(16, dtype=torch.float16)


def test_normalize_large_batches_and_unresized_clips_own_their_memory():
    n = Normalize()
    u8 = torch.randint(0, 256, (4, 3, 8, 128, 128), dtype=torch.uint8)  # 6 MB of float: the huge-page path
    x = n(u8)
    want = torch.addcmul(n.bias_C.view(3, 1, 1, 1), u8, n.scale_C.view(3, 1, 1, 1))
    assert x.is_contiguous() and (x - want).abs().max().item() <= _normalize_floor(n)
    part = x[1]
    del x  # a view keeps the mapping alive
    assert torch.equal(part, n(u8[1]))
    clip = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    y = resize_planar(clip, (8, 8), flip=False)  # no resize, no flip: must still be a copy
    before = y.clone()
    clip[:] = 0
    assert torch.equal(y, before)
