"""The sample table of a plain MP4 file's video track, read from its boxes without opening a decoder.

Usage:
    track = parse_mp4(data)          # bytes of a whole .mp4 file; None when it is not a plain one
    track.codec, track.extradata     # "h264" | "hevc" | "vp9" | "av1", the decoder's configuration record
    track.sample(i)                  # bytes of sample i (decode order)
    track.display_T                  # display index of each sample; track.keyframe_T: sync samples

Why: opening a file with libavformat (PyAV's av.open) probes it by decoding its first frame to learn the
pixel format, as costly as decoding several of its frames for a small VP9 clip; a loader opens one file per clip.
The boxes already hold everything a clip needs: where each sample is, its timestamps and which samples
are keyframes. Only the layout `prepare` and most muxers write is read: one `moov` with a video `trak`,
its samples in `mdat` through stsz/stco/co64/stsc, times from stts/ctts, sync samples from stss, and at
most an edit list that shifts presentation to start at the first frame. Anything else (fragmented MP4,
edit lists that cut, other codecs, truncated tables) returns None: the caller then opens the file with
PyAV as always. ISO/IEC 14496-12 (the box layout) and -15 (avcC / hvcC).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

# sample entry four-cc -> (codec name for av.CodecContext, configuration box carrying its extradata)
CODECS = {b"avc1": ("h264", b"avcC"), b"avc3": ("h264", b"avcC"), b"hvc1": ("hevc", b"hvcC"),
          b"hev1": ("hevc", b"hvcC"), b"vp09": ("vp9", None), b"av01": ("av1", b"av1C")}
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}
_VISUAL_ENTRY_HEADER = 78  # bytes of a VisualSampleEntry before its child boxes


class Mp4Unsupported(ValueError):
    """Not a plain MP4 video track this module reads (the caller opens the file with PyAV instead)."""


@dataclass
class Mp4Track:
    codec: str
    extradata: bytes | None
    width: int
    height: int
    timescale: int
    data: memoryview
    offset_T: np.ndarray      # int64 file offset of each sample, decode order
    size_T: np.ndarray        # int64 bytes of each sample
    pts_T: np.ndarray         # int64 presentation time (timescale units, edit-list shift removed)
    keyframe_T: np.ndarray    # bool
    display_T: np.ndarray     # int64 rank of each sample's pts: its frame index
    duration: int             # sum of the samples' durations (timescale units)

    @property
    def num_frames(self) -> int:
        return int(self.size_T.size)

    @property
    def fps(self) -> float:
        """Frames per second as libavformat's average rate: samples / total duration."""
        return self.num_frames * self.timescale / self.duration if self.duration > 0 else 0.0

    def sample(self, i: int) -> bytes:
        o = int(self.offset_T[i])
        return bytes(self.data[o:o + int(self.size_T[i])])


def _boxes(buf: memoryview, start: int, end: int):
    """(type, payload start, payload end) of the boxes in buf[start:end]."""
    pos = start
    while pos + 8 <= end:
        size, typ = struct.unpack_from(">I4s", buf, pos)
        head = 8
        if size == 1:
            if pos + 16 > end:
                raise Mp4Unsupported("truncated box header")
            (size,) = struct.unpack_from(">Q", buf, pos + 8)
            head = 16
        elif size == 0:
            size = end - pos
        if size < head or pos + size > end:
            raise Mp4Unsupported(f"box {typ!r} runs past its parent (truncated file?)")
        yield typ, pos + head, pos + size
        pos += size


def _children(buf, start, end) -> dict:
    out = {}
    for typ, a, b in _boxes(buf, start, end):
        out.setdefault(typ, (a, b))  # the first of each type
    return out


def _full_box(buf, a) -> tuple[int, int]:
    """(version, payload start after the version/flags word)."""
    return buf[a], a + 4


def _table(buf, a, b, fields: int, dtype=">u4") -> np.ndarray:
    """A full box holding a 32-bit entry count then `fields` values per entry: [count, fields]."""
    _, p = _full_box(buf, a)
    (n,) = struct.unpack_from(">I", buf, p)
    width = np.dtype(dtype).itemsize * fields
    if p + 4 + n * width > b:
        raise Mp4Unsupported("sample table shorter than its entry count")
    return np.frombuffer(buf, dtype=dtype, count=n * fields, offset=p + 4).reshape(n, fields).astype(np.int64)


def _per_sample(runs_R2: np.ndarray, n: int, box: str) -> np.ndarray:
    """A run-length table [(count, value)] (stts, ctts) as its value per sample: [n]."""
    value_T = np.repeat(runs_R2[:, 1], runs_R2[:, 0])
    if value_T.size != n:
        raise Mp4Unsupported(f"{box} does not cover the samples")
    return value_T


def _video_trak(buf, moov):
    for typ, a, b in _boxes(buf, *moov):
        if typ != b"trak":
            continue
        trak = _children(buf, a, b)
        mdia = _children(buf, *trak.get(b"mdia", (0, 0)))
        hdlr = mdia.get(b"hdlr")
        if hdlr and bytes(buf[hdlr[0] + 8:hdlr[0] + 12]) == b"vide":
            return trak, mdia
    raise Mp4Unsupported("no video track")


def parse_mp4(data) -> Mp4Track | None:
    """The first video track's sample table, or None when the file is not a plain MP4 this reads."""
    try:
        return _parse(memoryview(data))
    except (Mp4Unsupported, struct.error, ValueError, IndexError):
        return None


