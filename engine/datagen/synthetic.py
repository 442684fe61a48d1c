"""Procedural videos of moving objects, written as real video files (PyAV), plus a reference index CSV.

Usage:
    from engine.datagen.synthetic import generate_videos, generate_split
    csv = generate_videos("data/generated/toy", 60, num_frames=16, size=64, fps=8, codec="h264", seed=0)
    train_csv, val_csv = generate_split("data/generated/toy", train=300, val=60)
    # each CSV line: "/abs/path/000017.mp4 2" (space separated, as in the V-JEPA reference)

Every video shows one "actor" object over a static background with 0-3 static distractors. The class
is the actor's MOTION; appearance (shape, colours, size, background, distractors, start position,
speed, direction sign) is drawn independently of the class, so a single frame does not reveal it.
The classes are chosen to be invariant under a horizontal flip (the training transform flips):
"horizontal" covers both left and right, "orbit" both senses, so flipping never changes a label.

    static      the actor does not move
    horizontal  constant speed along x, bouncing off the side walls
    vertical    constant speed along y, bouncing off the top and bottom
    orbit       circular motion around a random centre, either sense
    gravity     a ball under gravity bouncing on the floor (random apex height), drifting sideways
    pulse       the actor stays in place and its size oscillates (num_classes=6 only)

Intuitive physics (`generate_events`, `python -m engine.datagen events`): pairs of videos of one scene (the
motion scenes above) with one more object, the "event actor", moving in a straight line; in the
possible video of a pair it behaves, in the impossible one it does not, from a frame in the middle on:

    teleport      it jumps to another place and moves on from there (possible: it keeps moving)
    vanish        it disappears (possible: it stays)
    pass_through  it runs into a static block and passes through it (possible: it bounces back)

Three worlds hold these events (`world=`): "free", the motion scenes, whose objects overlap freely, each drawn
in front of the ones before (so passing through another object is what objects do there); "solid"
(engine.datagen.physics), objects moving straight at constant speed and colliding elastically with the
walls, each other and static blocks, so nothing overlaps unless the event makes it; and "lattice"
(engine.datagen.lattice), one ball stepping a cell a frame among static blocks, each object in one cell.

Physics is in pixels per second (scaled by size/64), so a higher fps gives the same motion, sampled
finer. Video i's content depends only on (seed, split, i): adding videos never changes earlier ones.
Also here: `write_video` (atomic PyAV writer) and `write_counter_video` / `read_counter`, a video whose
frames encode their own index (for testing clip sampling after a lossy decode).
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import av
import numpy as np

from .drawing import EVENTS, SHAPES, contrasting_colour, random_background, shape_alpha
from .lattice import render_lattice_event_clip
from .physics import collision_radius, place_free, simulate

MOTION_CLASSES = ("static", "horizontal", "vertical", "orbit", "gravity", "pulse")

# codec name -> (encoder, container format, file suffix, pixel format, encoder options)
CODECS = {
    # mbtree off: x264's macroblock-tree rate control gave run-to-run different bytes here
    "h264": ("libx264", "mp4", ".mp4", "yuv420p", {"preset": "veryfast", "crf": "18", "x264-params": "mbtree=0"}),
    "vp9": ("libvpx-vp9", "mp4", ".mp4", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}),
    "mjpeg": ("mjpeg", "avi", ".avi", "yuvj420p", {}),
    # lossless RGB H.264: decodes bit-exact. For the simulator sources, whose frames a planner later sees
    # straight from the renderer: on the 64 px arm frames, 4:2:0 chroma alone moves a pixel by 3.1 / 255 on
    # average, as much as one 4 cm step of the arm does (3.1-3.9 / 255).
    "h264rgb": ("libx264rgb", "mp4", ".mp4", "rgb24", {"preset": "veryfast", "qp": "0"}),
}


# ----------------------------------------------------------------------------- writing video files
def rgb_to_yuv420(frames_THW3: np.ndarray, full_range: bool = False) -> np.ndarray:
    """uint8 RGB [T, H, W, 3] -> planar YUV 4:2:0 [T, H*3/2, W] (BT.601; limited range unless full_range).

    Done here, vectorised over all frames, rather than by PyAV's per-frame swscale call inside encode():
    one explicit, versioned conversion keeps the generated files bit-identical for a seed.
    """
    T, H, W, _ = frames_THW3.shape
    if H % 2 or W % 2:
        raise ValueError(f"frame size must be even for 4:2:0, got {H}x{W}")
    rgb = frames_THW3.astype(np.float32)
    if full_range:  # JPEG (yuvj420p)
        m = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
        off = (0, 128, 128)
    else:
        m = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255.0
        off = (16, 128, 128)
    yuv = rgb @ m.T.astype(np.float32) + np.asarray(off, np.float32)  # [T, H, W, 3]
    y = yuv[..., 0]
    uv = yuv[..., 1:].reshape(T, H // 2, 2, W // 2, 2, 2).mean((2, 4))  # 2x2 chroma averages
    u = uv[..., 0].reshape(T, H // 4, W)  # each chroma plane is H/2 x W/2 = H/4 rows of W
    v = uv[..., 1].reshape(T, H // 4, W)
    out = np.concatenate([y, u, v], axis=1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def write_video(path, frames_THW3: np.ndarray, fps: int = 8, codec: str = "h264", gop: int | None = None) -> Path:
    """Encode uint8 frames [T, H, W, 3] to `path` atomically (a temp name, then os.replace)."""
    encoder, fmt, _, pix_fmt, options = CODECS[codec]
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    T, H, W, _ = frames_THW3.shape
    container = av.open(str(tmp), "w", format=fmt)
    try:
        stream = container.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, pix_fmt
        stream.options = dict(options)
        stream.codec_context.thread_count = 1  # tiny frames: threads only add latency; also deterministic
        if codec == "mjpeg":
            stream.codec_context.bit_rate = 8_000_000  # the default bit rate blurs small frames badly
        if gop is not None:
            stream.codec_context.gop_size = gop
        planes_T = frames_THW3 if pix_fmt == "rgb24" else rgb_to_yuv420(frames_THW3, full_range=pix_fmt == "yuvj420p")
        for t in range(T):
            frame = av.VideoFrame.from_ndarray(planes_T[t], format=pix_fmt)
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush delayed frames
            container.mux(packet)
    finally:
        container.close()
    os.replace(tmp, path)
    return path


def write_counter_video(path, num_frames: int, fps: int = 8, size: int = 64, codec: str = "h264",
                        gop: int | None = None) -> Path:
    """A video whose frame k shows k in binary: 16 bars (2 rows of 8), white = bit set. Survives lossy codecs."""
    k_T = np.arange(num_frames)
    bits_T16 = (k_T[:, None] >> np.arange(16)[None, :]) & 1
    bar = size // 8
    # pixel (y, x) shows bit (y >= size/2) * 8 + x // bar
    bit_of_px_HW = (np.arange(size)[:, None] >= size // 2) * 8 + np.minimum(np.arange(size)[None, :] // bar, 7)
    frames = (bits_T16[:, bit_of_px_HW] * 255).astype(np.uint8)  # [T, H, W]
    return write_video(path, np.repeat(frames[..., None], 3, axis=-1), fps=fps, codec=codec, gop=gop)


def read_counter(frames_THW3) -> np.ndarray:
    """Inverse of write_counter_video for decoded (or cropped-to-full) frames: the index of each frame."""
    f = np.asarray(frames_THW3, dtype=np.float32).mean(-1)  # [T, H, W]
    T, H, W = f.shape
    bar = W // 8
    # sample the centre of each bar, away from edges the codec smears
    ys = [H // 4, 3 * H // 4]
    xs = [b * bar + bar // 2 for b in range(8)]
    bits = np.stack([f[:, y, x] > 127 for y in ys for x in xs], axis=1)  # [T, 16]
    return (bits.astype(np.int64) << np.arange(16)).sum(1)


def _reflect(p, lo, hi):
    """Position of a point moving freely from p, bounced elastically between lo and hi (vectorised)."""
    span = hi - lo
    m = np.mod(p - lo, 2 * span)
    return lo + np.where(m > span, 2 * span - m, m)


def trajectory(cls: str, rng: np.random.Generator, num_frames: int, size: int, fps: float, r: float):
    """Actor centre (y, x) and radius per frame: arrays [T, 2] and [T]. Units: pixels, seconds."""
    s = size / 64.0
    t_T = np.arange(num_frames) / fps
    lo, hi = r, size - 1 - r
    y0, x0 = rng.uniform(lo, hi, 2)
    speed = rng.uniform(14, 24) * s * rng.choice([-1.0, 1.0])
    radius_T = np.full(num_frames, r)
    if cls in ("static", "pulse"):
        yx_T2 = np.tile([y0, x0], (num_frames, 1))
        if cls == "pulse":
            amp, f, ph = rng.uniform(0.35, 0.5), rng.uniform(0.6, 1.0), rng.uniform(0, 2 * np.pi)
            radius_T = r * (1 + amp * np.sin(2 * np.pi * f * t_T + ph))
    elif cls == "horizontal":
        yx_T2 = np.stack([np.full(num_frames, y0), _reflect(x0 + speed * t_T, lo, hi)], 1)
    elif cls == "vertical":
        yx_T2 = np.stack([_reflect(y0 + speed * t_T, lo, hi), np.full(num_frames, x0)], 1)
    elif cls == "orbit":
        R = rng.uniform(10, 18) * s
        cy, cx = rng.uniform(lo + R, hi - R, 2)
        phase = rng.uniform(0, 2 * np.pi) + speed / R * t_T  # angular speed = linear speed / R
        yx_T2 = np.stack([cy + R * np.sin(phase), cx + R * np.cos(phase)], 1)
    elif cls == "gravity":
        # an elastic ball bouncing on the floor (y = hi) with a random apex height and phase, drifting in x;
        # closed form so it is vectorised: tau = time since the last apex, in [-P/2, P/2)
        g = 70.0 * s
        h = rng.uniform(min(20 * s, hi - lo), hi - lo)
        period = 2 * np.sqrt(2 * h / g)
        tau_T = np.mod(rng.uniform(0, period) + t_T, period) - period / 2
        vx = rng.uniform(6, 14) * s * rng.choice([-1.0, 1.0])
        yx_T2 = np.stack([hi - h + 0.5 * g * tau_T**2, _reflect(x0 + vx * t_T, lo, hi)], 1)
    else:
        raise ValueError(f"unknown motion class {cls!r}")
    return yx_T2.astype(np.float32), radius_T.astype(np.float32)


def render_clip(label: int, rng: np.random.Generator, num_frames: int = 16, size: int = 64, fps: float = 8,
                classes=MOTION_CLASSES, *, actors: int = 1, radius=(4.5, 8.0), distractors: int = 3,
                background: str = "random", flicker: bool = False):
    """Draw one video of motion class `classes[label]`: (uint8 frames [T, H, W, 3], first actor's centre [T, 2]).

    actors: how many objects move, each with the class's motion and its own shape, colour, size, start
    and speed (drawn in order, later ones in front); radius: the actors' radius range in pixels at 64 px;
    distractors: at most this many static objects baked into the background; background: "random" (a
    colour, gradient and stripes drawn per clip) or "plain" (the same mid grey in every clip); flicker:
    each actor takes a new random colour in every frame (appearance that cannot be predicted, motion
    that can).
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if actors < 1 or distractors < 0 or not 0 < radius[0] <= radius[1]:
        raise ValueError(f"render_clip: need actors >= 1, distractors >= 0 and 0 < radius[0] <= radius[1]; got "
                         f"actors={actors}, distractors={distractors}, radius={tuple(radius)}")
    if background not in ("random", "plain"):
        raise ValueError(f"background must be 'random' or 'plain', got {background!r}")
    bg_HW3 = random_background(rng, size) if background == "random" else np.full((size, size, 3), 96.0, np.float32)
    s = size / 64.0
    for _ in range(rng.integers(0, distractors + 1)):  # static distractors, baked into the background
        cy, cx, rr = rng.uniform(0, size, 2).tolist() + [rng.uniform(3, 8) * s]
        a = shape_alpha(SHAPES[rng.integers(len(SHAPES))], yy - cy, xx - cx, rr)[..., None]
        bg_HW3 = bg_HW3 * (1 - a) + a * contrasting_colour(rng, bg_HW3.mean((0, 1)))
    frames = np.broadcast_to(bg_HW3, (num_frames, size, size, 3))
    first_yx_T2 = None
    for _ in range(actors):
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = contrasting_colour(rng, bg_HW3.mean((0, 1)))
        r = rng.uniform(*radius) * s
        yx_T2, radius_T = trajectory(classes[label], rng, num_frames, size, fps, r)
        if flicker:  # drawn after the trajectory: the first actor moves as in the clip without flicker
            colour = np.stack([contrasting_colour(rng, bg_HW3.mean((0, 1))) for _ in range(num_frames)])[:, None, None]
        dy_THW = yy[None] - yx_T2[:, 0, None, None]
        dx_THW = xx[None] - yx_T2[:, 1, None, None]
        a_THW1 = shape_alpha(shape, dy_THW, dx_THW, radius_T[:, None, None])[..., None]
        frames = frames * (1 - a_THW1) + a_THW1 * colour
        first_yx_T2 = yx_T2 if first_yx_T2 is None else first_yx_T2
    return np.clip(frames + 0.5, 0, 255).astype(np.uint8), first_yx_T2


def render_event_clip(event: str, impossible: bool, rng: np.random.Generator, num_frames: int = 16,
                      size: int = 64, fps: float = 8, num_classes: int = len(MOTION_CLASSES),
                      event_radius=None, event_speed=(14.0, 24.0), **scene):
    """One video of an event pair: (uint8 frames [T, H, W, 3], event frame). The rng draws do not depend
    on `impossible`, so both videos of a pair drawn from equal rngs show the same scene and differ only
    from the event frame on. `scene`: render_clip's keyword arguments (actors, radius, background, ...).
    event_radius (default: the scene's radius range) and event_speed (px/s at 64 px): the ranges the
    event's object is drawn from; a bigger, slower object makes a clearer event."""
    if event not in EVENTS:
        raise ValueError(f"event must be one of {EVENTS}, got {event!r}")
    label = int(rng.integers(num_classes))
    frames, _ = render_clip(label, rng, num_frames, size, fps, **scene)
    frames = frames.astype(np.float32)
    s = size / 64.0
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    lo_r, hi_r = scene.get("radius", (4.5, 8.0))
    r = rng.uniform(*(event_radius or (lo_r, hi_r))) * s
    shape, colour = SHAPES[rng.integers(len(SHAPES))], contrasting_colour(rng, frames[0].mean((0, 1)))
    k = int(rng.integers(num_frames // 3, 2 * num_frames // 3 + 1))   # the event frame
    t_T = np.arange(num_frames) / fps
    lo, hi = r, size - 1 - r
    speed = rng.uniform(*event_speed) * s
    alpha_T = np.ones(num_frames, np.float32)
    if event == "pass_through":
        # a block in the actor's path, reached at frame k: possible = it bounces back, impossible = it goes on
        br = rng.uniform(lo_r, hi_r) * s
        y0 = rng.uniform(lo, hi)
        direction = rng.choice([-1.0, 1.0])
        x_contact = size / 2 + rng.uniform(-0.15, 0.15) * size
        xb = x_contact + direction * (r + br)
        x_T = x_contact + direction * speed * (t_T - t_T[k])        # free flight, at contact at frame k
        if not impossible:
            x_T = np.where(np.arange(num_frames) > k, 2 * x_contact - x_T, x_T)
        yx_T2 = np.stack([np.full(num_frames, y0), x_T], 1)
        block_shape = SHAPES[rng.integers(len(SHAPES))]
        block_colour = contrasting_colour(rng, frames[0].mean((0, 1)))
        a = shape_alpha(block_shape, yy - y0, xx - xb, br)[None, ..., None]
        frames = frames * (1 - a) + a * block_colour
    else:
        y0, x0 = rng.uniform(lo, hi, 2)
        ang = rng.uniform(0, 2 * np.pi)
        yx_T2 = np.stack([_reflect(y0 + np.sin(ang) * speed * t_T, lo, hi),
                          _reflect(x0 + np.cos(ang) * speed * t_T, lo, hi)], 1)
        jump_yx = rng.uniform(lo, hi, 2)   # where a teleport lands (at least 3 radii away)
        if np.hypot(*(jump_yx - yx_T2[k])) < 3 * r:
            jump_yx = np.where(yx_T2[k] < size / 2, hi - (jump_yx - lo) * 0.3, lo + (hi - jump_yx) * 0.3)
        if impossible and event == "teleport":
            yx_T2[k:] = np.stack([_reflect(jump_yx[0] + yx_T2[k:, 0] - yx_T2[k, 0], lo, hi),
                                  _reflect(jump_yx[1] + yx_T2[k:, 1] - yx_T2[k, 1], lo, hi)], 1)
        if impossible and event == "vanish":
            alpha_T[k:] = 0.0
    a_THW1 = shape_alpha(shape, yy[None] - yx_T2[:, 0, None, None], xx[None] - yx_T2[:, 1, None, None], r)[..., None]
    frames = frames * (1 - a_THW1 * alpha_T[:, None, None, None]) + a_THW1 * alpha_T[:, None, None, None] * colour
    return np.clip(frames + 0.5, 0, 255).astype(np.uint8), k


def render_solid_event_clip(event: str, impossible: bool, rng: np.random.Generator, num_frames: int = 16,
                            size: int = 64, fps: float = 8, **options):
    """One video of an event pair in the solid world: (uint8 frames [T, H, W, 3], event frame). `options`:
    solid_event_scene's keywords. The rng draws do not depend on `impossible`: a pair's two videos show
    the same world up to the event."""
    scene = solid_event_scene(event, impossible, rng, num_frames, size, fps, **options)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    frames = np.broadcast_to(scene["background"], (num_frames, size, size, 3)).astype(np.float32)
    pos_TN2, alive_TN = scene["pos"], scene["alive"]
    for i, (shape, colour, r) in enumerate(zip(scene["shapes"], scene["colours"], scene["radius"])):
        a_THW1 = shape_alpha(shape, yy[None] - pos_TN2[:, i, 0, None, None], xx[None] - pos_TN2[:, i, 1, None, None],
                             r)[..., None] * alive_TN[:, i, None, None, None]
        frames = frames * (1 - a_THW1) + a_THW1 * colour
    return np.clip(frames + 0.5, 0, 255).astype(np.uint8), scene["event_frame"]


def solid_event_scene(event: str, impossible: bool, rng: np.random.Generator, num_frames: int = 16,
                      size: int = 64, fps: float = 8, *, actors: int = 3, radius=(6.0, 10.0),
                      blocks: int = 1, background: str = "plain", event_radius=None,
                      event_speed=(14.0, 24.0), speed=(14.0, 24.0), tries: int = 1000) -> dict:
    """The world of one solid event video (engine.datagen.physics), before drawing: a dict of "shapes",
    "colours", "radius" (drawn, px), "collision_radius", "pos" [T, N, 2], "alive" [T, N], "background"
    [H, W, 3], "event_frame". Body 0 is the event's object, bodies 1..blocks the static blocks, then the
    `actors`, which move at `speed` (px/s at 64 px) in random directions and collide elastically with the
    walls, with each other, with the event's object and with the blocks; nothing overlaps. The event:
    teleport, the object is put at a free place (>= 3 radii away) at the event frame; vanish, it is gone
    from then on; pass_through, it is aimed at the first block and first touches it just before the event
    frame, where it bounces off (possible) or goes on through it (impossible)."""
    if event not in EVENTS:
        raise ValueError(f"event must be one of {EVENTS}, got {event!r}")
    if (actors < 0 or blocks < (event == "pass_through") or not 0 < radius[0] <= radius[1]
            or not 0 <= speed[0] <= speed[1]):
        raise ValueError(f"solid_event_scene: need actors >= 0, blocks >= 1 for pass_through, "
                         f"0 < radius[0] <= radius[1] and 0 <= speed[0] <= speed[1]; got actors={actors}, "
                         f"blocks={blocks}, radius={tuple(radius)}, speed={tuple(speed)}")
    if background not in ("random", "plain"):
        raise ValueError(f"background must be 'random' or 'plain', got {background!r}")
    s = size / 64.0
    bg_HW3 = random_background(rng, size) if background == "random" else np.full((size, size, 3), 96.0, np.float32)
    bg_mean = bg_HW3.mean((0, 1))
    for _ in range(tries):
        # bodies: the event's object (0), the blocks (1 .. blocks), the actors
        k = int(rng.integers(num_frames // 3, 2 * num_frames // 3 + 1))
        shapes = [SHAPES[i] for i in rng.integers(len(SHAPES), size=1 + blocks + actors)]
        colours = [contrasting_colour(rng, bg_mean) for _ in shapes]
        draw_r = np.concatenate([rng.uniform(*(event_radius or radius), 1), rng.uniform(*radius, blocks + actors)]) * s
        col_r = np.array([collision_radius(sh, r) for sh, r in zip(shapes, draw_r)])
        static = np.arange(len(shapes)) - 1 < blocks
        static[0] = False
        ang = rng.uniform(0, 2 * np.pi, len(shapes))
        spd = np.concatenate([rng.uniform(*event_speed, 1), rng.uniform(*speed, blocks + actors)]) * s
        v_N2 = np.stack([np.sin(ang), np.cos(ang)], 1) * spd[:, None]
        p_N2 = np.zeros((len(shapes), 2))
        offset, phase, u_2 = rng.uniform(-0.3, 0.3), rng.uniform(0, 1), rng.uniform(0, 1, 2)
        jump_yx_K2 = rng.uniform(col_r[0], size - 1 - col_r[0], (200, 2))   # where a teleport may land
        order = list(range(1, len(shapes)))
        if event == "pass_through":
            # the object aimed at the first block, to touch it at (k - phase) / fps; the block is placed where
            # both it and the object's start are inside the walls
            reach = col_r[0] + col_r[1]
            lateral = offset * reach
            along = np.sqrt(reach**2 - lateral**2) + spd[0] * (k - phase) / fps
            direction, across = v_N2[0] / spd[0], np.array([-v_N2[0, 1], v_N2[0, 0]]) / spd[0]
            start_2 = -direction * along + across * lateral            # the object's start from the block
            lo_2 = np.maximum(col_r[1], col_r[0] - start_2)
            hi_2 = np.minimum(size - 1 - col_r[1], size - 1 - col_r[0] - start_2)
            if (lo_2 > hi_2).any():
                continue
            p_N2[1] = lo_2 + u_2 * (hi_2 - lo_2)
            p_N2[0] = p_N2[1] + start_2
            order = order[1:]
            placed = [0, 1]
        else:
            order = [0] + order
            placed = []
        ok = True
        for i in order:
            yx = place_free(rng, col_r[i], p_N2[placed], col_r[placed], size=size)
            if yx is None:
                ok = False
                continue
            p_N2[i] = yx
            placed.append(i)
        inside = ((p_N2 >= col_r[:, None]) & (p_N2 <= size - 1 - col_r[:, None])).all()
        gap_NN = np.sqrt(((p_N2[None] - p_N2[:, None]) ** 2).sum(-1)) - col_r[None] - col_r[:, None]
        if not ok or not inside or (gap_NN + 2 * np.eye(len(shapes)) * size <= 0).any():
            continue
        kw = dict(size=size, num_frames=num_frames, fps=fps)
        pos_TN2, alive_TN, contact_NN = simulate(p_N2, v_N2, col_r, static, **kw)
        if event == "pass_through":
            # accepted when the object's first contact is the block's, between frame k - 1 and frame k, and
            # going on it gets more than half into the block (the simulation draws nothing: both videos of a
            # pair run it alike)
            first = contact_NN[0]
            if not (np.argmin(first) == 1 and k - 1 < first[1] <= k):
                continue
            through_TN2, through_alive_TN, _ = simulate(p_N2, v_N2, col_r, static, ignore_pairs=[(0, 1)], **kw)
            if (col_r[0] + col_r[1] - np.hypot(*(through_TN2[k:, 0] - through_TN2[k:, 1]).T)).max() <= col_r[0]:
                continue
            if impossible:
                pos_TN2, alive_TN = through_TN2, through_alive_TN
        elif impossible and event == "vanish":
            pos_TN2, alive_TN, _ = simulate(p_N2, v_N2, col_r, static, remove=(0, k), **kw)
        elif event == "teleport":
            others = np.arange(1, len(shapes))
            far = np.hypot(*(jump_yx_K2 - pos_TN2[k, 0]).T) >= 3 * draw_r[0]
            gap_KN = np.sqrt(((jump_yx_K2[:, None] - pos_TN2[k, others][None]) ** 2).sum(-1)) - col_r[others] - col_r[0]
            free = np.nonzero(far & (gap_KN > 1).all(1))[0]
            if not len(free):
                continue
            if impossible:
                pos_TN2, alive_TN, _ = simulate(p_N2, v_N2, col_r, static, teleport=(0, k, jump_yx_K2[free[0]]),
                                                **kw)
        break
    else:
        raise ValueError(f"solid_event_scene: no {event} scene found in {tries} tries for size={size}, "
                         f"actors={actors}, blocks={blocks}, radius={tuple(radius)}; use fewer or smaller objects")
    return dict(shapes=shapes, colours=colours, radius=draw_r, collision_radius=col_r, pos=pos_TN2, alive=alive_TN,
                background=bg_HW3, event_frame=k)


WORLDS = ("free", "solid", "lattice")


def generate_events(out_dir, num_pairs: int, *, events=EVENTS, num_frames: int = 16, size: int = 64, fps: int = 8,
                    codec: str = "h264", seed: int = 0, name: str = "events", world: str = "free",
                    progress: bool = False, **scene) -> Path:
    """Write num_pairs (possible, impossible) video pairs to out_dir/name/ and the index out_dir/name.csv,
    "path label" with label 1 = impossible; out_dir/name.events.csv adds each video's event, pair id and
    event frame. Pair i uses event events[i % len(events)]; both videos of a pair show the same scene.
    world: "free", the motion scenes of render_clip, whose objects overlap freely, plus the event's object
    (render_event_clip, `scene` its keywords); "solid", objects that collide and never overlap
    (render_solid_event_clip), the world in which a pass-through is a violation of what it shows; "lattice",
    that world's rules on a lattice of patch-sized cells (engine.datagen.lattice.render_lattice_event_clip)."""
    for e in events:
        if e not in EVENTS:
            raise ValueError(f"events: each must be one of {EVENTS}, got {e!r}")
    if world not in WORLDS:
        raise ValueError(f"world must be one of {WORLDS}, got {world!r}")
    render = {"free": render_event_clip, "solid": render_solid_event_clip, "lattice": render_lattice_event_clip}[world]
    out_dir = Path(out_dir).resolve()
    (out_dir / name).mkdir(parents=True, exist_ok=True)
    suffix = CODECS[codec][2]
    it = range(num_pairs)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"generating {name}", unit="pair")
    lines, meta = [], ["path,label,event,pair,event_frame\n"]
    for i in it:
        event = events[i % len(events)]
        for impossible in (False, True):
            rng = np.random.default_rng([seed, zlib.crc32(name.encode()), i])
            frames, k = render(event, impossible, rng, num_frames, size, fps, **scene)
            path = write_video(out_dir / name / f"{i:06d}_{int(impossible)}{suffix}", frames, fps=fps, codec=codec)
            lines.append(f"{path} {int(impossible)}\n")
            meta.append(f"{path},{int(impossible)},{event},{i},{k}\n")
    (out_dir / f"{name}.events.csv").write_text("".join(meta))
    csv_path = out_dir / f"{name}.csv"
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, csv_path)
    return csv_path


# ----------------------------------------------------------------------------- data sets on disk
def generate_videos(out_dir, num_videos: int, *, num_frames: int = 16, size: int = 64, fps: int = 8,
                    codec: str = "h264", seed: int = 0, num_classes: int = 5, name: str = "videos",
                    actors: int = 1, radius=(4.5, 8.0), distractors: int = 3, background: str = "random",
                    flicker: bool = False, progress: bool = False) -> Path:
    """Write `num_videos` videos to out_dir/name/NNNNNN.<ext> and the index out_dir/name.csv; return its path.

    Labels are balanced: video i has label i % num_classes. actors, radius, distractors, background and
    flicker: see render_clip. A rerun with identical arguments and a complete previous output returns at
    once (out_dir/name.json records the arguments).
    """
    if not 2 <= num_classes <= len(MOTION_CLASSES):
        raise ValueError(f"num_classes must be in [2, {len(MOTION_CLASSES)}], got {num_classes}")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
    out_dir = Path(out_dir).resolve()
    video_dir = out_dir / name
    video_dir.mkdir(parents=True, exist_ok=True)
    csv_path, meta_path = out_dir / f"{name}.csv", out_dir / f"{name}.json"
    meta = dict(num_videos=num_videos, num_frames=num_frames, size=size, fps=fps, codec=codec, seed=seed,
                num_classes=num_classes, name=name, classes=list(MOTION_CLASSES[:num_classes]), version=1,
                actors=actors, radius=[float(r) for r in radius], distractors=distractors, background=background,
                flicker=flicker)
    if csv_path.exists() and meta_path.exists() and json.loads(meta_path.read_text()) == meta:
        return csv_path
    meta_path.unlink(missing_ok=True)  # written last: its presence means the CSV is complete
    suffix = CODECS[codec][2]
    split_id = zlib.crc32(name.encode())  # different names (train/val) draw different videos
    it = range(num_videos)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=f"generating {name}", unit="video")
    lines = []
    for i in it:
        label = i % num_classes
        rng = np.random.default_rng([seed, split_id, i])
        frames, _ = render_clip(label, rng, num_frames, size, fps, actors=actors, radius=radius,
                                distractors=distractors, background=background, flicker=flicker)
        path = write_video(video_dir / f"{i:06d}{suffix}", frames, fps=fps, codec=codec)
        lines.append(f"{path} {label}\n")
    tmp = csv_path.with_name(f".{csv_path.name}.tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, csv_path)
    meta_path.write_text(json.dumps(meta, indent=1))
    return csv_path


def generate_split(out_dir, train: int, val: int, **kwargs) -> tuple[Path, Path]:
    """Write train.csv and val.csv (with videos under out_dir/train and out_dir/val); return both paths."""
    return (generate_videos(out_dir, train, name="train", **kwargs),
            generate_videos(out_dir, val, name="val", **kwargs))
