"""Clip index sampling (V-JEPA / V-JEPA 2 semantics) and PyAV decoding of only the frames a clip needs.

Usage:
    rng = np.random.default_rng(0)
    with VideoReader("clip.mp4") as vr:
        step = frame_step_for(vr.info.fps, fps=4)        # V-JEPA 2 fps sampling: ceil(video fps) // fps
        idx = sample_clip_indices(vr.info.num_frames, 16, step, num_clips=1, rng=rng)
        clip_THW3 = vr.decode(idx[0])                    # uint8 [16, H, W, 3]
        clip_3TSS = vr.decode_resized(idx[0], (64, 64), boxes=(10, 20, 120, 160), flips=True)  # crop while converting
    clip_THW3 = decode_clip("clip.mp4", [0, 4, 8])       # one-shot helper
    VideoReader(io.BytesIO(data), name="shard-000003.tar:000017.mp4")   # an in-memory file works too

Sampling (reference semantics, with an exact step): the video is cut into num_clips equal segments; in
each, a window of frames_per_clip frames spaced frame_step apart starts at a random frame (the
reference draws its window end with np.random.randint; here an explicit Generator keeps it
deterministic). The reference spaces frames with np.linspace over the window, which gives steps of
frame_step*fpc/(fpc-1) rounded down (0,4,8,12,17,...); here the step is exactly frame_step. A segment
shorter than the window yields its frames every frame_step and is padded by repeating its last frame.

Decoding: packets are demuxed up to the last needed frame and only the GOPs (keyframe to keyframe) that
hold a needed frame are decoded, each up to its last needed frame (VideoReader._decode_gop, one rule
for the libavformat and the sample-table paths): an all-intra MJPEG clip of 16 frames 4 apart decodes
16 frames, not 61; frames that are neither needed nor referenced are not decoded. A jump of more than `seek_threshold` frames (to a clip late
in a long video, or between clips) seeks to the nearest keyframe instead of reading through the gap.
Frames are matched by timestamp; files without timestamps, or where that misses a frame, are decoded
frame by frame in order (skip_gops=False forces that). Any failure raises VideoDecodeError.

Opening: a plain MP4 (what `prepare` and most muxers write) is not opened with libavformat at all: its
sample table is read from the file's boxes (engine.data.mp4) and its packets go to a decoder this
process keeps open for the codec, flushed between clips. av.open probes a file by decoding its first
frame and opens a fresh decoder per file, which for small clips costs as much as decoding several of
their frames; this skips both. Same GOP logic, same
pixels (tests/data/test_mp4.py); anything the table reader does not handle, or any decode error, goes
the libavformat way (fast_open=False forces it).

Conversion: decoded frames are kept as the decoder's planar YUV until the clip is complete. `decode`
converts them to RGB (swscale); `decode_resized` cuts each frame's crop box and resizes it while
converting (kernels.yuv_resized_crop), so no full-size RGB frame is ever made: what VideoDataset does
by default with a VideoTransform. One decoder thread by default (see VideoReader._open).
"""
from __future__ import annotations

import functools
import math
import mmap
import os
import threading
from dataclasses import dataclass

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

import kernels.yuv_resize as kernels_yuv

from .mp4 import parse_mp4
from .transforms import resize_planar

_reformatter = (None, None)  # (pid, VideoReformatter): one per process; it caches its swscale context


def _to_rgb(frame) -> np.ndarray:
    # frame.to_ndarray(format="rgb24") builds a new swscale context per frame, which costs more than the
    # conversion at small sizes; a reused reformatter keeps its context. threads=1: swscale's default
    # thread pool, alive in a parent at fork, can hang forked DataLoader workers in their first
    # conversion; parallelism comes from the loader's workers instead.
    global _reformatter
    if _reformatter[0] != os.getpid():
        _reformatter = (os.getpid(), VideoReformatter())
    return _reformatter[1].reformat(frame, format="rgb24", threads=1).to_ndarray()


