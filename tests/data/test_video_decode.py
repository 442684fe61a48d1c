"""GOP-aware decoding (engine.data.video._packet_pass) against plain frame-by-frame decoding.

Run: .venv/bin/python -m pytest tests/data/test_video_decode.py -q
"""
import io

import numpy as np
import pytest

from engine.data import VideoReader
from engine.datagen import read_counter, write_counter_video


@pytest.mark.parametrize("codec,gop", [("h264", None), ("h264", 6), ("vp9", 5), ("mjpeg", None)])
def test_gop_skipping_matches_full_decode(tmp_path, codec, gop):
    """Random index sets (sorted or not, repeats, near and far apart) decode to the same pixels either way."""
    p = write_counter_video(tmp_path / f"v.{'avi' if codec == 'mjpeg' else 'mp4'}", 90, fps=25, size=32, codec=codec,
                            gop=gop)
    rng = np.random.default_rng(1)
    for trial in range(6):
        idx = rng.choice(90, size=int(rng.integers(1, 10)), replace=True)
        thr = int(rng.choice([3, 20, 64]))
        with VideoReader(p, seek_threshold=thr, fast_open=False) as fast, \
                VideoReader(p, seek_threshold=thr, skip_gops=False) as slow, VideoReader(p) as track:
            got = fast._packet_pass(np.unique(idx))  # the fast pass alone finds every frame (no fallback)
            assert sorted(got) == sorted(set(idx.tolist()))
            a, b = fast.decode(idx), slow.decode(idx)
            # MP4s are read from their sample table (engine.data.mp4), without libavformat
            assert (track._track is not None) == (codec != "mjpeg")
            got = track._track_pass(np.unique(idx)) if codec != "mjpeg" else got
            assert got is not None and sorted(got) == sorted(set(idx.tolist()))
            c = track.decode(idx)
        assert read_counter(a).tolist() == idx.tolist()
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(c, b)


