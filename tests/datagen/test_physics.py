"""The solid world: collisions conserve momentum and energy, bodies never overlap, a static block stays put
and turns a head-on body back, an ignored pair passes through; the solid event pairs differ only from their
event frame on, and only a pass-through's object overlaps anything: the block, in the impossible video."""
import numpy as np
import pytest

from engine.datagen.physics import COLLISION_SCALE, collision_radius, place_free, simulate
from engine.datagen.synthetic import EVENTS, generate_events, render_solid_event_clip, shape_alpha, solid_event_scene

FPS, SIZE = 8, 64


def energy_momentum(v_N2, r_N):
    m_N = np.asarray(r_N) ** 2
    return (0.5 * m_N * (v_N2**2).sum(-1)).sum(), (m_N[:, None] * v_N2).sum(0)


def velocities(p_TN2):
    return (p_TN2[1:] - p_TN2[:-1]) * FPS


def test_two_body_collision_conserves_momentum_and_energy():
    # two bodies of different mass meeting off-centre in the middle, far from the walls
    p, v, r = [[30.0, 20.0], [33.0, 44.0]], [[0.0, 20.0], [0.0, -20.0]], [5.0, 8.0]
    p_TN2, alive_TN, contact_NN = simulate(p, v, r, [False, False], size=SIZE, num_frames=8, fps=FPS, substeps=64)
    assert alive_TN.all() and 0 < contact_NN[0, 1] == contact_NN[1, 0] < 7
    v_TN2 = velocities(p_TN2.astype(np.float64))
    e0, m0 = energy_momentum(np.asarray(v, float), r)
    e1, m1 = energy_momentum(v_TN2[-1], r)   # after the collision, in free flight
    scale = np.abs(np.asarray(v) * np.asarray(r)[:, None] ** 2).sum()
    assert np.abs(m1 - m0).max() < 1e-3 * scale and abs(e1 - e0) < 1e-3 * e0
    assert not np.allclose(v_TN2[-1], v, atol=1.0)            # they did collide
    assert v_TN2[-1, 0, 0] < 0 < v_TN2[-1, 1, 0]               # and were pushed apart along the off-centre normal


def test_static_block_turns_a_head_on_body_back_and_stays_put():
    p, v, r = [[32.0, 12.0], [32.0, 40.0]], [[0.0, 30.0], [0.0, 0.0]], [5.0, 7.0]
    p_TN2, _, contact_NN = simulate(p, v, r, [False, True], size=SIZE, num_frames=8, fps=FPS)
    assert (p_TN2[:, 1] == p_TN2[0, 1]).all()
    v_TN2 = velocities(p_TN2.astype(np.float64))
    assert v_TN2[0, 0, 1] == pytest.approx(30.0, rel=1e-4) and v_TN2[-1, 0, 1] == pytest.approx(-30.0, rel=1e-4)
    assert np.isfinite(contact_NN[0, 1])
    # ignored, the pair passes through: the body goes on (to the wall) and the contact is still reported
    q_TN2, _, ignored_NN = simulate(p, v, r, [False, True], size=SIZE, num_frames=8, fps=FPS, ignore_pairs=[(0, 1)])
    assert ignored_NN[0, 1] == contact_NN[0, 1] and q_TN2[6, 0, 1] > p_TN2[6, 0, 1] + 10


def test_walls_reflect_and_remove_and_teleport():
    p_TN2, alive_TN, _ = simulate([[32.0, 55.0]], [[0.0, 40.0]], [4.0], [False], size=SIZE, num_frames=16, fps=FPS,
                                  remove=(0, 10))
    assert p_TN2[:, 0, 1].max() <= SIZE - 1 - 4 + 1e-4 and p_TN2[-1, 0, 1] < 55
    assert alive_TN[:10, 0].all() and not alive_TN[10:, 0].any()
    t_TN2, _, _ = simulate([[32.0, 30.0]], [[0.0, 8.0]], [4.0], [False], size=SIZE, num_frames=8, fps=FPS,
                           teleport=(0, 5, (10.0, 10.0)))
    assert np.allclose(t_TN2[5, 0], [10, 10]) and np.allclose(t_TN2[6, 0], [10, 11])   # it keeps its velocity