# planar 8-bit YUV formats (the op reads their chroma subsampling from the plane sizes): full range?
_PLANAR_YUV = {"yuv420p": False, "yuvj420p": True, "yuv422p": False, "yuvj422p": True, "yuv444p": False,
               "yuvj444p": True, "yuv440p": False, "yuvj440p": True}
# AVColorSpace -> colour matrix, as swscale reads a frame's tag; untagged and others: BT.601
_MATRIX_OF_COLORSPACE = {1: "bt709", 4: "fcc", 7: "smpte240m", 9: "bt2020", 10: "bt2020"}
_AVCOL_RANGE_JPEG = 2


def _yuv_coeffs_of(frame) -> tuple | None:
    """The colour conversion of a planar 8-bit YUV frame (kernels.yuv_coeffs), None for other formats."""
    full = _PLANAR_YUV.get(frame.format.name)
    if full is None:
        return None
    return _coeffs(_MATRIX_OF_COLORSPACE.get(int(frame.colorspace), "bt601"),
                   full or int(frame.color_range) == _AVCOL_RANGE_JPEG)


def _resized_crop_into(frame, box, flip: bool, out: torch.Tensor, t: int) -> None:
    """out[:, t] = the frame's box (top, left, h, w) resized to out's size, RGB, flipped if asked."""
    coeffs = _yuv_coeffs_of(frame)
    if coeffs is None:  # RGB, 10-bit, semi-planar, grey...: through swscale's RGB and the transforms' resize
        top, left, h, w = (int(b) for b in box)
        rgb_1HW3 = _to_rgb(frame)[None, top:top + h, left:left + w]
        out[:, t] = resize_planar(rgb_1HW3, tuple(out.shape[2:]), flip)[:, 0]
        return
    kernels_yuv.yuv_resized_crop(*frame.planes[:3], box, tuple(out.shape[2:]), coeffs=coeffs, flip=flip, out=out, t=t)


_coeffs = functools.lru_cache(maxsize=None)(kernels_yuv.yuv_coeffs)   # (matrix, full_range) -> coefficients


_decoders: dict = {}  # (pid, thread, codec, extradata) -> an open one-thread av.CodecContext, reused clip after clip


def _new_decoder(codec: str, extradata: bytes | None, threads: int):
    cc = av.CodecContext.create(codec, "r")
    if extradata:
        cc.extradata = extradata
    cc.thread_type, cc.thread_count = "AUTO", threads
    return cc


def _shared_decoder(codec: str, extradata: bytes | None):
    """This process's one-thread decoder for a codec configuration, kept rather than opened per clip (what
    av.open does, twice: once to probe the file); flush_buffers() between clips resets it, and every
    clip starts at a keyframe. Only one-thread decoders are kept: a decoder with threads keeps its pool
    alive, and a DataLoader forking a process that holds one can hang its workers."""
    key = (os.getpid(), threading.get_ident(), codec, extradata)  # never shared between workers or threads
    cc = _decoders.get(key)
    if cc is None:
        if len(_decoders) >= 8:  # many encoder configurations: keep a few
            _decoders.clear()
        cc = _decoders[key] = _new_decoder(codec, extradata, 1)
    return cc


def _drop_shared_decoder(codec, extradata) -> None:
    _decoders.pop((os.getpid(), threading.get_ident(), codec, extradata), None)


def _vp9_frames(data) -> list:
    """The frames of one VP9 packet (bytes or a memoryview): a superframe (e.g. a hidden alt-ref frame +
    a shown frame) is split at its index (VP9 bitstream spec, annex B), anything else is one frame."""
    last = data[-1] if len(data) else 0
    if last & 0xE0 == 0xC0:  # superframe marker in the last byte
        n, size = (last & 7) + 1, ((last >> 3) & 3) + 1
        index_len = 2 + size * n
        if len(data) >= index_len and data[-index_len] == last:
            frames, pos = [], 0
            for i in range(n):
                start = len(data) - index_len + 1 + i * size
                k = int.from_bytes(data[start:start + size], "little")
                frames.append(data[pos:pos + k])
                pos += k
            return frames
    return [data]


