"""Video loader throughput on CPU: our PyAV path, DALI's CPU decoder, and a reference-style loader.

Usage:
    .venv/bin/python bench/bench_loader.py                      # -> bench/results/loader_cpu.csv + a table
    .venv/bin/python bench/bench_loader.py --crops 64 --codecs vp9 --batches 3 --videos 8   # quicker
    .venv/bin/python bench/bench_loader.py --frame-width 96 --crops 64 --workers 0 \
        --codecs h264 vp9 h264_sparse vp9_sparse mjpeg --out bench/results/loader_cpu_96px.csv
    .venv/bin/python bench/bench_loader.py --frame-width 1280 --codecs h264 vp9 vp9_sparse --workers 0 \
        --videos 4 --batch 2 --batches 4 --out bench/results/loader_cpu_720p.csv

All loaders read the same files (320x240 unless --frame-width says otherwise, 30 fps, 64 frames,
synthetic moving objects) and give the same output: float32 clips [B, 3, 16, S, S] (16 frames,
frame_step 4, random resized crop, flip, ImageNet normalisation; pyav_u8: the same clips before
normalisation, uint8), S = 224 (reference size) or 64 (the tiny configs).
Codecs: h264, vp9 and mjpeg with the encoders' default keyframe intervals (x264: 250, so one GOP per
video), h264_gop8 / vp9_gop8 with a keyframe every 8 frames (prepare --gop 8), and h264_sparse /
vp9_sparse: the h264 / vp9 files re-encoded by engine.datagen.prepare.transcode(sparse_refs=True) (H.264:
every B-frame a non-reference frame; VP9: two temporal layers, error resilient, every other frame
unreferenced; a data-preparation choice: both loaders read these same re-encoded files).
    pyav       engine.data: VideoDataset + VideoTransform + make_loader (decode only the needed frames,
               reused swscale context, crop the uint8 region first, resize only the crop); the workers
               ship uint8 clips and the batch is normalised to float32 in the consuming process (counted)
    pyav_u8    the same loader with clip_dtype=torch.uint8: the consumer gets uint8 clips and normalises
               them on its training device (loader.normalize; not counted: on a GPU it is ~free)
    pyav_rgb   (workers=0 only) pyav_u8 with VideoDataset.decode_to_size = False: whole frames converted
               to RGB by swscale, then cropped and resized by the transform (the path before
               kernels.yuv_resized_crop); the difference to pyav_u8 is that kernel's share
    pyav_avopen (workers=0 only) pyav_u8 with VideoDataset.fast_open = False: every file opened by
               libavformat (av.open, which probes it by decoding a frame) with a fresh decoder, instead
               of an MP4's sample table and this process's decoder (engine.data.mp4)
    dali_cpu   engine.data.dali.make_dali_loader: the same sample plans, decoded and augmented by DALI's
               CPU operators (VP9 / MJPEG only); "workers" = DALI threads
    decode_floor  (workers=0 only) the pyav loader's reader alone, for the same clips: opening the file
               (an MP4's sample table, else av.open) and the decoder calls; no colour conversion, crop,
               resize or transport. A loader with this reader and decoder spends no less CPU per
               clip, so its vs_reference is the ceiling of the pyav loaders' speed-up here
    reference  the V-JEPA VideoDataset's way with its reader, decord: a VideoReader per clip
               (num_threads=-1, seek(0), get_batch of the needed frames at full resolution), the whole
               clip to float32, then crop + resize + flip + normalise in the worker
workers=0 runs each loader in this process and counts clips per CPU-second (process time, DALI's
threads included): the cost per clip, the least disturbed number on a shared machine. workers=1, 2
count clips per wall-second with that many DataLoader workers (DALI: threads); their clips_per_cpu_s
column counts CPU-seconds of this process and its workers together (transfer, collation and the
consumer-side normalisation included), which other jobs on the machine disturb far less than the wall
clock. Batches after the first are timed (start-up excluded); each number is the best of --rounds
interleaved runs; frames = clips * 16. The consumer reads every page of each batch (a shared-memory
batch is mapped into it on first access: a cost real training pays). Ratios are against the reference
loader with the same codec, crop size and workers, in the same run (vs_reference: the row's unit;
cpu_vs_reference: CPU-seconds). A run replaces the rows of the settings it measured in --out and keeps
the others.
"""
from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

