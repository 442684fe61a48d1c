"""Resized crop of a planar YUV frame straight to RGB: colour conversion, crop, bilinear resize, flip in one pass.

    coeffs = kernels.yuv_coeffs("bt601", full_range=False)          # the frame's colour matrix and range
    rgb_3HW = kernels.yuv_resized_crop(y_HW, u_hw, v_hw, box=(top, left, h, w), size=(64, 64), coeffs=coeffs)
    kernels.yuv_resized_crop(y, u, v, box, size, coeffs=coeffs, flip=True, out=clip_3THW, t=5)   # into a clip

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

Backends (kernels/_registry.py): cpp (csrc/cpu/yuv_resize.cpp, a pybind11 function on buffers, so a
PyAV plane goes in without becoming a tensor) and torch (the reference). CPU only: on a GPU, DALI decodes and
resizes (engine/data/dali.py); this is the decode path of CPU data-loader workers.
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


def _yuv_cpp(y, u, v, geometry, shifts, coeffs, box, out, t, flip) -> None:
    _ops.require_cpp("yuv_resized_crop").yuv_resized_crop(y, u, v, geometry, *shifts, list(coeffs), list(box),
                                                          out, t, flip)


def _yuv_torch(y, u, v, geometry, shifts, coeffs, box, out, t, flip) -> None:
    if geometry != [0] * 6:   # decoder planes: flat buffers with a line size
        y, u, v = (np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width] for p in (y, u, v))
    out[:, t] = yuv_resized_crop_ref(y, u, v, box, tuple(out.shape[2:]), coeffs=coeffs, flip=flip)


# Both impls write into out[:, t]; yuv_resized_crop below checks the call and is the one entry point.
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
        geometry = [int(x) for p in (y_HW, u_hw) for x in (p.height, p.width, p.line_size)]
        box, shifts = _check(*(_Shape(p) for p in planes), box, size)
    else:
        box, shifts = _check(y_HW, u_hw, v_hw, box, size)
        planes, geometry = tuple(_as_plane(p) for p in (y_HW, u_hw, v_hw)), [0] * 6
    dst = out if out is not None else torch.empty(3, 1, int(size[0]), int(size[1]), dtype=torch.uint8)
    t = t if out is not None else 0
    _registry.pick("yuv_resized_crop", torch.device("cpu")).fn(*planes, geometry, shifts, coeffs, box, dst, t,
                                                                bool(flip))
    return dst[:, t]
