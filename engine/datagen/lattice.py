"""A lattice world: one ball stepping one cell a frame among static blocks, bouncing off the walls and the
blocks. The intuitive-physics generator's third world (`synthetic.generate_events` with `world="lattice"`).

With a cell the size of a patch (`cell=16` at 16 px patches) every object sits in one token of every frame
and every motion is a move to a neighbouring token, so what a world model has to learn is a small set of
discrete rules (go on; bounce back off a wall or a block) rather than how a patch's features change as an
object slides across it. A block never lets the ball in, so the impossible pass-through (the ball entering a
block, drawn under it, and coming out beyond) breaks a rule every possible video shows.

Usage:
    scene = lattice_event_scene("pass_through", impossible=True, rng=rng, num_frames=16, size=96)
    frames_THW3, event_frame = render_lattice_event_clip("vanish", False, rng, num_frames=16, size=96)

Cells are (row, column); velocities one of the 8 king moves. A pair's two videos draw the same numbers
from the rng, so they show the same world up to the event frame.
"""
from __future__ import annotations

import numpy as np

from .drawing import EVENTS, SHAPES, contrasting_colour, shape_alpha

# the 8 king moves, (d_row, d_column)
MOVES = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


def step(cell, v, free):
    """The ball's next cell and velocity. A component that would take it into a wall or a block is
    reversed (a diagonal move whose corner cell alone is taken reverses both); if the reversed move is
    taken too (a pocket) it goes straight back, and if that is taken it stays."""
    (cy, cx), (vy, vx) = cell, v
    if vy and not free(cy + vy, cx):
        vy = -vy
    if vx and not free(cy, cx + vx):
        vx = -vx
    if vy and vx and not free(cy + vy, cx + vx):
        vy, vx = -vy, -vx
    nxt = (cy + vy, cx + vx)
    if free(*nxt):
        return nxt, (vy, vx)
    vy, vx = -v[0], -v[1]
    nxt = (cy + vy, cx + vx)
    return (nxt, (vy, vx)) if free(*nxt) else (cell, (vy, vx))


def run(cell, v, num_frames: int, n: int, blocks, passable=None, remove=None, teleport=None):
    """The ball's cells and visibility over num_frames frames on an n x n lattice. passable: a block the
    ball may enter; remove: the frame from which it is gone; teleport: (frame, cell), where it is put at
    that frame, keeping its velocity."""
    def free(y, x):
        return 0 <= y < n and 0 <= x < n and ((y, x) not in blocks or (y, x) == passable)

    cells, alive, on = [], [], True
    for t in range(num_frames):
        if remove == t:
            on = False
        if teleport is not None and teleport[0] == t:
            cell = teleport[1]
        cells.append(cell)
        alive.append(on)
        cell, v = step(cell, v, free)
    return cells, alive