try:
    import psutil  # CPU time of DataLoader worker processes (optional: without it that column is empty)
except ImportError:
    psutil = None

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.data import VideoDataset, VideoTransform, make_loader  # noqa: E402
from engine.datagen.synthetic import CODECS, render_clip, write_video  # noqa: E402
from engine.data.transforms import IMAGENET_MEAN, IMAGENET_STD, random_crop_box  # noqa: E402
from engine.data.video import sample_clip_indices  # noqa: E402
from engine.core.io import atomic_write_csv  # noqa: E402

FPC, STEP, T_VIDEO, W, H, FPS = 16, 4, 64, 320, 240, 30


def set_frame_size(width: int) -> None:
    global W, H
    W, H = int(width), int(width) * 3 // 4 // 2 * 2


def make_videos(out: Path, name: str, n: int) -> Path:
    """n videos of W x H (320x240 by default: a 320x320 render cut to its middle 240 rows) and their index CSV.

    name: a codec ("h264", "vp9", "mjpeg") or "<codec>_gop<N>": a keyframe every N frames, as
    `python -m engine.datagen prepare --gop N` writes them; "h264_sparse" / "vp9_sparse": the codec's files
    re-encoded with sparse_refs.
    """
    if name.endswith("_sparse"):
        from engine.datagen.prepare import transcode

        base = name[: -len("_sparse")]
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        src = make_videos(out, base, n) if not (out / f"{base}.csv").exists() else out / f"{base}.csv"
        lines = []
        for ln in src.read_text().splitlines():
            path, label = ln.rsplit(" ", 1)
            q = d / Path(path).name
            q.write_bytes(transcode(path, base, sparse_refs=True)[0])
            lines.append(f"{q} {label}\n")
        (out / f"{name}.csv").write_text("".join(lines))
        return out / f"{name}.csv"
    codec, _, gop = name.partition("_gop")
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        frames, _ = render_clip(i % 5, np.random.default_rng([7, i]), num_frames=T_VIDEO, size=W, fps=FPS)
        top = (W - H) // 2
        p = write_video(d / f"{i:04d}{CODECS[codec][2]}", np.ascontiguousarray(frames[:, top:top + H]), fps=FPS,
                        codec=codec, gop=int(gop) if gop else None)
        lines.append(f"{p} {i % 5}\n")
    csv_path = out / f"{name}.csv"
    csv_path.write_text("".join(lines))
    return csv_path


class ReferenceStyleDataset(torch.utils.data.Dataset):
    """The V-JEPA reference's loader: decord reads the clip's frames at full resolution (one VideoReader
    per clip with num_threads=-1 and a seek to 0, then get_batch), the whole clip becomes float32, then
    random resized crop, flip and normalisation on the float clip (its VideoTransform's order)."""

    def __init__(self, paths, crop):
        self.paths, self.crop = paths, crop
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) * 255

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from decord import VideoReader, cpu

        rng = np.random.default_rng(i)
        vr = VideoReader(self.paths[i], num_threads=-1, ctx=cpu(0))
        vr.seek(0)
        (idx,) = sample_clip_indices(len(vr), FPC, STEP, 1, rng)
        buffer = vr.get_batch(idx.tolist()).asnumpy()                           # uint8 [T, H, W, 3]
        x = torch.tensor(buffer, dtype=torch.float32).permute(3, 0, 1, 2)        # float32 [3, T, H, W], full size
        top, left, h, w = random_crop_box(rng, x.shape[2], x.shape[3], (0.3, 1.0), (3 / 4, 4 / 3))
        x = F.interpolate(x[:, :, top:top + h, left:left + w], size=(self.crop, self.crop), mode="bilinear",
                          align_corners=False)
        if rng.uniform() < 0.5:
            x = x.flip(-1)
        return (x - self.mean) / self.std, 0


