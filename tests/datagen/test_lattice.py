"""The lattice world: the ball steps one king move a frame, bounces off walls and blocks and never enters a
block in a possible video; an event pair is the same video up to its event frame, and from it on the
impossible ball teleports (>= 2 cells from where it would be), is gone, or enters a block and comes out
beyond; the videos draw each object in its cell, the blocks over the ball."""
import numpy as np
import pytest

from engine.datagen.lattice import MOVES, lattice_event_scene, render_lattice_event_clip, run, step
from engine.datagen.synthetic import EVENTS, generate_events, shape_alpha

N = 6


def free_in(blocks, n=N):
    return lambda y, x: 0 <= y < n and 0 <= x < n and (y, x) not in blocks


@pytest.mark.parametrize("cell, v, blocks, expected", [
    ((2, 2), (1, 1), set(), ((3, 3), (1, 1))),                  # open space: goes on
    ((0, 2), (-1, 1), set(), ((1, 3), (1, 1))),                 # top wall: the row component turns
    ((0, 5), (-1, 1), set(), ((1, 4), (1, -1))),                # a corner: both turn
    ((2, 2), (0, 1), {(2, 3)}, ((2, 1), (0, -1))),              # head-on into a block: straight back
    ((2, 2), (1, 1), {(3, 3)}, ((1, 1), (-1, -1))),             # only the diagonal cell taken: both turn
    ((2, 2), (1, 1), {(3, 2)}, ((1, 3), (-1, 1))),              # a block below: the row component turns
    ((0, 0), (0, 1), {(0, 1)}, ((0, 0), (0, -1))),              # boxed in by the wall and a block: stays
])
def test_step_bounces_off_walls_and_blocks(cell, v, blocks, expected):
    assert step(cell, v, free_in(blocks)) == expected


def test_run_passable_remove_and_teleport():
    cells, alive = run((2, 0), (0, 1), 6, N, {(2, 3)})
    assert cells == [(2, 0), (2, 1), (2, 2), (2, 1), (2, 0), (2, 1)] and all(alive)
    through, _ = run((2, 0), (0, 1), 6, N, {(2, 3)}, passable=(2, 3))
    assert through[:5] == [(2, 0), (2, 1), (2, 2), (2, 3), (2, 4)]
    _, alive = run((2, 0), (0, 1), 6, N, set(), remove=3)
    assert alive == [True] * 3 + [False] * 3
    jumped, _ = run((2, 0), (0, 1), 6, N, set(), teleport=(2, (4, 4)))
    assert jumped[:4] == [(2, 0), (2, 1), (4, 4), (4, 5)]       # keeps its velocity


def king(a, b):
    return max(abs(a[0] - b[0]), abs(a[1] - b[1]))


@pytest.mark.parametrize("event", EVENTS)
def test_event_pairs(event):
    for seed in range(8):
        ok = lattice_event_scene(event, False, np.random.default_rng(seed))
        bad = lattice_event_scene(event, True, np.random.default_rng(seed))
        k, blocks, T = ok["event_frame"], set(ok["blocks"]), len(ok["ball"])
        assert k == bad["event_frame"] and 16 // 3 <= k <= 2 * 16 // 3 and bad["blocks"] == ok["blocks"]
        # the possible ball: inside, never on a block, one king move a frame, always seen
        assert all(0 <= y < N and 0 <= x < N and (y, x) not in blocks for y, x in ok["ball"])
        assert all(king(a, b) == 1 for a, b in zip(ok["ball"], ok["ball"][1:])) and all(ok["alive"])
        assert ok["ball"][:k] == bad["ball"][:k] and bad["alive"][:k] == [True] * k
        if event == "teleport":
            assert king(bad["ball"][k], ok["ball"][k]) >= 2 and bad["ball"][k] not in blocks and all(bad["alive"])
        elif event == "vanish":
            assert bad["ball"] == ok["ball"] and bad["alive"] == [t < k for t in range(T)]
        else:
            # first contact at k - 1: heading into a block, which it never touched before (walls only)
            b = bad["ball"][k]
            assert b in blocks and ok["ball"][k] != b and all(c not in blocks for c in ok["ball"][:k])
            v = (b[0] - bad["ball"][k - 1][0], b[1] - bad["ball"][k - 1][1])
            assert bad["ball"][k + 1] == (b[0] + v[0], b[1] + v[1])     # out beyond
            assert run(ok["ball"][0], (ok["ball"][1][0] - ok["ball"][0][0], ok["ball"][1][1] - ok["ball"][0][1]),
                       k, N, set())[0] == ok["ball"][:k]


