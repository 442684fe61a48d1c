"""kernels.yuv_resized_crop (C++) against yuv_resized_crop_ref over many shapes, and on decoded video."""
import numpy as np
import pytest
import torch

import kernels
from kernels import _ops

# (H, W, shift_x, shift_y): 4:2:0 even and odd sizes, 4:2:2, 4:4:0, 4:4:4, one pixel
FRAMES = [(240, 320, 1, 1), (17, 23, 1, 1), (31, 45, 1, 0), (12, 9, 0, 0), (40, 30, 0, 1), (1, 1, 1, 1)]


def _planes(H, W, sx, sy, seed=0, stride_pad=0):
    """Random planes (uniform over all levels: many out-of-gamut pixels, so the clamp is exercised);
    stride_pad > 0 gives rows padded like a decoder's line size (views of wider arrays)."""
    rng = np.random.default_rng(seed)

    def plane(h, w):
        return rng.integers(0, 256, (h, w + stride_pad), dtype=np.uint8)[:, :w]
    hc, wc = (H + sy) >> sy, (W + sx) >> sx
    return plane(H, W), plane(hc, wc), plane(hc, wc)


def _boxes(H, W):
    return [(0, 0, H, W), ((H - 1) // 3, (W - 1) // 4, max(1, H // 2), max(1, W // 2)), (H - 1, W - 1, 1, 1)]


def test_extension_has_the_function():
    assert hasattr(_ops.require_cpp("test"), "yuv_resized_crop")


@pytest.mark.parametrize("H,W,sx,sy", FRAMES)
@pytest.mark.parametrize("size", [(64, 64), (7, 11), (224, 224), (1, 1)])
@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("matrix,full", [("bt601", False), ("bt709", True)])
def test_matches_ref(H, W, sx, sy, size, flip, matrix, full):
    y, u, v = _planes(H, W, sx, sy, seed=H * W + sx, stride_pad=5)
    coeffs = kernels.yuv_coeffs(matrix, full)
    for box in _boxes(H, W):
        want = kernels.yuv_resized_crop_ref(y, u, v, box, size, coeffs=coeffs, flip=flip)
        with kernels.backend("cpp"):
            got = kernels.yuv_resized_crop(y, u, v, box, size, coeffs=coeffs, flip=flip)
        assert got.shape == (3, *size) and got.dtype == torch.uint8
        d = (got.int() - want.int()).abs()
        # the same float math in another order: a value within float error of .5 may round either way
        assert d.max() <= 1, (box, d.max())
        assert (d > 0).float().mean() < 1e-3, (box, (d > 0).float().mean())


def test_identity_box_is_the_conversion_alone():
    """A box the output's size: no resize, so each pixel is the rounded, clamped matrix product."""
    y, u, v = _planes(6, 8, 1, 1)
    coeffs = kernels.yuv_coeffs("bt601", False)
    got = kernels.yuv_resized_crop(y, u, v, (0, 0, 6, 8), (6, 8), coeffs=coeffs)
    yo, ys, rv, gu, gv, bu = coeffs
    U, V = (c.repeat(2, 0).repeat(2, 1).astype(np.float64) - 128 for c in (u, v))
    L = ys * (y.astype(np.float64) - yo)
    rgb = np.stack([L + rv * V, L - gu * U - gv * V, L + bu * U])
    want = np.clip(np.floor(rgb + 0.5), 0, 255)
    assert np.abs(got.numpy().astype(np.float64) - want).max() <= 1


def test_grey_and_known_colours():
    """Limited-range BT.601: Y=16 is black, Y=235 white, (Y, U, V) = (81, 90, 240) pure red."""
    def one(yv, uv, vv, full=False):
        planes = (np.full((2, 2), yv, np.uint8), np.full((1, 1), uv, np.uint8), np.full((1, 1), vv, np.uint8))
        return kernels.yuv_resized_crop(*planes, (0, 0, 2, 2), (2, 2),
                                        coeffs=kernels.yuv_coeffs("bt601", full))[:, 0, 0].tolist()
    assert one(16, 128, 128) == [0, 0, 0]
    assert one(235, 128, 128) == [255, 255, 255]
    assert one(0, 128, 128, full=True) == [0, 0, 0]
    r, g, b = one(81, 90, 240)
    assert r >= 253 and g <= 2 and b <= 2


def test_flip_is_the_mirror():
    y, u, v = _planes(30, 40, 1, 1, seed=3)
    a = kernels.yuv_resized_crop(y, u, v, (2, 3, 20, 25), (9, 13))
    b = kernels.yuv_resized_crop(y, u, v, (2, 3, 20, 25), (9, 13), flip=True)
    assert torch.equal(a.flip(-1), b)


def test_writes_into_a_clip_and_leaves_other_frames():
    y, u, v = _planes(24, 32, 1, 1, seed=4)
    clip = torch.full((3, 4, 8, 8), 7, dtype=torch.uint8)
    view = kernels.yuv_resized_crop(y, u, v, (0, 0, 24, 32), (8, 8), out=clip, t=2)
    assert torch.equal(clip[:, 2], kernels.yuv_resized_crop_ref(y, u, v, (0, 0, 24, 32), (8, 8)))
    assert view.data_ptr() == clip[:, 2].data_ptr()
    assert (clip[:, [0, 1, 3]] == 7).all()
    # a clip with strided columns (a channels-last buffer seen as [3, T, H, W])
    cl = torch.zeros(4, 8, 8, 3, dtype=torch.uint8).permute(3, 0, 1, 2)
    kernels.yuv_resized_crop(y, u, v, (0, 0, 24, 32), (8, 8), out=cl, t=1)
    assert torch.equal(cl[:, 1], clip[:, 2])


def test_tensor_planes_and_non_contiguous():
    y, u, v = _planes(20, 26, 1, 1, seed=5)
    want = kernels.yuv_resized_crop(y, u, v, (1, 1, 15, 20), (10, 10))
    t = [torch.from_numpy(np.ascontiguousarray(p)) for p in (y, u, v)]
    assert torch.equal(kernels.yuv_resized_crop(*t, (1, 1, 15, 20), (10, 10)), want)
    # columns with a stride (a transposed view) are copied first: same result
    tT = [p.t().contiguous().t() for p in t]
    assert not tT[0].is_contiguous()
    assert torch.equal(kernels.yuv_resized_crop(*tT, (1, 1, 15, 20), (10, 10)), want)


def test_torch_backend_is_the_reference():
    y, u, v = _planes(20, 26, 1, 1, seed=6)
    with kernels.backend("torch"):
        got = kernels.yuv_resized_crop(y, u, v, (0, 0, 20, 26), (5, 7), flip=True)
    assert torch.equal(got, kernels.yuv_resized_crop_ref(y, u, v, (0, 0, 20, 26), (5, 7), flip=True))


@pytest.mark.parametrize("bk", ["cpp", "torch"])
def test_bad_arguments_name_the_problem(bk):
    y, u, v = _planes(20, 26, 1, 1)
    with kernels.backend(bk):
        with pytest.raises(ValueError, match="not inside"):
            kernels.yuv_resized_crop(y, u, v, (10, 0, 11, 5), (4, 4))
        with pytest.raises(ValueError, match="chroma plane"):
            kernels.yuv_resized_crop(y, u[:, :5], v[:, :5], (0, 0, 4, 4), (4, 4))
        with pytest.raises(ValueError, match="u is"):
            kernels.yuv_resized_crop(y, u, v[:5], (0, 0, 4, 4), (4, 4))
        with pytest.raises(ValueError, match="2-D uint8"):
            kernels.yuv_resized_crop(y.astype(np.float32), u, v, (0, 0, 4, 4), (4, 4))
        with pytest.raises(ValueError, match="size"):
            kernels.yuv_resized_crop(y, u, v, (0, 0, 4, 4), (0, 4))
        with pytest.raises(ValueError, match="out must be"):
            kernels.yuv_resized_crop(y, u, v, (0, 0, 4, 4), (4, 4), out=torch.zeros(3, 1, 5, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="colour matrix"):
        kernels.yuv_coeffs("bt999")


class _Plane(np.ndarray):
    """A decoder plane as PyAV hands it out: a flat buffer with its height, width and line size."""


def _plane(rows, width, line_size, value):
    p = np.full(rows * line_size, value, np.uint8).view(_Plane)
    p.height, p.width, p.line_size = rows, width, line_size
    return p


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_decoder_planes_with_a_line_size(backend):
    """Flat planes with explicit geometry (PyAV's) give what the same pixels as 2-D arrays give, on both
    backends; a plane shorter than its geometry or a box outside the frame is refused."""
    if backend == "cpp" and not kernels._ops.cpp_available():
        pytest.skip("the C++ extension is not built (kernels._C)")
    rng = np.random.default_rng(0)
    y, u, v = _plane(10, 12, 16, 0), _plane(5, 6, 8, 0), _plane(5, 6, 8, 0)
    for p in (y, u, v):
        p[:] = rng.integers(0, 256, p.size, dtype=np.uint8)
    arrays = [p.view(np.ndarray).reshape(p.height, p.line_size)[:, :p.width] for p in (y, u, v)]
    with kernels.backend(backend):
        got = kernels.yuv_resized_crop(y, u, v, (1, 2, 8, 9), (4, 5), flip=True)
        assert torch.equal(got, kernels.yuv_resized_crop_ref(*arrays, (1, 2, 8, 9), (4, 5), flip=True))
        with pytest.raises(ValueError, match="not inside"):
            kernels.yuv_resized_crop(y, u, v, (0, 0, 11, 12), (4, 4))
    if backend == "cpp":
        short = _plane(10, 12, 16, 0)[:100].view(_Plane)
        short.height, short.width, short.line_size = 10, 12, 16
        with kernels.backend("cpp"), pytest.raises(RuntimeError, match="fewer than"):
            kernels.yuv_resized_crop(short, u, v, (0, 0, 10, 12), (4, 4))


@pytest.mark.parametrize("codec", ["h264", "vp9", "mjpeg"])
def test_decoded_frames_match_swscale_then_resize(tmp_path, codec):
    """On real decoded frames: the fused path vs swscale's RGB + the transforms' uint8 resize (what
    VideoReader.decode + VideoTransform compute). swscale's fixed-point matrix reads ~1 level darker than the exact BT.601 one, and
    both round: a few levels apart at most, far below the codec's own error (~3.6 levels RMS at 37 dB)."""
    from engine.datagen.synthetic import CODECS, render_clip, write_video
    from engine.data.transforms import resize_planar
    from engine.data.video import VideoReader

    frames, _ = render_clip(1, np.random.default_rng(3), num_frames=12, size=160, fps=30)
    p = write_video(tmp_path / f"a{CODECS[codec][2]}", np.ascontiguousarray(frames[:, 20:140]), fps=30, codec=codec)
    idx = [0, 3, 7, 7, 11]
    with VideoReader(p) as vr:
        rgb = vr.decode(idx)
        H, W = rgb.shape[1:3]
        for box, size, flip in [((0, 0, H, W), (64, 64), False), ((5, 9, 70, 101), (64, 64), True),
                                ((5, 9, 70, 101), (224, 224), False), ((1, 2, H - 1, W - 3), (H - 1, W - 3), False)]:
            got = vr.decode_resized(idx, size, box, flip)
            top, left, h, w = box
            want = resize_planar(rgb[:, top:top + h, left:left + w], size, flip)
            d = (got.int() - want.int()).abs().float()
            assert got.shape == (3, len(idx), *size)
            assert d.max() <= 4 and d.mean() <= 1.5 and (d > 2).float().mean() < 0.02, (box, d.max(), d.mean())


def test_av_frames_every_path():
    """engine.data.video._resized_crop_into on PyAV frames: the C++ function on the planes, the torch
    reference when that backend is forced (planes viewed past their padded line size), and the RGB path
    for formats that are not planar 8-bit YUV (here rgb24 and nv12)."""
    import av

    from engine.data.transforms import resize_planar
    from engine.data.video import _resized_crop_into, _to_rgb

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:30, 0:44]  # smooth content: noise would be mostly out of gamut after subsampling
    rgb = np.clip(np.stack([xx * 5, yy * 7, 200 - xx * 3], -1) + rng.normal(0, 4, (30, 44, 3)), 0, 255).astype(np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    assert frame.planes[0].line_size > frame.planes[0].width  # padded rows, as a decoder's
    box, size = (3, 5, 20, 31), (12, 9)
    out = torch.zeros(3, 4, *size, dtype=torch.uint8)
    _resized_crop_into(frame, box, True, out, 1)
    with kernels.backend("torch"):
        _resized_crop_into(frame, box, True, out, 2)
    assert (out[:, 1].int() - out[:, 2].int()).abs().max() <= 1
    for fmt in ("rgb24", "nv12"):
        other = frame.reformat(format=fmt)
        _resized_crop_into(other, box, True, out, 3)
        top, left, h, w = box
        want = resize_planar(_to_rgb(other)[None, top:top + h, left:left + w], size, True)[:, 0]
        assert torch.equal(out[:, 3], want), fmt
        assert (out[:, 3].int() - out[:, 1].int()).abs().float().mean() < 3  # the same picture


def _frames_with_padded_rows(n, H=30, W=44, seed=7):
    """n decoded-like yuv420p PyAV frames (rows padded to the line size), smooth content with noise."""
    import av

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    frames = []
    for i in range(n):
        rgb = np.stack([xx * 5 + i, yy * 7, 200 - xx * 3], -1) + rng.normal(0, 4, (H, W, 3))
        frames.append(av.VideoFrame.from_ndarray(np.clip(rgb, 0, 255).astype(np.uint8), format="rgb24")
                      .reformat(format="yuv420p"))
    return frames


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_frames_of_a_clip_in_one_call_match_one_call_per_frame(backend):
    """yuv_resized_crop_frames (one call per clip, a box and a flip per frame, from out[:, t0]) writes
    exactly what yuv_resized_crop writes frame by frame, and leaves the other frames of out alone."""
    if backend == "cpp" and not kernels._ops.cpp_available():
        pytest.skip("the C++ extension is not built (kernels._C)")
    frames = _frames_with_padded_rows(5)
    boxes = [(0, 0, 30, 44), (3, 5, 20, 31), (29, 43, 1, 1), (1, 2, 28, 40), (10, 0, 20, 44)]
    flips = [False, True, False, True, True]
    coeffs = kernels.yuv_coeffs("bt709", False)
    with kernels.backend(backend):
        one_call = torch.full((3, 7, 13, 9), 77, dtype=torch.uint8)
        kernels.yuv_resized_crop_frames([f.planes for f in frames], boxes, flips, coeffs=coeffs, out=one_call, t0=1)
        for t, (f, box, flip) in enumerate(zip(frames, boxes, flips)):
            want = kernels.yuv_resized_crop(*f.planes, box, (13, 9), coeffs=coeffs, flip=flip)
            assert torch.equal(one_call[:, 1 + t], want), t
    assert (one_call[:, [0, 6]] == 77).all()


def test_frames_of_a_clip_bad_arguments_name_the_problem():
    frames = _frames_with_padded_rows(3)
    planes = [f.planes for f in frames]
    out = torch.zeros(3, 3, 8, 8, dtype=torch.uint8)
    ok = [(0, 0, 30, 44)] * 3
    with pytest.raises(ValueError, match=r"not inside the 30x44 frame"):
        kernels.yuv_resized_crop_frames(planes, ok[:2] + [(10, 0, 21, 44)], False, coeffs=kernels.yuv_coeffs(), out=out)
    with pytest.raises(ValueError, match="out must be"):
        kernels.yuv_resized_crop_frames(planes, ok, False, coeffs=kernels.yuv_coeffs(), out=out, t0=1)
    other = _frames_with_padded_rows(1, H=32)[0]
    with pytest.raises(ValueError, match="several sizes"):
        kernels.yuv_resized_crop_frames(planes[:2] + [other.planes], ok, False, coeffs=kernels.yuv_coeffs(), out=out)


@pytest.mark.parametrize("channel_dim,shape", [(-4, (2, 3, 4, 5, 6)), (-4, (3, 1, 7, 9)), (-3, (2, 3, 5, 7)),
                                               (-1, (4, 5, 3))])
def test_normalize_u8_is_the_reference_bitwise(channel_dim, shape):
    """One pass from uint8 (C++) gives exactly the floats of a conversion, a multiply and an add; strided
    inputs and outputs give the same."""
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(len(shape)))
    scale_C = torch.tensor([1 / (255 * 0.229), 1 / (255 * 0.224), 1 / (255 * 0.225)])
    bias_C = -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225])
    want = kernels.normalize_u8_ref(x, scale_C, bias_C, channel_dim)
    assert want.abs().max() > 2  # the values span the normalised range
    for backend in ["cpp", "torch"] if kernels._ops.cpp_available() else ["torch"]:
        with kernels.backend(backend):
            assert torch.equal(kernels.normalize_u8(x, scale_C, bias_C, channel_dim=channel_dim), want), backend
    strided = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not strided.is_contiguous()
    assert torch.equal(kernels.normalize_u8(strided, scale_C, bias_C, channel_dim=channel_dim), want)
    out = torch.zeros(shape[::-1]).permute(*reversed(range(len(shape))))
    assert kernels.normalize_u8(x, scale_C, bias_C, channel_dim=channel_dim, out=out) is out
    assert torch.equal(out, want)


