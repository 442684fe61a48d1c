"""GOP-aware decoding (engine.data.video._packet_pass) against plain frame-by-frame decoding.

Run: .venv/bin/python -m pytest tests/data/test_video_decode.py -q
"""
import io

import numpy as np
import pytest

from engine.data import VideoReader, write_counter_video
from engine.data.synthetic import read_counter


@pytest.mark.parametrize("codec,gop", [("h264", None), ("h264", 6), ("vp9", 5), ("mjpeg", None)])
def test_gop_skipping_matches_full_decode(tmp_path, codec, gop):
    """Random index sets (sorted or not, repeats, near and far apart) decode to the same pixels either way."""
    p = write_counter_video(tmp_path / f"v.{'avi' if codec == 'mjpeg' else 'mp4'}", 90, fps=25, size=32, codec=codec,
                            gop=gop)
    rng = np.random.default_rng(1)
    for trial in range(6):
        idx = rng.choice(90, size=int(rng.integers(1, 10)), replace=True)
        thr = int(rng.choice([3, 20, 64]))
        with VideoReader(p, seek_threshold=thr) as fast, VideoReader(p, seek_threshold=thr, skip_gops=False) as slow:
            got = fast._packet_pass(np.unique(idx))  # the fast pass alone finds every frame (no fallback)
            assert sorted(got) == sorted(set(idx.tolist()))
            a, b = fast.decode(idx), slow.decode(idx)
        assert read_counter(a).tolist() == idx.tolist()
        np.testing.assert_array_equal(a, b)


def test_in_memory_reader_and_truncated_file(tmp_path):
    p = write_counter_video(tmp_path / "v.mp4", 30, fps=10, size=32, codec="h264")
    data = p.read_bytes()
    with VideoReader(io.BytesIO(data), name="mem.mp4") as vr:
        assert vr.path == "mem.mp4" and read_counter(vr.decode([29, 3])).tolist() == [29, 3]
    from engine.data import VideoDecodeError
    with pytest.raises(VideoDecodeError, match="mem-cut.mp4"):
        with VideoReader(io.BytesIO(data[: len(data) // 2]), name="mem-cut.mp4") as vr:
            vr.decode([0])


def test_sparse_refs_encoding_decodes_fewer_frames(tmp_path):
    """prepare's sparse_refs (H.264: every B-frame unreferenced): same frames back, fewer frames decoded."""
    from engine.data.prepare import transcode

    src = write_counter_video(tmp_path / "v.mp4", 64, fps=25, size=32, codec="h264")
    sparse = tmp_path / "sparse.mp4"
    sparse.write_bytes(transcode(src, "h264", sparse_refs=True)[0])
    idx = list(range(1, 62, 4))  # 16 frames 4 apart
    counts = {}
    for name, p in (("default", src), ("sparse", sparse)):
        with VideoReader(p) as vr:
            assert read_counter(vr.decode(idx)).tolist() == idx
            counts[name] = vr.frames_decoded
    assert counts["sparse"] < counts["default"] <= 62, counts
    with pytest.raises(ValueError, match="sparse_refs"):
        transcode(src, "vp9", sparse_refs=True)
