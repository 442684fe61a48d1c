"""Shared small inputs for tests/data: tiny videos in several codecs and a prepared shard set."""
import pytest

from engine.datagen import generate_videos, write_counter_video


@pytest.fixture(scope="package")
def vp9_csv(tmp_path_factory):
    """8 VP9 videos, 24 frames of 48x48 at 8 fps (labels i % 5)."""
    return generate_videos(tmp_path_factory.mktemp("vp9"), 8, num_frames=24, size=48, fps=8, codec="vp9", seed=2)


@pytest.fixture(scope="package")
def counter_videos(tmp_path_factory):
    """Counter videos (frame k shows k) per codec: 40 frames at 20 fps, 32x32, a keyframe every 10 frames;
    "vp9_sparse": the vp9 one re-encoded by prepare's transcode."""
    from engine.datagen.prepare import transcode

    d = tmp_path_factory.mktemp("counter")
    out = {c: write_counter_video(d / f"c_{c}.{'avi' if c == 'mjpeg' else 'mp4'}", 40, fps=20, size=32, codec=c,
                                  gop=10) for c in ("h264", "vp9", "mjpeg")}
    # as `python -m engine.datagen prepare` writes it: two temporal layers, every other frame unreferenced
    out["vp9_sparse"] = d / "c_vp9_sparse.mp4"
    out["vp9_sparse"].write_bytes(transcode(out["vp9"], "vp9", gop=10)[0])
    return out


def write_csv(path, paths, labels=None):
    path.write_text("".join(f"{p} {labels[i] if labels else i % 3}\n" for i, p in enumerate(paths)))
    return path