def _vp9_header(frame) -> tuple[str, bool, int] | None:
    """(kind, error_resilient_mode, refresh_frame_flags) from a VP9 frame's uncompressed header (VP9
    bitstream spec 6.2), kind "key", "intra", "inter" or "show_existing"; None if it does not parse."""
    if len(frame) < 3:
        return None
    v = int.from_bytes(frame[:3], "big")  # the fields below fit in the first 24 bits
    if v >> 22 != 2:  # frame_marker
        return None
    pos = 18 if (v >> 20) & 3 == 3 else 19  # after the profile bits (profile 3 adds a reserved bit)
    if (v >> pos) & 1:  # show_existing_frame: shows an already decoded frame again, changes no state
        return "show_existing", False, 0
    frame_type, show_frame, error_resilient = (v >> (pos - 1)) & 1, (v >> (pos - 2)) & 1, bool((v >> (pos - 3)) & 1)
    pos -= 3
    if frame_type == 0:
        return "key", error_resilient, 0xFF
    if not show_frame:
        pos -= 1
        if (v >> pos) & 1:  # intra_only: refresh_frame_flags further on, not read: taken as "some"
            return "intra", error_resilient, -1
    if not error_resilient:
        pos -= 2  # reset_frame_context
    return "inter", error_resilient, (v >> (pos - 8)) & 0xFF


def vp9_skippable(packet, next_packet) -> bool:
    """True when a VP9 packet's frames may be left undecoded without changing any frame decoded later.

    A frame leaves state behind in three ways: the reference slots it refreshes (refresh_frame_flags),
    the probability context it saves, and its motion vectors, which the next frame predicts from unless
    that frame is error resilient. So a packet is skippable when none of its frames refreshes a slot and
    the next packet starts with a keyframe or an error-resilient frame, which resets the other two: every
    other frame of the VP9 files `python -m engine.datagen prepare` writes (two temporal layers, error
    resilient). Anything that does not parse counts as not skippable.
    """
    for f in _vp9_frames(memoryview(packet)):  # a view of the packet's data: no copy
        h = _vp9_header(f)
        if h is None or (h[0] != "show_existing" and h[2] != 0):
            return False
    nxt = _vp9_header(_vp9_frames(memoryview(next_packet))[0])
    return nxt is not None and (nxt[0] == "key" or nxt[1])


class _NoTimestamps(Exception):
    """Packets or frames without pts: frames cannot be matched by timestamp."""


class _NotAsTable(Exception):
    """Decoded frames disagree with an MP4's sample table (their size): the file is read by libavformat."""


class VideoDecodeError(RuntimeError):
    """A video that cannot be opened or decoded as its metadata promises (truncated, corrupt, empty)."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int
    exact: bool  # num_frames from the container's frame count (else estimated from the duration)
    codec: str   # the decoder's name: "h264", "vp9", "mjpeg", ...


def frame_step_for(video_fps: float, *, fps: float | None = None, duration: float | None = None,
                   frames_per_clip: int | None = None) -> int:
    """V-JEPA 2: step = ceil(video_fps) // fps; or, with a clip duration in seconds, int(duration * fps / fpc)."""
    if (fps is None) == (duration is None):
        raise ValueError("give exactly one of fps= or duration=")
    vfps = math.ceil(video_fps)
    step = vfps // fps if fps is not None else int(duration * vfps / frames_per_clip)
    return max(1, int(step))


