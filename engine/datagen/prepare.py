"""Transcode, resize and shard a video collection: `python -m engine.datagen prepare`.

Usage:
    python -m engine.datagen prepare --input data/raw --output data/shards [--codec vp9|h264|mjpeg] [--size 128]
                                  [--shard-size 100] [--workers 2] [--gop 16]
    from engine.datagen.prepare import prepare
    index = prepare("data/train.csv", "data/shards", codec="vp9", size=128, shard_size=100)
    index = prepare("data/train.csv", "data/shards", codec="h264", sparse_refs=False)  # the encoder's own refs

Input: an index CSV in the reference format ("<path> <label>" lines), or a folder: its video files
(.mp4 .webm .avi .mkv .mov, recursively); with class sub-folders the label is the sorted folder index,
else 0. Per-frame arrays saved beside a video as <stem>.actions.npy / <stem>.states.npy (the robot and
Atari sources write them) travel into the shard with it.

Each video is decoded in full, resized so its short side is `size` (aspect kept, even sides; None keeps
the size), re-encoded with `codec` at its own frame rate (a keyframe every `gop` frames if given: the PyAV
reader decodes only the GOPs a clip touches, but keyframes cost more to decode, and at 320x240 with
16 frames 4 apart --gop 8 was slower than the encoders' default: bench/results/loader_cpu.csv) and
written to tar shards (engine.data.shards layout). sparse_refs (the default for H.264 and VP9; None =
where the codec has it, False = the encoder's own reference structure) leaves many frames unreferenced
(SPARSE_REF_PARAMS), which the PyAV reader does not decode when a clip does not need them. H.264: every
B-frame non-reference (no B-pyramid, 7 B-frames between references): a clip of 16 frames 4 apart from
the bench's 64-frame videos decodes 24 frames instead of 43, and the files were smaller (29 vs 35 kB at
crf 18). VP9: two temporal layers, error resilient: 30-47 frames instead of 59-62, files 2% larger at the
same PSNR (bench/results/loader_cpu.csv, codecs h264_sparse / vp9_sparse).
Output: DIR/shard-NNNNNN.tar, DIR/index.json ({"shards": [{"path", "count", "frames",
"duration"}], totals, "skipped": [{"path", "error"}], arguments}) and DIR/index.csv (one line per shard:
path,count,frames,duration). Inputs that cannot be decoded are skipped, counted and named (log + index);
if none can be, a ValueError names the first failures. Work is spread over `workers` processes; sample
keys and order follow the input order, so the output does not depend on `workers`.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from engine.data.datasets import read_index_csv

from .shard_writer import ShardWriter
from .synthetic import CODECS

logger = logging.getLogger(__name__)
# encoder settings that leave many frames unreferenced (the reader skips those nobody asked for);
# MJPEG has nothing to skip
SPARSE_REF_PARAMS = {
    # option -> value; a value for an option the codec's base options already set (x264-params) is
    # appended to it (both are colon-separated key=value lists)
    "h264": {"x264-params": "b-pyramid=none:bframes=7:b-adapt=0"},
    # two temporal layers: every other frame refreshes no reference slot (the bitrates are placeholders
    # the option requires: with crf and b=0 the rate stays quality-driven); error resilient, so no frame
    # inherits motion vectors or probabilities from the one before (engine.data.video.vp9_skippable).
    # 320x240 bench clips: 18.3 vs 17.9 kB, PSNR 37.77 vs 37.79 dB
    "vp9": {"ts-parameters": "ts_number_layers=2:ts_target_bitrate=500,1000:ts_rate_decimator=2,1:"
                             "ts_periodicity=2:ts_layer_id=0,1:ts_layering_mode=2",
            "error-resilient": "default"},
}
INPUT_EXTS = (".mp4", ".webm", ".avi", ".mkv", ".mov")
ARRAY_NAMES = ("actions", "states")


def list_inputs(source) -> tuple[list[str], list[int], list[str] | None]:
    """(paths, labels, class names or None) from an index CSV or a folder of videos."""
    p = Path(source)
    if p.is_file():
        paths, labels = read_index_csv(p)
        return paths, labels, None
    if not p.is_dir():
        raise ValueError(f"--input {source}: neither an index CSV nor a folder")
    classes = sorted(d.name for d in p.iterdir() if d.is_dir())
    files = sorted(f for f in p.rglob("*") if f.suffix.lower() in INPUT_EXTS and not f.name.startswith("."))
    if classes and all(f.parent != p for f in files):
        cls_idx = {c: i for i, c in enumerate(classes)}
        labels = [cls_idx[f.relative_to(p).parts[0]] for f in files]
    else:
        classes, labels = None, [0] * len(files)
    if not files:
        raise ValueError(f"--input {source}: no video files ({', '.join(INPUT_EXTS)})")
    return [str(f) for f in files], labels, classes


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


def encoder_options(codec: str, sparse_refs: bool | None = None) -> dict:
    """The encoder options `codec` is written with (sparse_refs: see SPARSE_REF_PARAMS; None: where the
    codec has them; True for a codec without them is an error)."""
    options = dict(CODECS[codec][4])
    if sparse_refs is None:
        sparse_refs = codec in SPARSE_REF_PARAMS
    if sparse_refs:
        if codec not in SPARSE_REF_PARAMS:
            raise ValueError(f"sparse_refs: supported for {sorted(SPARSE_REF_PARAMS)}, not {codec!r}")
        for key, value in SPARSE_REF_PARAMS[codec].items():
            options[key] = ":".join(v for v in (options.get(key), value) if v)
    return options


def transcode(path, codec: str = "vp9", size: int | None = None, gop: int | None = None,
              sparse_refs: bool | None = None) -> tuple[bytes, dict]:
    """Decode `path` fully, resize (short side `size`), re-encode: (file bytes, meta without label)."""
    encoder, fmt, suffix, pix_fmt, _ = CODECS[codec]
    options = encoder_options(codec, sparse_refs)
    buf = io.BytesIO()
    out = av.open(buf, "w", format=fmt)  # in memory: nothing half-written on disk
    frames = 0
    try:
        with av.open(str(path)) as src:
            if not src.streams.video:
                raise ValueError("no video stream")
            s = src.streams.video[0]
            rate = s.average_rate or s.guessed_rate or s.base_rate or Fraction(25)
            rate = Fraction(rate).limit_denominator(1001)
            H, W = s.codec_context.height, s.codec_context.width
            if size:
                k = size / min(H, W)
                oh, ow = _even(H * k), _even(W * k)
            else:
                oh, ow = H - H % 2, W - W % 2
            st = out.add_stream(encoder, rate=rate)
            st.width, st.height, st.pix_fmt = ow, oh, pix_fmt
            st.options = dict(options)
            st.codec_context.thread_count = 1
            if codec == "mjpeg":
                st.codec_context.bit_rate = 8_000_000
            if gop is not None:
                st.codec_context.gop_size = gop
            st.codec_context.time_base = Fraction(1) / rate
            for frame in src.decode(s):
                f = frame.reformat(width=ow, height=oh, format=pix_fmt, interpolation="AREA" if size and
                                   size < min(H, W) else "BILINEAR")
                f.pts, f.time_base = frames, st.codec_context.time_base
                # a decoded frame keeps its source's type (I/P/B), which encoders take as a forced type:
                # cleared, so the output's frame types and keyframes follow `options` and `gop`
                f.pict_type = av.video.frame.PictureType.NONE
                for packet in st.encode(f):
                    out.mux(packet)
                frames += 1
            if frames == 0:
                raise ValueError("no decodable frames")
            for packet in st.encode():
                out.mux(packet)
    finally:
        out.close()
    fps = float(rate)
    meta = {"fps": fps, "num_frames": frames, "duration": round(frames / fps, 4), "width": ow, "height": oh,
            "codec": codec}
    return buf.getvalue(), meta


def _sidecar_arrays(path) -> dict:
    p = Path(path)
    out = {}
    for name in ARRAY_NAMES:
        f = p.with_name(f"{p.stem}.{name}.npy")
        if f.exists():
            out[name] = np.load(f, allow_pickle=False)
    return out


def _work(job):
    """One input -> ("ok", key, bytes, meta, arrays) or ("bad", path, error)."""
    i, path, label, codec, size, gop, sparse_refs = job
    try:
        data, meta = transcode(path, codec, size, gop, sparse_refs)
        arrays = _sidecar_arrays(path)
        for name, a in arrays.items():
            if len(a) != meta["num_frames"]:
                raise ValueError(f"{name}.npy has {len(a)} rows for {meta['num_frames']} frames")
    except Exception as e:  # noqa: BLE001 -- a bad input is named and skipped, never fatal
        return "bad", path, f"{type(e).__name__}: {e}"
    meta.update(label=int(label), source=str(path))
    return "ok", f"{i:08d}", data, meta, arrays


def prepare(input, output, *, codec: str = "vp9", size: int | None = 128, shard_size: int = 100,
            workers: int = 1, gop: int | None = None, sparse_refs: bool | None = None, progress: bool = False) -> dict:
    """See the module docstring; returns the index dict (also written to output/index.json)."""
    if codec not in CODECS:
        raise ValueError(f"--codec: expected one of {sorted(CODECS)}, got {codec!r}")
    if sparse_refs is None:
        sparse_refs = codec in SPARSE_REF_PARAMS  # resolved here, so the index records what was done
    encoder_options(codec, sparse_refs)  # refuses sparse_refs for a codec without it, before any work
    if size is not None and size < 2:
        raise ValueError(f"--size: must be >= 2, got {size}")
    paths, labels, classes = list_inputs(input)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("shard-*.tar"):  # a rerun replaces the previous shards
        old.unlink()
    ext = CODECS[codec][2].lstrip(".")
    jobs = [(i, p, lab, codec, size, gop, sparse_refs) for i, (p, lab) in enumerate(zip(paths, labels))]
    skipped = []
    if workers > 1:
        import multiprocessing as mp
        pool = mp.get_context("forkserver").Pool(workers)
        results = pool.imap(_work, jobs, chunksize=1)
    else:
        pool, results = None, map(_work, jobs)
    if progress:
        from tqdm import tqdm
        results = tqdm(results, total=len(jobs), desc=f"prepare {codec} {size or 'orig'}", unit="video")
    try:
        with ShardWriter(out, shard_size=shard_size) as w:
            for r in results:
                if r[0] == "bad":
                    skipped.append({"path": r[1], "error": r[2]})
                    logger.warning("skipping %s: %s", r[1], r[2])
                    continue
                _, key, data, meta, arrays = r
                w.write(key, data, ext, meta, arrays=arrays)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    if not w.shards:
        raise ValueError(f"--input {input}: none of {len(paths)} videos could be prepared; first failures: "
                         + "; ".join(f"{s['path']}: {s['error']}" for s in skipped[:3]))
    index = {"version": 1, "codec": codec, "size": size, "shard_size": shard_size, "gop": gop,
             "sparse_refs": sparse_refs,
             "input": str(input),
             "num_samples": sum(s["count"] for s in w.shards), "num_frames": sum(s["frames"] for s in w.shards),
             "duration": round(sum(s["duration"] for s in w.shards), 4), "classes": classes,
             "shards": w.shards, "skipped": skipped}
    tmp = out / ".index.json.tmp"
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / "index.json")
    with open(out / "index.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["path", "count", "frames", "duration"])
        for s in w.shards:
            wr.writerow([s["path"], s["count"], s["frames"], s["duration"]])
    return index


def summary(index: dict) -> str:
    hours = index["duration"] / 3600
    lines = [f"{index['num_samples']} videos ({index['num_frames']} frames, {hours:.2f} h) in "
             f"{len(index['shards'])} shard(s); {len(index['skipped'])} skipped"]
    lines += [f"  skipped {s['path']}: {s['error']}" for s in index["skipped"]]
    return "\n".join(lines)