@pytest.mark.parametrize("event", EVENTS)
def test_rendered_pairs_differ_from_the_event_on(event):
    ok, k = render_lattice_event_clip(event, False, np.random.default_rng(3), 16, 96)
    bad, k2 = render_lattice_event_clip(event, True, np.random.default_rng(3), 16, 96)
    assert k == k2 and ok.shape == (16, 96, 96, 3) and ok.dtype == np.uint8
    diff_T = np.abs(ok.astype(int) - bad).reshape(16, -1).max(1)
    assert (diff_T[:k] == 0).all() and diff_T[k] > 100, diff_T
    # each object in its cell: the ball's cell differs from the plain background, a cell two away does not
    scene = lattice_event_scene(event, False, np.random.default_rng(3))
    (y, x), c = scene["ball"][0], 16
    assert np.abs(ok[0, y * c:(y + 1) * c, x * c:(x + 1) * c].astype(int) - 96).max() > 60
    if event == "pass_through":
        # inside the block the ball is drawn under it: where the block covers its cell, nothing changed
        hidden = lattice_event_scene(event, True, np.random.default_rng(3))
        by, bx = hidden["ball"][k]
        shape = hidden["shapes"][1 + hidden["blocks"].index((by, bx))]
        yy, xx = np.mgrid[0:c, 0:c].astype(np.float32) - (c - 1) / 2
        covered = shape_alpha(shape, yy, xx, c / 2 - 1) == 1
        cell_k, cell_0 = (bad[t, by * c:(by + 1) * c, bx * c:(bx + 1) * c] for t in (k, 0))
        assert covered.sum() > 20 and np.array_equal(cell_k[covered], cell_0[covered])


def test_generator_and_bad_options(tmp_path):
    csv = generate_events(tmp_path / "ev", 3, size=64, world="lattice", cell=16, blocks=1)
    rows = csv.read_text().split("\n")[:-1]
    assert len(rows) == 6 and [r.split()[1] for r in rows] == ["0", "1"] * 3
    with pytest.raises(ValueError, match="size 100 must be a multiple of cell 16"):
        lattice_event_scene("vanish", False, np.random.default_rng(0), size=100)
    with pytest.raises(ValueError, match="pass_through needs blocks >= 1"):
        lattice_event_scene("pass_through", False, np.random.default_rng(0), blocks=0)
    with pytest.raises(ValueError, match="no teleport scene found"):
        lattice_event_scene("teleport", False, np.random.default_rng(0), size=48, blocks=8)


def test_events_cli_lattice_and_refused_options(tmp_path, capsys):
    from engine.datagen.__main__ import main as cli_main

    base = ["events", "--output", str(tmp_path / "e"), "--pairs", "3", "--size", "64", "--world", "lattice"]
    cli_main(base + ["--cell", "16", "--blocks", "1"])
    assert (tmp_path / "e" / "events.csv").read_text().count("\n") == 6
    for extra, named in ((["--actors", "2"], "--actors: not lattice-world options"),
                         (["--radius", "3", "5", "--flicker"], "--radius --flicker: not lattice-world options"),
                         (["--speed", "1", "2"], "--speed: not lattice-world options"),
                         (["--size", "60"], "size 60 must be a multiple of cell 16")):
        with pytest.raises(SystemExit) as e:
            cli_main(base + extra)
        assert e.value.code == 2 and named in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli_main(base[:-2] + ["--cell", "8"])
    assert e.value.code == 2 and "--cell: a lattice-world option" in capsys.readouterr().err
