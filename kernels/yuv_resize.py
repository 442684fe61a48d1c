"""Resized crop of a planar YUV frame straight to RGB: colour conversion, crop, bilinear resize, flip in one pass.

    coeffs = kernels.yuv_coeffs("bt601", full_range=False)          # the frame's colour matrix and range
    rgb_3HW = kernels.yuv_resized_crop(y_HW, u_hw, v_hw, box=(top, left, h, w), size=(64, 64), coeffs=coeffs)
    kernels.yuv_resized_crop(y, u, v, box, size, coeffs=coeffs, flip=True, out=clip_3THW, t=5)   # into a clip
    kernels.yuv_resized_crop_frames([f.planes for f in frames], boxes_T4, flips_T, coeffs=coeffs, out=clip_3THW)
    x_B3THW = kernels.normalize_u8(u8_B3THW, scale_C, bias_C, channel_dim=-4)    # then floats, one pass

A video decoder hands out planar YUV frames (Y full size, U and V subsampled by 2 in x and/or y). The
training clip needs a small crop of each, resized (64 px or 224 px) and in RGB. Converting the whole
frame to RGB first, then cropping and resizing, writes and reads every pixel three times; this op
reads only the pixels of the crop the output needs and writes only the output. Nothing is full size.

Semantics (`yuv_resized_crop_ref` is the definition): each luma position takes its nearest chroma
sample (as swscale's unscaled YUV->RGB conversion does); the box (top, left, h, w) of each plane is
resized to `size` bilinearly with align_corners=False and no antialias (F.interpolate), optionally
flipped; the 3x3 matrix + offsets of `yuv_coeffs` turns the resized planes into RGB, rounded to the
nearest level and clamped to [0, 255]. The matrix is affine and the resize linear, so this equals
converting first and resizing after (the order of the old decode path: swscale RGB, then torch's
uint8 resize) except for rounding and where the clamp would cut an out-of-gamut neighbour first
(tests/kernels/test_yuv_resize.py measures both on decoded video).

The decode path calls it once per clip (yuv_resized_crop_frames: a call per frame cost as much in
Python as the conversion of a 224 px frame). Its last step, where a batch's consumer wants floats,
is normalize_u8: x * scale[c] + bias[c] from uint8 in one pass (a conversion, a multiply and an add are
three passes over the float batch, four times the uint8 one's size).

Backends (kernels/_registry.py): cpp (csrc/cpu/yuv_resize.cpp, a pybind11 function on buffers, so a
PyAV plane goes in without becoming a tensor) and torch (the reference). yuv_resized_crop is CPU only: on a
GPU, DALI decodes and resizes (engine/data/dali.py); this is the decode path of CPU data-loader workers.
normalize_u8 runs anywhere (torch's three passes where the C++ one does not apply).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kernels import _ops, _registry

# (Kr, Kb) of the colour matrices a decoder may tag its frames with; anything else is read as BT.601,
# as swscale does for untagged frames
MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593),
            "smpte240m": (0.212, 0.087), "fcc": (0.30, 0.11)}


def yuv_coeffs(matrix: str = "bt601", full_range: bool = False) -> tuple[float, ...]:
    """(y_offset, y_scale, r_v, g_u, g_v, b_u): R = y_scale*(Y - y_offset) + r_v*(V - 128),
    G = y_scale*(Y - y_offset) - g_u*(U - 128) - g_v*(V - 128), B = y_scale*(Y - y_offset) + b_u*(U - 128).

    Limited ("TV") range: Y in [16, 235], chroma in [16, 240]; full ("PC", JPEG) range: all of [0, 255].
    """
    if matrix not in MATRICES:
        raise ValueError(f"unknown colour matrix {matrix!r}; expected one of {sorted(MATRICES)}")
    kr, kb = MATRICES[matrix]
    kg = 1.0 - kr - kb
    y_off, y_scale, c_scale = (0.0, 1.0, 1.0) if full_range else (16.0, 255.0 / 219.0, 255.0 / 224.0)
    return (y_off, y_scale, 2 * (1 - kr) * c_scale, 2 * kb * (1 - kb) / kg * c_scale,
            2 * kr * (1 - kr) / kg * c_scale, 2 * (1 - kb) * c_scale)


def _shifts(y_HW, u_hw) -> tuple[int, int]:
    """Chroma subsampling (shift_x, shift_y) from the plane sizes: 4:2:0 (1, 1), 4:2:2 (1, 0), 4:4:4 (0, 0)."""
    (H, W), (h, w) = y_HW.shape, u_hw.shape
    shifts = []
    for full, sub, name in ((W, w, "columns"), (H, h, "rows")):
        if sub == full:
            shifts.append(0)
        elif sub == (full + 1) // 2:
            shifts.append(1)
        else:
            raise ValueError(f"yuv_resized_crop: chroma plane has {sub} {name} for {full} luma {name}: "
                             f"not 4:2:0, 4:2:2, 4:4:0 or 4:4:4")
    return shifts[0], shifts[1]


def _check(y_HW, u_hw, v_hw, box, size):
    for name, p in (("y", y_HW), ("u", u_hw), ("v", v_hw)):
        if p.ndim != 2 or p.dtype not in (np.uint8, torch.uint8):
            raise ValueError(f"yuv_resized_crop: plane {name} must be 2-D uint8, got {p.dtype} {tuple(p.shape)}")
    if tuple(u_hw.shape) != tuple(v_hw.shape):
        raise ValueError(f"yuv_resized_crop: u is {tuple(u_hw.shape)} but v is {tuple(v_hw.shape)}")
    top, left, h, w = (int(b) for b in box)
    H, W = y_HW.shape
    if h <= 0 or w <= 0 or top < 0 or left < 0 or top + h > H or left + w > W:
        raise ValueError(f"yuv_resized_crop: box (top={top}, left={left}, h={h}, w={w}) is not inside the {H}x{W} frame")
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"yuv_resized_crop: size must be (height, width) > 0, got {size}")
    return (top, left, h, w), _shifts(y_HW, u_hw)


def yuv_resized_crop_ref(y_HW, u_hw, v_hw, box, size, *, coeffs=None, flip: bool = False) -> torch.Tensor:
    """Plain-torch definition: uint8 [3, size[0], size[1]].

    Equivalent pytorch code::

        U = u.repeat_interleave(1 << sy, 0).repeat_interleave(1 << sx, 1)[:H, :W]    # nearest chroma (V too)
        yuv = torch.stack([Y, U, V])[:, top:top+h, left:left+w].float()
        yuv = F.interpolate(yuv[None], size, mode="bilinear", align_corners=False)[0]
        rgb = matrix @ (yuv - [y_off, 128, 128])
        out = (rgb.flip(-1) if flip else rgb).add(0.5).floor().clamp(0, 255).to(torch.uint8)
    """
    (top, left, h, w), (sx, sy) = _check(y_HW, u_hw, v_hw, box, size)
    y_off, y_scale, r_v, g_u, g_v, b_u = coeffs if coeffs is not None else yuv_coeffs()
    Y, U, V = (torch.as_tensor(np.asarray(p) if not isinstance(p, torch.Tensor) else p).float() for p in (y_HW, u_hw, v_hw))
    H, W = Y.shape
    U, V = (c.repeat_interleave(1 << sy, 0).repeat_interleave(1 << sx, 1)[:H, :W] for c in (U, V))
    yuv = torch.stack([Y, U, V])[:, top:top + h, left:left + w]
    Y, U, V = F.interpolate(yuv[None], size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)[0]
    L, U, V = y_scale * (Y - y_off), U - 128.0, V - 128.0
    rgb = torch.stack([L + r_v * V, L - g_u * U - g_v * V, L + b_u * U])
    if flip:
        rgb = rgb.flip(-1)
    return rgb.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)


def _yuv_cpp(ys, us, vs, geometry, shifts, coeffs, boxes, flips, out, t0) -> None:
    _ops.require_cpp("yuv_resized_crop").yuv_resized_crop(ys, us, vs, geometry, *shifts, list(coeffs), boxes, flips,
                                                          out, t0)


def _yuv_torch(ys, us, vs, geometry, shifts, coeffs, boxes, flips, out, t0) -> None:
    for i, planes in enumerate(zip(ys, us, vs)):
        if geometry[6 * i:6 * i + 6] != [0] * 6:   # decoder planes: flat buffers with a line size
            planes = (np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width] for p in planes)
        out[:, t0 + i] = yuv_resized_crop_ref(*planes, boxes[4 * i:4 * i + 4], tuple(out.shape[2:]), coeffs=coeffs,
                                              flip=flips[i])


# Both impls take a clip's frames (plane lists, 6 geometry values, 4 box values and a flip per frame) and
# write them into out[:, t0 + i]; yuv_resized_crop / yuv_resized_crop_frames below check the call.
_registry.register("yuv_resized_crop", "torch", _yuv_torch)
_registry.register("yuv_resized_crop", "cpp", _yuv_cpp, **_registry.CPP)


class _Shape:
    """The (rows, columns) of a decoder plane, for the checks arrays get."""

    def __init__(self, plane):
        self.shape, self.ndim, self.dtype = (int(plane.height), int(plane.width)), 2, np.uint8


def _as_plane(p) -> np.ndarray:
    a = p.numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
    return a if a.strides[1] == 1 else np.ascontiguousarray(a)


def yuv_resized_crop(y_HW, u_hw, v_hw, box, size, *, coeffs=None, flip: bool = False,
                     out: torch.Tensor | None = None, t: int = 0) -> torch.Tensor:
    """uint8 [3, size[0], size[1]]: the box of a planar YUV frame (numpy arrays or CPU uint8 tensors, 2-D;
    rows may be strided), resized, in RGB. With `out` (uint8 [3, T, size[0], size[1]], any strides) the
    result is written into out[:, t] and that view is returned. coeffs: `yuv_coeffs(...)` (default BT.601,
    limited range)."""
    coeffs = tuple(float(c) for c in (coeffs if coeffs is not None else yuv_coeffs()))
    if len(coeffs) != 6:
        raise ValueError(f"yuv_resized_crop: coeffs needs 6 values, got {len(coeffs)}")
    if out is not None and (out.dtype != torch.uint8 or out.dim() != 4 or out.shape[0] != 3
                            or tuple(out.shape[2:]) != tuple(size)):
        raise ValueError(f"yuv_resized_crop: out must be uint8 [3, T, {size[0]}, {size[1]}], got "
                         f"{out.dtype} {tuple(out.shape)}")
    if hasattr(y_HW, "line_size"):   # PyAV planes: buffers go in as they are, no copy, no tensor wrapping
        planes = (y_HW, u_hw, v_hw)
        geometry = _geometry(y_HW, u_hw)
        box, shifts = _check(*(_Shape(p) for p in planes), box, size)
    else:
        box, shifts = _check(y_HW, u_hw, v_hw, box, size)
        planes, geometry = tuple(_as_plane(p) for p in (y_HW, u_hw, v_hw)), [0] * 6
    dst = out if out is not None else torch.empty(3, 1, int(size[0]), int(size[1]), dtype=torch.uint8)
    t = t if out is not None else 0
    _registry.pick("yuv_resized_crop", torch.device("cpu")).fn(*([p] for p in planes), geometry, shifts, coeffs,
                                                                list(box), [bool(flip)], dst, t)
    return dst[:, t]


def _geometry(y, u) -> list[int]:
    return [int(x) for p in (y, u) for x in (p.height, p.width, p.line_size)]


def yuv_resized_crop_frames(frames, boxes_T4, flips_T, *, coeffs, out: torch.Tensor, t0: int = 0) -> None:
    """yuv_resized_crop for a clip's decoded frames in one call: frame i's (y, u, v) PyAV planes
    (frames[i], flat buffers with a line size; all frames of one size), its box boxes_T4[i] and flip
    flips_T[i] -> out[:, t0 + i]. What a loader worker calls once per clip: the arguments are checked
    once, each frame's buffers against its geometry in C++."""
    T = len(frames)
    boxes_T4 = np.asarray(boxes_T4, dtype=np.int64).reshape(T, 4)
    if out.dtype != torch.uint8 or out.dim() != 4 or out.shape[0] != 3 or not 0 <= t0 <= out.shape[1] - T:
        raise ValueError(f"yuv_resized_crop_frames: out must be uint8 [3, >= {t0 + T}, H, W], got "
                         f"{out.dtype} {tuple(out.shape)}")
    y0, u0, v0 = frames[0]
    H, W = int(y0.height), int(y0.width)
    top, left, h, w = boxes_T4.T
    outside = (h <= 0) | (w <= 0) | (top < 0) | (left < 0) | (top + h > H) | (left + w > W)
    # the plane, size and box checks of one frame: the first, or the first whose box is outside
    _, shifts = _check(*(_Shape(p) for p in frames[0]), boxes_T4[int(np.argmax(outside))], tuple(out.shape[2:]))
    geometry = [g for y, u, _ in frames for g in _geometry(y, u)]
    if any(geometry[6 * i:6 * i + 2] != [H, W] for i in range(T)):
        raise ValueError(f"yuv_resized_crop_frames: frames of several sizes ({H}x{W} first)")
    coeffs = tuple(float(c) for c in coeffs)
    _registry.pick("yuv_resized_crop", torch.device("cpu")).fn(
        [f[0] for f in frames], [f[1] for f in frames], [f[2] for f in frames], geometry, shifts, coeffs,
        boxes_T4.ravel().tolist(), [bool(f) for f in np.broadcast_to(flips_T, (T,))], out, int(t0))