@pytest.mark.parametrize("seed", range(6))
def test_random_worlds_never_overlap(seed):
    g = np.random.default_rng(seed)
    n = 6
    r_N = g.uniform(4, 9, n)
    p_N2 = np.zeros((n, 2))
    for i in range(n):
        p_N2[i] = place_free(g, r_N[i], p_N2[:i], r_N[:i], size=SIZE)
    static_N = np.arange(n) < 2
    v_N2 = g.normal(0, 25, (n, 2))
    p_TN2, _, contact_NN = simulate(p_N2, v_N2, r_N, static_N, size=SIZE, num_frames=32, fps=FPS)
    gap_TNN = np.sqrt(((p_TN2[:, None] - p_TN2[:, :, None]) ** 2).sum(-1)) - r_N[None] - r_N[:, None]
    gap_TNN += np.eye(n) * 100
    assert gap_TNN.min() > -0.05 * r_N.min()        # at most a sliver within the substep
    assert np.isfinite(contact_NN).any()             # something collided
    assert (p_TN2 >= r_N[:, None] - 1e-3).all() and (p_TN2 <= SIZE - 1 - r_N[:, None] + 1e-3).all()


def test_collision_radius_covers_the_drawn_shape():
    yy, xx = np.mgrid[-20:21, -20:21].astype(np.float32) / 2   # half-pixel grid
    for shape in COLLISION_SCALE:
        a = shape_alpha(shape, yy, xx, 8.0)
        d = np.hypot(yy, xx)[a > 0]
        assert d.max() <= collision_radius(shape, 8.0) + 1e-6
        assert d.max() > collision_radius(shape, 8.0) - 1.0      # and not much more


def test_place_free_draws_a_fixed_amount():
    g1, g2 = np.random.default_rng(0), np.random.default_rng(0)
    place_free(g1, 5.0, np.zeros((0, 2)), np.zeros(0), size=SIZE)
    assert place_free(g2, 20.0, [[32.0, 32.0]], [30.0], size=SIZE) is None    # no room
    assert g1.uniform() == g2.uniform()


SOLID = dict(actors=3, radius=(6, 10), blocks=1, background="plain")


@pytest.mark.parametrize("event", EVENTS)
@pytest.mark.parametrize("seed", [0, 7])
def test_solid_event_pairs_differ_only_from_the_event_on(event, seed):
    ok, k = render_solid_event_clip(event, False, np.random.default_rng(seed), 16, 64, 8, **SOLID)
    bad, k2 = render_solid_event_clip(event, True, np.random.default_rng(seed), 16, 64, 8, **SOLID)
    assert k == k2 and 16 // 3 <= k <= 2 * 16 // 3
    diff_T = np.abs(ok.astype(int) - bad).reshape(16, -1).max(1)
    assert (diff_T[:k] == 0).all(), diff_T
    assert (diff_T[k + 1:] > 50).all(), diff_T


def gaps(scene):
    """Gap between the collision circles of every pair of bodies alive together [T, N, N] (inf otherwise)."""
    p_TN2, r_N, alive_TN = scene["pos"], scene["collision_radius"], scene["alive"]
    g_TNN = np.sqrt(((p_TN2[:, None] - p_TN2[:, :, None]) ** 2).sum(-1)) - r_N[None] - r_N[:, None]
    together = alive_TN[:, None] & alive_TN[:, :, None] & ~np.eye(len(r_N), dtype=bool)
    return np.where(together, g_TNN, np.inf)