def _parse(buf: memoryview) -> Mp4Track:
    top = _children(buf, 0, len(buf))
    if b"ftyp" not in top or b"moov" not in top:
        raise Mp4Unsupported("not an MP4 file (no ftyp / moov)")
    if b"moof" in top:
        raise Mp4Unsupported("fragmented MP4")
    trak, mdia = _video_trak(buf, top[b"moov"])
    version, p = _full_box(buf, mdia[b"mdhd"][0])
    timescale = struct.unpack_from(">I", buf, p + (16 if version == 1 else 8))[0]
    stbl = _children(buf, *_children(buf, *mdia[b"minf"])[b"stbl"])

    # sample description: codec, size, configuration record
    a, b = stbl[b"stsd"]
    entries = list(_boxes(buf, a + 8, b))
    if len(entries) != 1:
        raise Mp4Unsupported(f"{len(entries)} sample descriptions")
    fourcc, ea, eb = entries[0]
    if fourcc not in CODECS:
        raise Mp4Unsupported(f"codec {fourcc!r}")
    codec, config = CODECS[fourcc]
    width, height = struct.unpack_from(">HH", buf, ea + 24)
    extradata = None
    if config is not None:
        cfg = _children(buf, ea + _VISUAL_ENTRY_HEADER, eb).get(config)
        if cfg is None:
            raise Mp4Unsupported(f"no {config!r} box")
        extradata = bytes(buf[cfg[0]:cfg[1]])

    # sizes, chunk offsets, samples per chunk -> each sample's offset
    _, p = _full_box(buf, stbl[b"stsz"][0])
    fixed, n = struct.unpack_from(">II", buf, p)
    if n == 0:
        raise Mp4Unsupported("no samples")
    if fixed:
        size_T = np.full(n, fixed, np.int64)
    else:
        if p + 8 + 4 * n > stbl[b"stsz"][1]:
            raise Mp4Unsupported("stsz shorter than its count")
        size_T = np.frombuffer(buf, ">u4", count=n, offset=p + 8).astype(np.int64)
    chunk_C = (_table(buf, *stbl[b"stco"], 1) if b"stco" in stbl else _table(buf, *stbl[b"co64"], 1, ">u8"))[:, 0]
    stsc = _table(buf, *stbl[b"stsc"], 3)  # first chunk (1-based), samples per chunk, description
    per_chunk_C = np.zeros(chunk_C.size, np.int64)
    for i, (first, count, _) in enumerate(stsc):
        last = stsc[i + 1, 0] - 1 if i + 1 < len(stsc) else chunk_C.size
        per_chunk_C[first - 1:last] = count
    if int(per_chunk_C.sum()) != n:
        raise Mp4Unsupported("stsc does not cover the samples")
    chunk_T = np.repeat(np.arange(chunk_C.size), per_chunk_C)
    first_T = np.repeat(np.cumsum(per_chunk_C) - per_chunk_C, per_chunk_C)  # first sample of its chunk
    within = np.cumsum(size_T) - size_T  # bytes before each sample, counted from the first sample
    offset_T = chunk_C[chunk_T] + within - within[first_T]
    if int((offset_T + size_T).max()) > len(buf) or int(offset_T.min()) < 0:
        raise Mp4Unsupported("samples past the end of the file (truncated?)")

    # times: decode times from stts, presentation offsets from ctts
    delta_T = _per_sample(_table(buf, *stbl[b"stts"], 2), n, "stts")
    pts_T = np.cumsum(delta_T) - delta_T   # the decode times
    if b"ctts" in stbl:   # + the presentation offsets
        version, _ = _full_box(buf, stbl[b"ctts"][0])
        pts_T = pts_T + _per_sample(_table(buf, *stbl[b"ctts"], 2, ">i4" if version == 1 else ">u4"), n, "ctts")
    if b"edts" in trak:
        elst = _children(buf, *trak[b"edts"]).get(b"elst")
        if elst is not None:
            version, p = _full_box(buf, elst[0])
            (count,) = struct.unpack_from(">I", buf, p)
            if count != 1:
                raise Mp4Unsupported(f"edit list with {count} entries")
            media_time = struct.unpack_from(">q" if version == 1 else ">i", buf, p + (12 if version == 1 else 8))[0]
            if media_time != int(pts_T.min()):  # an edit that only aligns the first frame to 0 is fine
                raise Mp4Unsupported("edit list that cuts the media")
    pts_T = pts_T - pts_T.min()
    if np.unique(pts_T).size != n:
        raise Mp4Unsupported("repeated presentation times")
    if b"stss" in stbl:
        keyframe_T = np.zeros(n, bool)
        sync = _table(buf, *stbl[b"stss"], 1)[:, 0] - 1
        if sync.size == 0 or sync.min() < 0 or sync.max() >= n:
            raise Mp4Unsupported("bad sync sample table")
        keyframe_T[sync] = True
    else:
        keyframe_T = np.ones(n, bool)
    if not keyframe_T[0]:
        raise Mp4Unsupported("first sample is not a keyframe")
    display_T = np.empty(n, np.int64)
    display_T[np.argsort(pts_T, kind="stable")] = np.arange(n)
    return Mp4Track(codec, extradata, int(width), int(height), int(timescale), buf, offset_T, size_T, pts_T,
                    keyframe_T, display_T, int(delta_T.sum()))
