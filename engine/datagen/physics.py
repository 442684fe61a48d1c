"""A 2-D world of solid round bodies: constant velocities, elastic collisions with the walls, with each
other and with static blocks. The intuitive-physics generator's solid world (`synthetic.generate_events`
with `world="solid"`): its objects never overlap, so an object passing through another is an event the
world never shows.

Usage:
    p_TN2, alive_TN, contact_NN = simulate(p_N2, v_N2, r_N, static_N, size=64, num_frames=16, fps=8)

Positions are (y, x) in pixels, velocities in pixels per second, a body's radius is its collision radius
(`collision_radius`: the circle around its drawn shape). Bodies bounce inside [r, size - 1 - r] per axis,
as the free world's `_reflect`. Masses are proportional to r^2; a static body does not move and has
infinite mass. Collisions are resolved every 1 / (fps * substeps) seconds, pair by pair.
"""
from __future__ import annotations

import numpy as np

# the circle around each drawn shape (synthetic.shape_alpha) as a multiple of its radius: a square of
# half-side r / 1.1 has its corners at 1.29 r, a diamond its vertices at 1.25 r, a cross its arm ends at
# (r, 0.4 r); the anti-aliased edge adds half a pixel
COLLISION_SCALE = {"disk": 1.0, "square": 1.29, "diamond": 1.25, "ring": 1.0, "cross": 1.08}


def collision_radius(shape: str, r: float) -> float:
    """Radius of the circle a drawn shape of radius r stays inside, its soft edge included."""
    return COLLISION_SCALE[shape] * r + 0.5


def simulate(p_N2, v_N2, r_N, static_N, *, size: int, num_frames: int, fps: float, substeps: int = 16,
             ignore_pairs=(), remove=None, teleport=None):
    """Run the world for num_frames frames (frame 0 is the initial state).

    ignore_pairs: (i, j) pairs that never collide (an object passing through a block); remove: (i, frame),
    body i is gone from that frame on; teleport: (i, frame, (y, x)), body i is put there at that frame,
    keeping its velocity. Returns positions [T, N, 2], alive [T, N] (bool) and each pair's first contact
    time in frames [N, N] (inf where they never touch), contacts of ignored pairs included.
    """
    p_N2 = np.array(p_N2, np.float64)
    v_N2 = np.array(v_N2, np.float64)
    r_N = np.asarray(r_N, np.float64)
    static_N = np.asarray(static_N, bool)
    n = len(r_N)
    v_N2[static_N] = 0.0
    inv_mass_N = np.where(static_N, 0.0, 1.0 / r_N**2)
    alive_N = np.ones(n, bool)
    ignored = np.zeros((n, n), bool)
    for i, j in ignore_pairs:
        ignored[i, j] = ignored[j, i] = True
    contact_NN = np.full((n, n), np.inf)
    lo_N, hi_N = r_N, size - 1 - r_N
    dt = 1.0 / (fps * substeps)
    p_TN2 = np.zeros((num_frames, n, 2))
    alive_TN = np.zeros((num_frames, n), bool)
    for t in range(num_frames):
        if remove is not None and remove[1] == t:
            alive_N[remove[0]] = False
        if teleport is not None and teleport[1] == t:
            p_N2[teleport[0]] = teleport[2]
        p_TN2[t], alive_TN[t] = p_N2, alive_N
        if t == num_frames - 1:
            break
        for s in range(substeps):
            p_N2 += v_N2 * dt
            # walls: reflect the position and the velocity component
            for axis in range(2):
                below, above = p_N2[:, axis] < lo_N, p_N2[:, axis] > hi_N
                p_N2[below, axis] = 2 * lo_N[below] - p_N2[below, axis]
                p_N2[above, axis] = 2 * hi_N[above] - p_N2[above, axis]
                v_N2[below | above, axis] *= -1
            d_NN2 = p_N2[None] - p_N2[:, None]              # j - i
            dist_NN = np.sqrt((d_NN2**2).sum(-1))
            touching = (dist_NN < r_N[None] + r_N[:, None]) & alive_N[None] & alive_N[:, None]
            touching &= ~np.eye(n, dtype=bool) & ~(static_N[None] & static_N[:, None])
            now = t + (s + 1) / substeps
            contact_NN[touching] = np.minimum(contact_NN[touching], now)
            for i, j in zip(*np.nonzero(np.triu(touching & ~ignored))):
                normal = (p_N2[j] - p_N2[i]) / max(dist_NN[i, j], 1e-9)
                approach = (v_N2[i] - v_N2[j]) @ normal
                w = inv_mass_N[i] + inv_mass_N[j]
                if approach > 0:                            # elastic impulse along the normal
                    impulse = 2 * approach / w
                    v_N2[i] -= impulse * inv_mass_N[i] * normal
                    v_N2[j] += impulse * inv_mass_N[j] * normal
                overlap = r_N[i] + r_N[j] - dist_NN[i, j]    # push apart, each by its share
                p_N2[i] -= overlap * inv_mass_N[i] / w * normal
                p_N2[j] += overlap * inv_mass_N[j] / w * normal
    return p_TN2.astype(np.float32), alive_TN, contact_NN


def place_free(rng: np.random.Generator, r: float, p_N2, r_N, *, size: int, tries: int = 100):
    """A uniform position for a body of radius r inside the walls touching none of the bodies (p_N2, r_N),
    or None. Always draws `tries` candidates, so the rng's state after it does not depend on the scene."""
    cand_K2 = rng.uniform(r, size - 1 - r, (tries, 2))
    if len(r_N) == 0:
        return cand_K2[0]
    gap_KN = np.sqrt(((cand_K2[:, None] - np.asarray(p_N2)[None]) ** 2).sum(-1)) - (r + np.asarray(r_N))[None]
    ok = np.nonzero((gap_KN > 0).all(1))[0]
    return cand_K2[ok[0]] if len(ok) else None