def test_in_memory_reader_and_truncated_file(tmp_path):
    p = write_counter_video(tmp_path / "v.mp4", 30, fps=10, size=32, codec="h264")
    data = p.read_bytes()
    with VideoReader(io.BytesIO(data), name="mem.mp4") as vr:
        assert vr.path == "mem.mp4" and read_counter(vr.decode([29, 3])).tolist() == [29, 3]
    from engine.data import VideoDecodeError
    with pytest.raises(VideoDecodeError, match="mem-cut.mp4"):
        with VideoReader(io.BytesIO(data[: len(data) // 2]), name="mem-cut.mp4") as vr:
            vr.decode([0])


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_sparse_refs_encoding_decodes_fewer_frames(tmp_path, codec):
    """prepare's default refs (H.264: every B-frame unreferenced; VP9: two temporal layers, error
    resilient): the same pixels as a frame-by-frame decode, for every clip phase, fewer frames decoded."""
    from engine.datagen.prepare import transcode

    src = write_counter_video(tmp_path / "v.mp4", 64, fps=25, size=32, codec=codec)
    sparse, dense = tmp_path / "sparse.mp4", tmp_path / "dense.mp4"
    sparse.write_bytes(transcode(src, codec)[0])  # sparse_refs: the default where the codec has them
    dense.write_bytes(transcode(src, codec, sparse_refs=False)[0])
    for start in range(4):
        idx = list(range(start, 62, 4))  # 16 frames 4 apart
        counts = {}
        for name, p in (("dense", dense), ("sparse", sparse)):
            with VideoReader(p) as vr, VideoReader(p, skip_gops=False) as slow:
                a = vr.decode(idx)
                assert read_counter(a).tolist() == idx
                np.testing.assert_array_equal(a, slow.decode(idx))  # skipping changed no decoded pixel
                counts[name] = vr.frames_decoded
        assert counts["sparse"] <= counts["dense"] - 14 and counts["dense"] <= 62, (start, counts)
    with pytest.raises(ValueError, match="sparse_refs"):
        transcode(src, "mjpeg", sparse_refs=True)


def _vp9_frame(*, key=False, show=True, error_resilient=False, refresh=0, show_existing=False, profile=0,
               intra_only=False):
    """The first bytes of a VP9 frame's uncompressed header, fields as in the spec (6.2)."""
    bits = [1, 0, profile & 1, profile >> 1] + ([0] if profile == 3 else [])
    if show_existing:
        bits += [1, 0, 1, 0]
    else:
        bits += [0, 0 if key else 1, int(show), int(error_resilient)]
        if not key:
            if not show:
                bits += [int(intra_only)]
            if not error_resilient:
                bits += [0, 0]  # reset_frame_context
            bits += [(refresh >> (7 - i)) & 1 for i in range(8)]
    bits += [0] * (-len(bits) % 8 + 8)
    return bytes(int("".join(map(str, bits[i:i + 8])), 2) for i in range(0, len(bits), 8)) + b"\x00" * 4


def _superframe(*frames):
    sizes = [len(f) for f in frames]
    marker = 0xC0 | (1 << 3) | (len(frames) - 1)  # 2 bytes per size
    return b"".join(frames) + bytes([marker]) + b"".join(n.to_bytes(2, "little") for n in sizes) + bytes([marker])


def test_vp9_skippable_rules():
    from engine.data.video import vp9_skippable

    free, er = _vp9_frame(refresh=0), _vp9_frame(error_resilient=True, refresh=0x01)
    for profile in (0, 1, 2, 3):  # profile 3 carries an extra reserved bit before the frame fields
        assert vp9_skippable(_vp9_frame(refresh=0, profile=profile), er)
        assert not vp9_skippable(_vp9_frame(refresh=0x04, profile=profile), er)
    assert vp9_skippable(_vp9_frame(error_resilient=True, refresh=0), _vp9_frame(key=True))
    assert vp9_skippable(_vp9_frame(show_existing=True), er)
    # the next frame inherits motion vectors / probabilities unless it is error resilient or a keyframe
    assert not vp9_skippable(free, _vp9_frame(refresh=0x01))
    assert not vp9_skippable(_vp9_frame(key=True), er)
    assert vp9_skippable(_vp9_frame(show=False, refresh=0), er)  # hidden and refreshing nothing: useless
    # intra-only: its refresh_frame_flags come later in the header; not read, taken as "some slot"
    assert not vp9_skippable(_vp9_frame(show=False, intra_only=True), er)
    # a superframe is skippable only if every frame in it is
    assert vp9_skippable(_superframe(free, _vp9_frame(show_existing=True)), er)
    assert not vp9_skippable(_superframe(_vp9_frame(show=False, refresh=0x40), free), er)
    assert not vp9_skippable(b"\x00\x01", er) and not vp9_skippable(b"", er)  # not a VP9 header


@pytest.mark.parametrize("codec", ["h264", "vp9_sparse", "mjpeg"])
@pytest.mark.parametrize("tf_kind", ["train", "eval"])
@pytest.mark.parametrize("num_clips", [1, 2])
def test_decode_to_size_matches_transform_after_decode(tmp_path, counter_videos, codec, tf_kind, num_clips):
    """VideoDataset crops while decoding (decode_resized) by default: the same clip indices, boxes and
    flips as decoding whole frames and calling the transform after, the pixels a rounding apart. The
    counter videos' digits make a wrong box or flip a large difference."""
    import torch

    from engine.data import VideoDataset, VideoEvalTransform, VideoTransform
    from tests.data.conftest import write_csv

    csv = write_csv(tmp_path / "i.csv", [counter_videos[codec]] * 3)
    tf = VideoTransform(24, random_resize_scale=(0.3, 0.9)) if tf_kind == "train" else VideoEvalTransform(24)
    fused = VideoDataset([csv], frames_per_clip=5, frame_step=3, num_clips=num_clips, transform=tf.as_uint8())
    whole = VideoDataset([csv], frames_per_clip=5, frame_step=3, num_clips=num_clips, transform=tf.as_uint8())
    whole.decode_to_size = False
    for seed in range(6):
        a, b = fused[(seed % 3, seed)][0], whole[(seed % 3, seed)][0]
        a, b = (a, b) if num_clips > 1 else ([a], [b])
        for x, y in zip(a, b):
            assert x.dtype == torch.uint8 and x.shape == y.shape == (3, 5, 24, 24)
            d = (x.int() - y.int()).abs().float()
            assert d.max() <= 4 and d.mean() <= 1.5, (seed, d.max(), d.mean())
    # float clips: the transform's normalisation of the same pixels
    f32 = VideoDataset([csv], frames_per_clip=5, frame_step=3, transform=tf)[(1, 1)][0]
    u8 = VideoDataset([csv], frames_per_clip=5, frame_step=3, transform=tf.as_uint8())[(1, 1)][0]
    assert f32.dtype == torch.float32 and torch.equal(f32, tf.normalize(u8))


def test_decode_resized_boxes_per_frame_and_errors(counter_videos):
    with VideoReader(counter_videos["h264"]) as vr:
        H, W = vr.info.height, vr.info.width
        boxes = [(0, 0, H, W), (4, 5, 10, 12), (0, 0, H, W)]  # one box per frame; a repeated frame
        out = vr.decode_resized([3, 9, 3], (H, W), boxes, [False, True, False])
        assert out.shape == (3, 3, H, W) and out.is_contiguous()  # planar [3, T, S, S]
        assert read_counter(out.permute(1, 2, 3, 0).numpy()[[0, 2]]).tolist() == [3, 3]
        np.testing.assert_array_equal(out[:, 0], out[:, 2])
        # the middle frame: its own box, resized up and mirrored
        np.testing.assert_array_equal(out[:, 1], vr.decode_resized([9], (H, W), boxes[1], True)[:, 0])
        with pytest.raises(ValueError, match="not inside"):
            vr.decode_resized([1], (8, 8), (0, 0, H + 1, W))


def test_reader_decodes_on_one_thread_by_default(counter_videos):
    from engine.data import video
    from engine.data.video import _shared_decoder

    with VideoReader(counter_videos["vp9"], fast_open=False) as vr:
        assert vr._stream.codec_context.thread_count == 1
    with VideoReader(counter_videos["vp9"], threads=2, fast_open=False) as vr:
        assert vr._stream.codec_context.thread_count == 2
        assert read_counter(vr.decode([0, 5])).tolist() == [0, 5]
    # the MP4 path: the process's shared one-thread decoder, or the reader's own with threads (a decoder
    # with a live thread pool is never kept in the process: forking it hung DataLoader workers)
    with VideoReader(counter_videos["vp9"]) as vr:
        assert vr._track is not None and read_counter(vr.decode([0, 5])).tolist() == [0, 5]
        assert vr._own_decoder is None and _shared_decoder("vp9", None).thread_count == 1
    with VideoReader(counter_videos["vp9"], threads=2) as vr:
        assert vr._track is not None and read_counter(vr.decode([0, 5])).tolist() == [0, 5]
        assert vr._own_decoder.thread_count == 2
    assert vr._own_decoder is None
    assert all(cc.thread_count == 1 for cc in video._decoders.values())