def sample_clip_indices(num_video_frames: int, frames_per_clip: int, frame_step: int, num_clips: int = 1,
                        rng: np.random.Generator | None = None, *, random_clip_sampling: bool = True,
                        allow_clip_overlap: bool = False) -> list[np.ndarray]:
    """Frame indices of `num_clips` clips: a list of int64 arrays [frames_per_clip], each within [0, N)."""
    N, fpc, step = int(num_video_frames), int(frames_per_clip), int(frame_step)
    if N <= 0 or fpc <= 0 or step <= 0 or num_clips <= 0:
        raise ValueError(f"bad clip sampling arguments: {N=}, {fpc=}, {step=}, {num_clips=}")
    rng = rng if rng is not None else np.random.default_rng()
    span = (fpc - 1) * step + 1  # frames covered by one clip
    part = N // num_clips  # the reference's partition length
    clips = []
    for i in range(num_clips):
        if part >= span:
            start = int(rng.integers(0, part - span + 1)) if random_clip_sampling else 0
            idx = i * part + start + step * np.arange(fpc)
        elif not allow_clip_overlap or num_clips == 1:
            # short segment: every step-th frame, then repeat the segment's last frame
            seg = max(part, 1)
            idx = i * part + np.minimum(step * np.arange(fpc), seg - 1)
            idx = np.minimum(idx, N - 1)
        else:
            # overlapping clips spread evenly over a video too short to hold them side by side
            first = np.minimum(step * np.arange(fpc), min(span, N) - 1)
            shift = (N - span) // (num_clips - 1) if N > span else 0
            idx = first + i * shift
        clips.append(idx.astype(np.int64))
    return clips