def lattice_event_scene(event: str, impossible: bool, rng: np.random.Generator, num_frames: int = 16,
                        size: int = 96, *, cell: int = 16, blocks: int = 2, tries: int = 1000) -> dict:
    """The world of one lattice event video, before drawing: a dict of "shapes" and "colours" (the ball's
    first, then the blocks'), "ball" (its cell per frame), "alive" (per frame), "blocks" (cells), "cell"
    (px), "background" (RGB) and "event_frame" k. The events: teleport, at frame k the ball is put at a
    free cell at least 2 cells (king moves) from where it would be, keeping its velocity; vanish, it is
    gone from frame k on; pass_through, k is the ball's first contact with a block, before which it touched
    only walls: the possible ball bounces off it, the impossible one enters it at k (drawn under it) and
    comes out beyond at k + 1."""
    if event not in EVENTS:
        raise ValueError(f"event must be one of {EVENTS}, got {event!r}")
    n = size // cell
    if size % cell or n < 3 or not 1 <= 1 + blocks <= n * n:
        raise ValueError(f"lattice_event_scene: size {size} must be a multiple of cell {cell} with at least 3 "
                         f"cells a side, and 0 <= blocks < cells (got blocks={blocks})")
    if event == "pass_through" and blocks < 1:
        raise ValueError("lattice_event_scene: pass_through needs blocks >= 1")
    background = np.full(3, 96.0)
    for _ in range(tries):
        k = int(rng.integers(num_frames // 3, 2 * num_frames // 3 + 1))
        shapes = [SHAPES[i] for i in rng.integers(len(SHAPES), size=1 + blocks)]
        colours = [contrasting_colour(rng, background) for _ in shapes]
        placed = rng.permutation(n * n)[: 1 + blocks]
        start = divmod(int(placed[0]), n)
        block_cells = [divmod(int(b), n) for b in placed[1:]]
        v0 = MOVES[int(rng.integers(len(MOVES)))]
        jump_order = rng.permutation(n * n)                 # where a teleport may land, in order
        taken = set(block_cells)
        cells, alive = run(start, v0, num_frames, n, taken)
        if event == "pass_through":
            found = False
            for b in block_cells:
                through, through_alive = run(start, v0, num_frames, n, taken, passable=b)
                if b not in through:
                    continue
                t = through.index(b)
                if not num_frames // 3 <= t <= 2 * num_frames // 3 or t + 1 >= num_frames or through[:t] != cells[:t]:
                    continue
                v = (through[t][0] - through[t - 1][0], through[t][1] - through[t - 1][1])
                if through[t + 1] != (b[0] + v[0], b[1] + v[1]) or cells[t] == through[t]:
                    continue                                # out beyond, and the possible ball bounces
                if run(start, v0, t, n, set())[0] != cells[:t]:
                    continue                                # no block touched before
                found, k = True, t
                break
            if not found:
                continue
            if impossible:
                cells, alive = through, through_alive
        elif event == "vanish" and impossible:
            cells, alive = run(start, v0, num_frames, n, taken, remove=k)
        elif event == "teleport":
            expected = cells[k]
            landing = [divmod(int(q), n) for q in jump_order]
            landing = [q for q in landing
                       if q not in taken and max(abs(q[0] - expected[0]), abs(q[1] - expected[1])) >= 2]
            if not landing:
                continue
            if impossible:
                cells, alive = run(start, v0, num_frames, n, taken, teleport=(k, landing[0]))
        return dict(shapes=shapes, colours=colours, ball=cells, alive=alive, blocks=block_cells, cell=cell,
                    background=background, event_frame=k)
    raise ValueError(f"lattice_event_scene: no {event} scene found in {tries} tries for size={size}, cell={cell}, "
                     f"blocks={blocks}; use a larger lattice or fewer blocks")


def render_lattice_event_clip(event: str, impossible: bool, rng: np.random.Generator, num_frames: int = 16,
                              size: int = 96, fps: float = 8, **options):
    """One video of an event pair in the lattice world: (uint8 frames [T, H, W, 3], event frame). `options`:
    lattice_event_scene's keywords; fps only sets the file's rate (one cell a frame at any fps). Each object
    is drawn at its cell's centre with radius cell / 2 - 1, the blocks over the ball."""
    scene = lattice_event_scene(event, impossible, rng, num_frames, size, **options)
    cell = scene["cell"]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    frames = np.broadcast_to(scene["background"], (num_frames, size, size, 3)).astype(np.float32).copy()
    r = cell / 2 - 1.0

    def centre(c):
        return c[0] * cell + (cell - 1) / 2, c[1] * cell + (cell - 1) / 2

    for t in range(num_frames):
        if scene["alive"][t]:
            y, x = centre(scene["ball"][t])
            a = shape_alpha(scene["shapes"][0], yy - y, xx - x, r)[..., None]
            frames[t] = frames[t] * (1 - a) + a * scene["colours"][0]
    for b, shape, colour in zip(scene["blocks"], scene["shapes"][1:], scene["colours"][1:]):
        y, x = centre(b)
        a = shape_alpha(shape, yy - y, xx - x, r)[..., None]
        frames = frames * (1 - a) + a * colour
    return np.clip(frames + 0.5, 0, 255).astype(np.uint8), scene["event_frame"]