@pytest.mark.parametrize("event", EVENTS)
def test_solid_world_never_overlaps_but_for_a_pass_through(event):
    for seed in range(4):
        ok = solid_event_scene(event, False, np.random.default_rng(seed), **SOLID)
        bad = solid_event_scene(event, True, np.random.default_rng(seed), **SOLID)
        k, r_N = ok["event_frame"], ok["collision_radius"]
        assert gaps(ok).min() > -0.05 * r_N.min()            # at most a sliver within a substep
        g_bad = gaps(bad)
        if event != "pass_through":
            assert g_bad.min() > -0.05 * r_N.min()
            continue
        # the object (0) touches the block (1) just before frame k; then it is inside it, the others still not
        assert g_bad[:k].min() > -0.05 * r_N.min()
        assert g_bad[k:, 0, 1].min() < -r_N[0]                 # more than half of it in the block
        g_bad[:, 0, 1] = g_bad[:, 1, 0] = np.inf
        assert g_bad.min() > -0.05 * r_N.min()


@pytest.mark.parametrize("speed", [(8.0, 8.0), (40.0, 40.0)])
def test_solid_world_speed_sets_the_actors_speed(speed):
    """`speed` is the other moving objects' speed (px/s at 64 px): at fps 8 an actor moves speed / 8 px a
    frame wherever it collides with nothing that frame (frames with a collision move it otherwise)."""
    steps = []
    for seed in range(4):
        sc = solid_event_scene("teleport", False, np.random.default_rng(seed), actors=2, blocks=1, speed=speed,
                               event_speed=(14.0, 24.0))
        steps.append(np.hypot(*np.diff(sc["pos"][:, 2:], axis=0).transpose(2, 0, 1)).ravel())   # actors
    steps = np.concatenate(steps)
    assert (np.abs(steps - speed[0] / 8) < 0.01 * speed[0] / 8).mean() > 0.15


def test_solid_world_generator_and_bad_options(tmp_path):
    csv = generate_events(tmp_path / "ev", 3, num_frames=8, size=32, world="solid", **SOLID)
    rows = csv.read_text().split("\n")[:-1]
    assert len(rows) == 6 and [r.split()[1] for r in rows] == ["0", "1"] * 3
    assert csv.with_name("events.events.csv").read_text().count("pass_through") == 2
    with pytest.raises(ValueError, match="world must be one of"):
        generate_events(tmp_path / "ev", 1, world="liquid")
    with pytest.raises(ValueError, match="blocks >= 1 for pass_through"):
        solid_event_scene("pass_through", False, np.random.default_rng(0), blocks=0)
    with pytest.raises(ValueError, match="no teleport scene found"):
        solid_event_scene("teleport", False, np.random.default_rng(0), 16, 32, actors=12, radius=(9, 10))


def test_events_cli_worlds_and_refused_options(tmp_path, capsys):
    from engine.datagen.__main__ import main as cli_main

    base = ["events", "--output", str(tmp_path / "e"), "--pairs", "1", "--events", "pass_through", "--size", "32",
            "--frames", "8", "--radius", "3", "5"]
    cli_main(base + ["--world", "solid", "--blocks", "2", "--speed", "40", "48"])
    assert (tmp_path / "e" / "events.csv").read_text().count("\n") == 2
    for extra, named in ((["--world", "solid", "--distractors", "2"], "--distractors"),
                         (["--world", "solid", "--flicker", "--classes", "3"], "--classes --flicker"),
                         (["--blocks", "2"], "--blocks: solid- or lattice-world options"),
                         (["--speed", "1", "2"], "--speed: solid- or lattice-world options"),
                         (["--world", "solid", "--speed", "5", "2"], "0 <= speed[0] <= speed[1]; got")):
        with pytest.raises(SystemExit) as e:
            cli_main(base + extra)
        assert e.value.code == 2 and named in capsys.readouterr().err
    cli_main(base + ["--distractors", "0"])   # the free world keeps its options
    with pytest.raises(SystemExit) as e:       # a world too crowded to place: one line, no traceback
        cli_main(base[:-3] + ["--world", "solid", "--actors", "12", "--radius", "9", "10"])
    assert e.value.code == 2 and "no pass_through scene found in 1000 tries" in capsys.readouterr().err
