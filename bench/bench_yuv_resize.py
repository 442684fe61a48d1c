"""One decoded frame to a training crop: kernels.yuv_resized_crop vs converting the whole frame first.

    python bench/bench_yuv_resize.py [--quick] [--csv bench/results/yuv_resize_cpu.csv]

Per frame size and output size, the time to turn one decoded yuv420p frame (an av.VideoFrame, as
PyAV's decoder hands it out) into the RGB crop a clip needs, a random-resized-crop box of 60% of the
frame's area resized to S x S and flipped, three ways:
    reference        swscale to full-size RGB, whole frame to float32, crop, float bilinear resize (the
                     V-JEPA dataset's order, per frame)
    rgb_then_resize  swscale to full-size RGB (reused context), crop, uint8 bilinear resize (this
                     engine's path before the kernel: VideoDataset.decode_to_size = False)
    yuv_resized_crop kernels.yuv_resized_crop on the frame's planes (the default path)
Times are medians of repeated calls in this process, one thread (a loader worker's setting); ratios
are against the first two. The loader bench (bench/bench_loader.py, rows pyav_u8 vs pyav_rgb) measures
the same change end to end.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import kernels  # noqa: E402
from engine.data.transforms import resize_planar, random_crop_box  # noqa: E402
from engine.data.video import _resized_crop_into, _to_rgb  # noqa: E402
from engine.core.io import atomic_write_csv  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from run_kernels import timeit  # noqa: E402  (median of repeated calls after a warm-up)


def a_frame(H: int, W: int) -> av.VideoFrame:
    """A yuv420p frame with smooth content (gradients + noise), as a decoder would return it."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    rgb = np.stack([(xx * 255 // max(W - 1, 1)), (yy * 255 // max(H - 1, 1)), ((xx + yy) % 256)], -1)
    rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
    return av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")


def bench(H, W, S, reps) -> list[dict]:
    frame = a_frame(H, W)
    top, left, h, w = random_crop_box(np.random.default_rng(1), H, W, (0.6, 0.6), (3 / 4, 4 / 3))
    box, flip = (top, left, h, w), True
    out = torch.empty(3, 1, S, S, dtype=torch.uint8)

    def reference():
        x = torch.tensor(_to_rgb(frame), dtype=torch.float32).permute(2, 0, 1)[None]
        F.interpolate(x[:, :, top:top + h, left:left + w], size=(S, S), mode="bilinear", align_corners=False).flip(-1)

    def rgb_then_resize():
        resize_planar(_to_rgb(frame)[None, top:top + h, left:left + w], (S, S), flip)

    def fused():
        _resized_crop_into(frame, box, flip, out, 0)

    t = {name: timeit(fn, reps) for name, fn in
         (("reference", reference), ("rgb_then_resize", rgb_then_resize), ("yuv_resized_crop", fused))}
    rows = []
    for name, sec in t.items():
        rows.append({"op": "frame_to_crop", "frame": f"{W}x{H}", "crop_area": 0.6, "out": S, "method": name,
                     "us_per_frame": round(sec * 1e6, 1), "x_vs_reference": round(t["reference"] / sec, 2),
                     "x_vs_rgb_then_resize": round(t["rgb_then_resize"] / sec, 2)})
        r = rows[-1]
        print(f"{W:5d}x{H:<5d} -> {S:3d}  {name:18s} {r['us_per_frame']:9.1f} us  x{r['x_vs_reference']:.2f} vs "
              f"reference, x{r['x_vs_rgb_then_resize']:.2f} vs rgb_then_resize", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one small case, few reps")
    ap.add_argument("--csv", default=None, help="write the table here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not kernels._ops.cpp_available():
        print("warning: the C++ extension is not built: yuv_resized_crop runs its torch reference")
    cases = [(240, 320, 64)] if args.quick else [(240, 320, 64), (240, 320, 224), (720, 1280, 64),
                                                 (720, 1280, 224), (1080, 1920, 224)]
    rows = []
    for H, W, S in cases:
        rows += bench(H, W, S, reps=5 if args.quick else 51)
    if args.csv:
        atomic_write_csv(args.csv, rows)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