def _cpu_seconds(procs) -> float:
    """CPU-seconds of this process (all its threads) and of the given child processes."""
    total = time.process_time()
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def touch(x: torch.Tensor) -> float:
    """Read one value per 4 KiB page, as a consumer reading the batch would first: a batch that crossed
    from a worker through shared memory is mapped into this process page by page on first access."""
    return float(x.reshape(-1)[:: 4096 // x.element_size()].sum())


def timed(it, batches: int) -> tuple[float, float]:
    """(clips per wall-second, clips per CPU-second of this process and its workers) over `batches`
    batches after a first (start-up) batch; each batch is touched (see touch) before the next."""
    x = next(it)[0]
    B = x.shape[0]
    procs = psutil.Process().children(recursive=True) if psutil is not None else []
    t0, c0 = time.perf_counter(), _cpu_seconds(procs)
    for _ in range(batches):
        x = next(it)[0]
        touch(x)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds(procs) - c0
    assert x.shape[1:3] == (3, FPC), x.shape
    return batches * B / wall, batches * B / cpu


def decode_floor_iter(csv_path: Path, batch: int):
    """Endless (placeholder batch,) tuples, each after decoding `batch` clips' frames with the pyav loader's
    reader (same frame plans: frame_step, non-reference frames skipped) and converting none of them."""
    import engine.data.video as video

    paths = [ln.rsplit(" ", 1)[0] for ln in csv_path.read_text().splitlines()]
    no_pixels = np.zeros((1, 1, 3), np.uint8)

    def endless():
        i, to_rgb = 0, video._to_rgb
        while True:
            video._to_rgb = lambda frame: no_pixels  # the decoder's work only: restored before yielding
            try:
                for _ in range(batch):
                    with video.VideoReader(paths[i % len(paths)]) as vr:
                        (idx,) = sample_clip_indices(vr.info.num_frames, FPC, STEP, 1, np.random.default_rng(i))
                        vr.decode(idx)
                    i += 1
            finally:
                video._to_rgb = to_rgb
            yield (torch.zeros(batch, 3, FPC, 1, 1),)
    return endless()


def make_iter(kind: str, csv_path: Path, crop: int, workers: int, batch: int):
    """An endless iterator of (clips, ...) batches; workers=0: in this process (DALI: one thread)."""
    if kind == "decode_floor":
        return decode_floor_iter(csv_path, batch)
    if kind in ("pyav", "pyav_u8", "pyav_rgb", "pyav_avopen", "dali_cpu"):
        ds = VideoDataset([csv_path], frames_per_clip=FPC, frame_step=STEP, transform=VideoTransform(crop))
        ds.decode_to_size, ds.fast_open = kind != "pyav_rgb", kind != "pyav_avopen"
        if kind != "dali_cpu":
            dtype = torch.float32 if kind == "pyav" else torch.uint8
            return iter(make_loader(ds, batch_size=batch, seed=0, num_workers=workers, clip_dtype=dtype))
        from engine.data.dali import make_dali_loader

        return iter(make_dali_loader(ds, batch_size=batch, seed=0, num_threads=max(1, workers)))
    paths = [ln.rsplit(" ", 1)[0] for ln in csv_path.read_text().splitlines()]
    dl = torch.utils.data.DataLoader(ReferenceStyleDataset(paths, crop), batch_size=batch, shuffle=True,
                                     num_workers=workers, persistent_workers=workers > 0, drop_last=True)

    def endless():
        while True:
            yield from dl
    return endless()


def measure(kinds, csv_path, crop, workers, batch, batches, rounds) -> dict:
    """{kind: (clips per wall-second, clips per CPU-second)}, each the best of `rounds` interleaved runs
    (the machine is shared: the best run is the least disturbed). workers=0: loaders run in-process;
    workers>=1: that many DataLoader workers (DALI: threads)."""
    best = {k: (0.0, 0.0) for k in kinds}
    for _ in range(rounds):
        for k in kinds:
            it = make_iter(k, csv_path, crop, workers, batch)
            wall, cpu = timed(it, batches)
            best[k] = (max(best[k][0], wall), max(best[k][1], cpu))
            del it
    return best


def kept_rows(path, rows) -> list[dict]:
    """The rows of an existing results file for (codec, crop, workers) settings this run did not measure:
    a run of some settings updates the file without losing the others'."""
    if not Path(path).exists():
        return []
    measured = {(r["codec"], str(r["crop"]), str(r["workers"])) for r in rows}
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if (r["codec"], r["crop"], r["workers"]) not in measured]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codecs", nargs="+", default=["h264", "vp9", "mjpeg", "h264_gop8", "vp9_gop8", "h264_sparse",
                                                   "vp9_sparse"],
                    help="codec, codec_gopN (a keyframe every N frames), h264_sparse or vp9_sparse")
    ap.add_argument("--crops", nargs="+", type=int, default=[224, 64])
    ap.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2],
                    help="0 = in-process, measured in clips per CPU-second")
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--frame-width", type=int, default=W,
                    help="video width in pixels (height 3/4 of it), e.g. 96 for files prepared near 64 px")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "loader_cpu.csv"))
    args = ap.parse_args(argv)
    set_frame_size(args.frame_width)
    torch.set_num_threads(1)  # the loaders' own parallelism is what is measured
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        csvs = {c: make_videos(Path(tmp), c, args.videos) for c in args.codecs}
        for codec in args.codecs:
            kinds_all = ["reference", "pyav", "pyav_u8"] + (["dali_cpu"] if codec.split("_")[0] in ("vp9", "mjpeg")
                                                            else [])
            for crop in args.crops:
                for workers in args.workers:
                    kinds = kinds_all + (["pyav_rgb", "pyav_avopen", "decode_floor"] if workers == 0 else [])
                    res = measure(kinds, csvs[codec], crop, workers, args.batch, args.batches, args.rounds)
                    for k in kinds:
                        wall, cpu = res[k]
                        main_metric = cpu if workers == 0 else wall
                        ref_main = res["reference"][1] if workers == 0 else res["reference"][0]
                        rows.append({"loader": k, "codec": codec, "crop": crop, "workers": workers,
                                     "unit": "clips/cpu-s" if workers == 0 else "clips/s",
                                     "clips_per_s": round(main_metric, 2), "frames_per_s": round(main_metric * FPC, 1),
                                     "vs_reference": round(main_metric / ref_main, 2),
                                     "clips_per_cpu_s": round(cpu, 2) if psutil or not workers else "",
                                     "cpu_vs_reference": round(cpu / res["reference"][1], 2)
                                     if psutil or not workers else ""})
                        r = rows[-1]
                        print(f"{k:10s} {codec:11s} {crop:4d} px  workers={workers}: {main_metric:7.1f} {r['unit']:11s} "
                              f"({main_metric * FPC:6.0f} frames)  x{r['vs_reference']:.2f} vs reference; "
                              f"{cpu:6.1f} clips/cpu-s x{cpu / res['reference'][1]:.2f}", flush=True)
    atomic_write_csv(args.out, kept_rows(args.out, rows) + rows)
    print(f"\n{'loader':10s} {'codec':11s} {'crop':>4s} {'wk':>2s} {'unit':11s} {'clips':>7s} {'frames':>7s} "
          f"{'x ref':>6s} {'cpu-s':>7s} {'x ref':>6s}")
    for r in rows:
        print(f"{r['loader']:10s} {r['codec']:11s} {r['crop']:4d} {r['workers']:2d} {r['unit']:11s} "
              f"{r['clips_per_s']:7.1f} {r['frames_per_s']:7.0f} {r['vs_reference']:6.2f} "
              f"{r['clips_per_cpu_s']:>7} {r['cpu_vs_reference']:>6}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