def test_normalize_u8_bad_arguments_name_the_problem():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    s = torch.ones(3)
    with pytest.raises(ValueError, match="3 channels at dim -4"):
        kernels.normalize_u8(x, s, s, channel_dim=-4)
    with pytest.raises(ValueError, match="must be uint8"):
        kernels.normalize_u8(x.float(), s, s, channel_dim=-3)
    with pytest.raises(ValueError, match="out must be float32"):
        kernels.normalize_u8(x, s, s, channel_dim=-3, out=torch.empty(2, 3, 4, 5))


_BASELINE_SCRIPT = """
import sys, numpy as np, torch, kernels
from kernels import _ops
from tests.kernels.test_yuv_resize import FRAMES, _boxes, _planes
outs = []
for i, (H, W, sx, sy) in enumerate(FRAMES):
    Y, U, V = _planes(H, W, sx, sy, seed=i)
    for box in _boxes(H, W):
        for flip in (False, True):
            outs.append(kernels.yuv_resized_crop(Y, U, V, box, (13, 21), coeffs=kernels.yuv_coeffs(), flip=flip))
x = torch.randint(0, 256, (2, 3, 5, 37), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
outs.append(kernels.normalize_u8(x, torch.tensor([0.5, 1 / 3, 0.7]), torch.tensor([-1.0, 0.25, 2.0]), channel_dim=-3))
torch.save({"isa": _ops.require_cpp("test").yuv_resize_isa(), "outs": outs}, sys.argv[1])
"""


def test_baseline_isa_gives_the_same_bytes_as_avx2(tmp_path):
    """The row loops' baseline build (what a CPU without AVX2 runs; JEPA_CPU_BASELINE=1 picks it on any
    CPU) gives exactly the bytes and floats of the build this CPU picks by itself."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[2]
    got = {}
    for isa, extra in (("native", {}), ("baseline", {"JEPA_CPU_BASELINE": "1"})):
        env = {k: v for k, v in os.environ.items() if k != "JEPA_CPU_BASELINE"}
        subprocess.run([sys.executable, "-c", _BASELINE_SCRIPT, str(tmp_path / f"{isa}.pt")], cwd=repo,
                       env={**env, **extra}, check=True, timeout=300)
        got[isa] = torch.load(tmp_path / f"{isa}.pt")
    assert got["baseline"]["isa"] == "baseline"
    with open("/proc/cpuinfo") as f:
        has_avx2 = " avx2" in f.read()
    assert got["native"]["isa"] == ("avx2" if has_avx2 else "baseline")
    assert len(got["native"]["outs"]) == len(got["baseline"]["outs"]) > 30
    for a, b in zip(got["native"]["outs"], got["baseline"]["outs"]):
        assert a.dtype == b.dtype and torch.equal(a, b)