class VideoReader:
    """An open video file: `info` and `decode(frame_indices)`. Use as a context manager (or call close).

    threads: decoding threads (1, the default: none; 0: libavcodec's automatic count; n > 1: n frame or
    slice threads, whichever the codec supports; kept when a fallback pass reopens the file).
    fast_open: read a plain MP4's sample table instead of opening it with libavformat (module docstring);
    other files are opened with libavformat either way.
    """

    def __init__(self, path, seek_threshold: int = 64, threads: int = 1, name: str | None = None,
                 skip_gops: bool = True, fast_open: bool = True):
        # `path` may also be a seekable binary file object (a tar member read into memory); `name`
        # then names it in error messages
        self._file = path if hasattr(path, "read") else None
        self.path = str(name or getattr(path, "name", None) or "<stream>") if self._file is not None else str(path)
        self.seek_threshold, self.skip_gops = seek_threshold, skip_gops
        self._threads = threads
        self._container = self._track = self._own_decoder = None
        self.frames_decoded = 0  # frames the decoder produced (skipped non-reference frames not counted)
        if skip_gops and fast_open:
            self._track = self._read_track()
        if self._track is not None:
            t = self._track
            self.info = VideoInfo(t.num_frames, t.fps, t.width, t.height, True, t.codec)
            self._sample_of = np.argsort(t.display_T)  # display index -> sample (decode order)
            self._key_S = np.flatnonzero(t.keyframe_T)
        else:
            self._open_container()

    def _read_track(self):
        """A plain MP4's sample table (engine.data.mp4), read without libavformat; None for anything else.
        A file is mapped, not read: only the boxes and the clip's samples are touched."""
        try:
            if self._file is not None:
                self._file.seek(0)
                data = self._file.getbuffer() if hasattr(self._file, "getbuffer") else self._file.read()
            else:
                with open(self.path, "rb") as f:
                    data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # missing or empty: av.open names the problem
            return None
        return parse_mp4(data)

    def _open_container(self):
        try:
            self._open()
        except (av.FFmpegError, UnicodeDecodeError) as e:  # garbage or empty files fail here
            raise VideoDecodeError(f"cannot open {self.path}: {e}") from e
        if not self._container.streams.video:
            self.close()
            raise VideoDecodeError(f"no video stream in {self.path}")
        s = self._stream
        rate = s.average_rate or s.guessed_rate or s.base_rate
        fps = float(rate) if rate else 0.0
        self._start_pts = s.start_time or 0
        exact = bool(s.frames and s.frames > 0)
        if exact:
            n = int(s.frames)
        elif s.duration and fps:
            n = int(s.duration * s.time_base * fps + 1e-6)
        elif self._container.duration and fps:
            n = int(self._container.duration / av.time_base * fps + 1e-6)
        else:
            n = sum(1 for _ in self._container.decode(s))  # no metadata at all: count once
            self._container.seek(0)
        if n <= 0 or s.width <= 0:
            self.close()
            raise VideoDecodeError(f"empty video {self.path}")
        self.info = VideoInfo(n, fps, int(s.width), int(s.height), exact, s.codec_context.name)
        self._tb = float(s.time_base)  # a Fraction, converted once: Fraction arithmetic per packet is slow

    def _open(self):
        """(Re)open the file with libavformat: the container, its video stream (when it has one) and its
        decoder threads."""
        if self._file is not None:
            self._file.seek(0)
        self._container = av.open(self._file if self._file is not None else self.path)
        if self._container.streams.video:
            self._stream = s = self._container.streams.video[0]
            # One thread by default: a reader lives for one clip, and libavcodec's automatic threads (a pool
            # started per open, slice threads synchronised per frame) cost more CPU than a short clip wins
            # back; the loader's workers are the parallelism (bench/results/loader_cpu.csv). The reference
            # reads with decord's num_threads=-1, which libavcodec also runs without threads.
            s.thread_type, s.codec_context.thread_count = "AUTO", self._threads

    # -- decoding
    def _groups(self, targets: np.ndarray) -> list[np.ndarray]:
        """The needed frames split into runs, wherever the gap to the next one is worth a seek."""
        return np.split(targets, np.nonzero(np.diff(targets) > self.seek_threshold)[0] + 1)

    def _needs_seek(self, group: np.ndarray, pos: int | None) -> bool:
        """Whether to seek to a group rather than read on to it from `pos` (None: nothing read yet)."""
        return int(group[0]) - (pos or 0) > self.seek_threshold

    def _seek(self, target: int) -> None:
        """Seek the container to the keyframe at or before frame `target`."""
        self._container.seek(self._start_pts + int(target / self.info.fps / self._tb), stream=self._stream,
                             backward=True, any_frame=False)

    def _frame_index(self, pts) -> int:
        if pts is None:
            raise _NoTimestamps
        return int(round((pts - self._start_pts) * self._tb * self.info.fps))

    def _from_seek(self, target: int):
        """Seek to the keyframe at or before `target`; yield (index from pts, frame)."""
        self._seek(target)
        for frame in self._container.decode(self._stream):
            if frame.pts is None:
                raise VideoDecodeError(f"frames without timestamps after a seek in {self.path}")
            yield self._frame_index(frame.pts), frame

    def _decode_pass(self, targets: np.ndarray, allow_seek: bool) -> dict:
        """Every frame decoded in order up to the last needed one, after a seek to a group's keyframe
        when allow_seek and the gap is worth it: for files the packet passes cannot read (no
        timestamps, odd keyframe groups); without a seek, frames are counted, not timed."""
        got, frames, pos = {}, None, None
        for group in self._groups(targets) if allow_seek else [targets]:
            if allow_seek and self._needs_seek(group, pos):
                frames = self._from_seek(int(group[0]))
            elif frames is None:
                frames = enumerate(self._container.decode(self._stream))
            want, last = set(group.tolist()), int(group[-1])
            for k, frame in frames:
                self.frames_decoded += 1
                pos = k + 1
                if k in want:
                    got[k] = frame
                if k >= last:
                    break
        return got

    def _decode_gop(self, cc, gop: list, want: set, vp9: bool, index_of, got: dict) -> None:
        """Decode one keyframe group, [(frame index, packet)] in decode order, up to its last needed frame,
        into got {frame index: frame}; then drain and reset the decoder, so the next group starts clean.

        A frame nobody needs and nothing references is not decoded at all (H.264's non-reference
        B-frames, skipped by the decoder; VP9's, recognised from their headers by vp9_skippable, as its
        decoder ignores skip_frame): strided clips then decode about half the frames.
        """
        need = [j for j, (k, _) in enumerate(gop) if k in want]
        if not need:
            return
        prefix = gop[:need[-1] + 1]  # the last packet is needed, so a skipped one has a next

        def collect(frames):
            for f in frames:
                self.frames_decoded += 1
                k = index_of(f)
                if k in want and k not in got:
                    got[k] = f

        for j, (k, p) in enumerate(prefix):
            if vp9 and k not in want and vp9_skippable(p, prefix[j + 1][1]):
                continue
            cc.skip_frame = "DEFAULT" if k in want else "NONREF"
            collect(cc.decode(p))
        cc.skip_frame = "DEFAULT"
        collect(cc.decode(None))
        cc.flush_buffers()

    def _packet_pass(self, targets: np.ndarray) -> dict:
        """Decode only the keyframe groups holding needed frames (_decode_gop), packets demuxed by
        libavformat up to the last needed frame; frames are identified by timestamp.
        Raises _NoTimestamps when packets lack them (the caller falls back to _decode_pass).
        """
        s, want = self._stream, set(targets.tolist())
        cc = s.codec_context
        reorder = bool(getattr(cc, "has_b_frames", True))  # B-frames: decode order != display order
        vp9 = cc.name in ("vp9", "libvpx-vp9")
        got, demux, carry, pos = {}, None, None, None
        for group in self._groups(targets):
            last = int(group[-1])
            if self._needs_seek(group, pos):
                self._seek(int(group[0]))
                demux, carry = self._container.demux(s), None
                cc.flush_buffers()
            elif demux is None:
                demux = self._container.demux(s)
            gops, carry = ([carry] if carry else []), None
            for p in demux:
                if p.pts is None and p.size == 0:
                    continue  # the demuxer's end-of-stream packet
                k = self._frame_index(p.pts)
                pos = max(pos or 0, k)
                if k > last and (not reorder or p.is_keyframe):
                    # first packet past this group: kept, with its GOP's earlier packets, for the next group
                    carry = [(k, p)] if p.is_keyframe or not gops else gops[-1] + [(k, p)]
                    break
                if p.is_keyframe or not gops:
                    gops.append([])
                gops[-1].append((k, p))
            for gop in gops:
                self._decode_gop(cc, gop, want, vp9, lambda f: self._frame_index(f.pts), got)
        return got

    def _track_pass(self, targets: np.ndarray) -> dict | None:
        """_packet_pass for a parsed MP4: packets cut straight from the file's sample table, decoded by this
        process's decoder for the codec (_shared_decoder: opened once, flushed between clips). None when
        anything fails: the caller opens the file with PyAV and decodes it that way instead."""
        t = self._track
        if int(targets[-1]) >= t.num_frames:
            return None
        sample_K = self._sample_of[targets]
        gop_K = self._key_S[np.searchsorted(self._key_S, sample_K, side="right") - 1]
        if self._threads == 1:
            cc = _shared_decoder(t.codec, t.extradata)
        else:  # its own, with threads, dropped with this reader
            cc = self._own_decoder = self._own_decoder or _new_decoder(t.codec, t.extradata, self._threads)

        def index_of(f) -> int:
            if f.pts is None:
                raise _NoTimestamps
            if (f.width, f.height) != (t.width, t.height):
                raise _NotAsTable  # the sample description's size is not the coded one: ask libavformat
            return int(t.display_T[f.pts])

        def packet(j: int) -> av.Packet:
            p = av.Packet(t.sample(j))
            p.pts = j  # the sample index travels with the frame through reordering
            return p

        got, want = {}, set(targets.tolist())
        try:
            for g in np.unique(gop_K).tolist():
                last = int(sample_K[gop_K == g].max())
                gop = [(int(t.display_T[j]), packet(j)) for j in range(g, last + 1)]
                self._decode_gop(cc, gop, want, t.codec == "vp9", index_of, got)
        except (av.FFmpegError, _NoTimestamps, _NotAsTable, IndexError):
            _drop_shared_decoder(t.codec, t.extradata)
            self._own_decoder = None
            return None
        return got

    def _reopen(self):
        self._container.close()
        self._open()

    def _frames(self, frame_indices) -> tuple[np.ndarray, dict]:
        """(frame indices [T] as given, {index: decoded av.VideoFrame} covering each of them).

        The frames are kept as the decoder produced them (planar YUV, refcounted, no copy) and converted
        only once the clip is complete: to RGB by `decode`, straight to the crop by `decode_resized`.
        """
        idx_T = np.asarray(frame_indices, dtype=np.int64).ravel()
        if idx_T.size == 0 or idx_T.min() < 0:
            raise ValueError(f"bad frame indices {idx_T}")
        targets = np.unique(idx_T)
        if self._track is not None:
            got = self._track_pass(targets)
            if got is not None and len(got) == len(targets):
                return idx_T, got
            self._track = None  # decode it the way libavformat reads it, which reports what is wrong
            self._open_container()  # (and its `info`, from the decoded stream, replaces the table's)
        try:
            try:
                got = self._packet_pass(targets) if self.skip_gops else {}
            except (_NoTimestamps, av.FFmpegError):  # the frame-by-frame pass below decides
                got = {}
            if len(got) < len(targets):  # no timestamps, odd GOPs, or truncated: decode frame by frame
                if self.skip_gops:
                    self._reopen()
                got = self._decode_pass(targets, allow_seek=True)
            if len(got) < len(targets) and targets[-1] > self.seek_threshold:
                # a seek may land past its target in odd files: retry once, decoding from the start
                self._reopen()
                got = self._decode_pass(targets, allow_seek=False)
        except av.FFmpegError as e:
            raise VideoDecodeError(f"decode error in {self.path}: {e}") from e
        missing = [int(k) for k in targets if k not in got]
        if missing:
            if not got or self.info.exact:
                raise VideoDecodeError(f"{self.path}: frames {missing[:4]} not decodable "
                                       f"({len(got)} of {len(targets)} decoded; truncated?)")
            # estimated frame counts can overshoot by a frame or two: pad with the last real frame
            for k in missing:
                earlier = [j for j in got if j < k]
                got[k] = got[max(earlier)] if earlier else got[min(got)]
        return idx_T, got

    def decode(self, frame_indices) -> np.ndarray:
        """uint8 [T, H, W, 3] for the given frame indices (any order, repeats allowed)."""
        idx_T, got = self._frames(frame_indices)
        rgb = {k: _to_rgb(f) for k, f in got.items()}
        return np.stack([rgb[int(k)] for k in idx_T])

    def decode_resized(self, frame_indices, size, boxes, flips=False) -> torch.Tensor:
        """uint8 [3, T, size[0], size[1]]: frame t's box boxes[t] = (top, left, h, w), resized bilinearly
        (align_corners=False, no antialias) and flipped left-right where flips[t].

        boxes: one (top, left, h, w) for every frame or one per frame ([T, 4]); flips: a bool or [T].
        The same pixels as cropping and resizing `decode`'s RGB frames (VideoTransform's resize) up to
        rounding, without ever converting a whole frame: planar YUV frames go through
        kernels.yuv_resized_crop, other pixel formats through RGB.
        """
        idx_T, got = self._frames(frame_indices)
        T = len(idx_T)
        boxes_T4 = np.broadcast_to(np.asarray(boxes, dtype=np.int64).reshape(-1, 4), (T, 4))
        flips_T = np.broadcast_to(np.asarray(flips, dtype=bool).reshape(-1), (T,))
        out = torch.empty(3, T, int(size[0]), int(size[1]), dtype=torch.uint8)
        frames = [got[k] for k in idx_T.tolist()]
        for k, frame in zip(idx_T.tolist(), frames):
            if frame.width != self.info.width or frame.height != self.info.height:
                raise VideoDecodeError(f"{self.path}: frame {k} is {frame.width}x{frame.height}, the stream "
                                       f"{self.info.width}x{self.info.height} (size changes mid-stream)")
        coeffs = {_yuv_coeffs_of(f) for f in frames}
        if len(coeffs) == 1 and None not in coeffs:  # one conversion for the clip: one call
            kernels_yuv.yuv_resized_crop_frames([f.planes for f in frames], boxes_T4, flips_T, coeffs=coeffs.pop(),
                                                out=out)
            return out
        for t, frame in enumerate(frames):
            _resized_crop_into(frame, boxes_T4[t], bool(flips_T[t]), out, t)
        return out

    def close(self):
        self._track = self._own_decoder = None
        if getattr(self, "_container", None) is not None:
            self._container.close()
            self._container = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def decode_clip(path, frame_indices, seek_threshold: int = 64) -> np.ndarray:
    """Decode the given frames of one video: uint8 [T, H, W, 3]."""
    with VideoReader(path, seek_threshold=seek_threshold) as vr:
        return vr.decode(frame_indices)
