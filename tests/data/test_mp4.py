"""engine.data.mp4: an MP4's sample table read from its boxes equals what libavformat demuxes, and the
reader built on it (VideoReader's MP4 path) falls back to PyAV for anything it does not read."""
import io
import os
import threading

import av
import numpy as np
import pytest

from engine.data import VideoDecodeError, VideoReader
from engine.data.mp4 import parse_mp4
from engine.datagen import read_counter, write_counter_video


def _remux(src, dst, options=None):
    """The same packets in another MP4 layout (e.g. moov first, or fragmented): the bytes of dst."""
    with av.open(str(src)) as i, av.open(str(dst), "w", format="mp4", options=options or {}) as o:
        s = i.streams.video[0]
        out = o.add_stream_from_template(s)
        for p in i.demux(s):
            if p.dts is None:
                continue
            p.stream = out
            o.mux(p)
    return dst.read_bytes()


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from engine.datagen.prepare import transcode

    d = tmp_path_factory.mktemp("mp4")
    out = {"h264": write_counter_video(d / "h.mp4", 50, fps=25, size=32, codec="h264"),  # B-frames, one GOP
           "h264_gop7": write_counter_video(d / "g.mp4", 50, fps=25, size=32, codec="h264", gop=7),
           "vp9": write_counter_video(d / "v.mp4", 50, fps=25, size=32, codec="vp9", gop=9)}
    for c in ("h264", "vp9"):
        out[f"{c}_sparse"] = d / f"{c}_sparse.mp4"
        out[f"{c}_sparse"].write_bytes(transcode(out[c], c)[0])
    out["faststart"] = d / "fs.mp4"
    _remux(out["h264"], out["faststart"], {"movflags": "+faststart"})
    return out


@pytest.mark.parametrize("name", ["h264", "h264_gop7", "vp9", "h264_sparse", "vp9_sparse", "faststart"])
def test_sample_table_equals_libavformat(videos, name):
    data = videos[name].read_bytes()
    track = parse_mp4(data)
    assert track is not None
    with av.open(str(videos[name])) as c:
        s = c.streams.video[0]
        packets = [p for p in c.demux(s) if p.size]
        start = s.start_time or 0
        assert (track.width, track.height, track.num_frames) == (s.width, s.height, s.frames)
        assert track.fps == pytest.approx(float(s.average_rate), rel=1e-6)
        for i, p in enumerate(packets):
            assert track.sample(i) == bytes(p)
            assert track.pts_T[i] == p.pts - start and bool(track.keyframe_T[i]) == p.is_keyframe
    # display order: frame k of the video is the sample with the k-th smallest time
    assert sorted(track.display_T.tolist()) == list(range(track.num_frames))
    assert np.all(np.diff(track.pts_T[np.argsort(track.display_T)]) > 0)


def test_what_it_does_not_read_is_none(videos, tmp_path):
    h264 = videos["h264"].read_bytes()
    assert parse_mp4(b"") is None and parse_mp4(b"\0" * 100) is None
    assert parse_mp4(h264[: len(h264) // 2]) is None  # moov at the end: cut off
    fs = videos["faststart"].read_bytes()
    assert parse_mp4(fs[: len(fs) * 2 // 3]) is None  # samples past the end
    frag = _remux(videos["h264"], tmp_path / "frag.mp4", {"movflags": "frag_keyframe+empty_moov"})
    assert parse_mp4(frag) is None
    avi = write_counter_video(tmp_path / "m.avi", 10, fps=25, size=32, codec="mjpeg").read_bytes()
    assert parse_mp4(avi) is None


@pytest.mark.parametrize("name", ["h264", "h264_gop7", "vp9", "h264_sparse", "vp9_sparse", "faststart"])
def test_reader_on_the_sample_table_matches_pyav(videos, name):
    """Every clip phase, near and far indices, repeats: the same pixels and the same count of decoded
    frames as the PyAV path, for a file path and for an in-memory file (a shard member)."""
    p = videos[name]
    rng = np.random.default_rng(3)
    sets = [list(range(s, 50, 4)) for s in range(4)] + [rng.choice(50, 7).tolist() for _ in range(4)]
    for idx in sets:
        with VideoReader(p) as fast, VideoReader(p, fast_open=False) as ref, \
                VideoReader(io.BytesIO(p.read_bytes()), name="mem.mp4") as mem:
            assert fast._track is not None and mem._track is not None
            a, b, m = fast.decode(idx), ref.decode(idx), mem.decode(idx)
            assert fast._track is not None  # no fallback was needed
            assert fast.frames_decoded == ref.frames_decoded
        assert read_counter(a).tolist() == list(idx)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(m, b)


def test_decoders_are_shared_per_configuration(videos):
    from engine.data import video

    for name in ("vp9", "h264", "vp9_sparse", "h264_gop7", "vp9"):
        with VideoReader(videos[name]) as vr:
            assert read_counter(vr.decode([1, 30])).tolist() == [1, 30]
    keys = [k for k in video._decoders if k[:2] == (os.getpid(), threading.get_ident())]
    assert {k[2] for k in keys} >= {"vp9", "h264"}
    assert len([k for k in keys if k[2] == "vp9"]) == 1  # both VP9 files: one decoder

    # another thread gets its own decoder: a decoder is never used by two threads at once
    seen = []
    th = threading.Thread(target=lambda: seen.append(read_counter(VideoReader(videos["vp9"]).decode([3])).tolist()))
    th.start()
    th.join()
    assert seen == [[3]]
    assert len([k for k in video._decoders if k[0] == os.getpid() and k[2] == "vp9"]) == 2


def test_corrupt_samples_fall_back_to_pyav_and_fail_clearly(videos, tmp_path):
    """A file whose boxes parse but whose frame data are garbage: the sample-table pass fails, the reader
    reopens it with PyAV, whose error names the file (the loader then skips and counts it)."""
    data = bytearray(videos["h264"].read_bytes())
    track = parse_mp4(bytes(data))
    for i in range(track.num_frames):
        o, n = int(track.offset_T[i]), int(track.size_T[i])
        data[o:o + n] = bytes(np.random.default_rng(i).integers(0, 256, n, dtype=np.uint8))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        with VideoReader(bad) as vr:
            assert vr._track is not None
            vr.decode([0, 10, 20])
    # the shared decoder still works for the next (good) file
    with VideoReader(videos["h264"]) as vr:
        assert read_counter(vr.decode([0, 10, 20])).tolist() == [0, 10, 20]


def test_sample_description_size_that_lies_falls_back(videos, tmp_path):
    """stsd says 30 pixels wide, the coded frames are 32: the table pass notices on the first frame and
    the file is read the libavformat way from then on: the same info and pixels as a reader that never
    used the table (libavformat keeps the description's width, and its frames follow it)."""
    data = bytearray(videos["h264"].read_bytes())
    at = bytes(data).index(b"avc1", bytes(data).index(b"stsd")) + 4 + 24  # VisualSampleEntry width
    assert int.from_bytes(data[at:at + 2], "big") == 32
    data[at:at + 2] = (30).to_bytes(2, "big")
    p = tmp_path / "lies.mp4"
    p.write_bytes(bytes(data))
    with VideoReader(p) as vr, VideoReader(p, fast_open=False) as ref:
        assert vr._track is not None and vr.info.width == 30
        got = vr.decode([2, 17])
        assert vr._track is None and vr.info == ref.info
        np.testing.assert_array_equal(got, ref.decode([2, 17]))