def normalize_u8_ref(x_u8: torch.Tensor, scale_C: torch.Tensor, bias_C: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Plain-torch definition: float32 x * scale[c] + bias[c], c the index along `channel_dim` (negative).

    Equivalent pytorch code::

        shape = (C,) + (1,) * (-channel_dim - 1)
        out = x_u8.float().mul_(scale_C.view(shape)).add_(bias_C.view(shape))    # product rounded, then the sum
    """
    shape = (scale_C.numel(),) + (1,) * (-channel_dim - 1)
    return x_u8.float().mul_(scale_C.view(shape)).add_(bias_C.view(shape))


def _normalize_torch(x_u8, scale_C, bias_C, channel_dim, out) -> None:
    shape = (scale_C.numel(),) + (1,) * (-channel_dim - 1)
    out.copy_(x_u8)
    out.mul_(scale_C.view(shape)).add_(bias_C.view(shape))


def _normalize_cpp(x_u8, scale_C, bias_C, channel_dim, out) -> None:
    _ops.require_cpp("normalize_u8").normalize_u8(x_u8, out, scale_C.tolist(), bias_C.tolist(), channel_dim)


_registry.register("normalize_u8", "torch", _normalize_torch)
_registry.register("normalize_u8", "cpp", _normalize_cpp, **_registry.CPP)


def normalize_u8(x_u8: torch.Tensor, scale_C: torch.Tensor, bias_C: torch.Tensor, *, channel_dim: int,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """float32 x_u8 * scale_C[c] + bias_C[c] (normalize_u8_ref), written into `out` when given (float32, x's
    shape, same device). On CPU one pass over the batch (C++); elsewhere torch's three."""
    if x_u8.dtype != torch.uint8 or not -x_u8.dim() <= channel_dim < 0 or x_u8.shape[channel_dim] != scale_C.numel() \
            or bias_C.numel() != scale_C.numel():
        raise ValueError(f"normalize_u8: x must be uint8 with {scale_C.numel()} channels at dim {channel_dim}, got "
                         f"{x_u8.dtype} {tuple(x_u8.shape)} ({bias_C.numel()} biases)")
    out = out if out is not None else torch.empty(x_u8.shape, dtype=torch.float32, device=x_u8.device)
    if out.dtype != torch.float32 or out.shape != x_u8.shape or out.device != x_u8.device:
        raise ValueError(f"normalize_u8: out must be float32 {tuple(x_u8.shape)} on {x_u8.device}, got "
                         f"{out.dtype} {tuple(out.shape)} on {out.device}")
    dst = out if out.is_contiguous() else torch.empty(out.shape, dtype=torch.float32, device=out.device)
    # both impls take contiguous tensors (a strided uint8 input is copied: a quarter of the float output)
    _registry.pick("normalize_u8", x_u8.device).fn(x_u8.contiguous(), scale_C, bias_C, channel_dim, dst)
    return dst if dst is out else out.copy_(dst)
