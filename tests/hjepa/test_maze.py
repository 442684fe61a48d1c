"""The two-room maze: its source (deterministic, walls that stop the ball, the trajectory format) and its
task (held-out goals behind the wall: the oracle reaches them, heading straight at them does not)."""
import numpy as np
import pytest

from engine.datagen.sources.pybullet_maze import MAX_STEP, Maze, blocked, explore_episode, generate_maze
from engine.planning.maze import WALL_CORNER_X, WALL_CORNER_Y, MazeTask, geodesic_distance, oracle_controller


@pytest.fixture(scope="module")
def maze():
    m = Maze(32)
    yield m
    m.close()


def test_exploration_is_deterministic_per_seed(maze):
    a = explore_episode(maze, np.random.default_rng([0, 3]), 12)
    b = explore_episode(maze, np.random.default_rng([0, 3]), 12)
    c = explore_episode(maze, np.random.default_rng([0, 4]), 12)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], c[2])
    frames, actions, states = a
    assert frames.shape == (12, 32, 32, 3) and frames.dtype == np.uint8
    assert actions.shape == (12, 2) and states.shape == (12, 2) and np.abs(actions).max() <= MAX_STEP + 1e-6


def test_walls_stop_the_ball(maze):
    maze.place([-0.5, 0.5])
    for _ in range(10):
        maze.act([MAX_STEP, 0.0])            # into the middle wall
    x, y = maze.position()
    assert -0.25 < x < -0.2 and abs(y - 0.5) < 1e-3
    assert blocked([0.0, 0.5]) and not blocked([-0.5, 0.5]) and not blocked([0.0, -0.65])
    maze.place([-0.5, -0.65])
    for _ in range(10):
        maze.act([MAX_STEP, 0.0])            # under the wall: through the gap
    assert maze.position()[0] > 0.4


def test_generated_episodes_load_as_trajectories(tmp_path):
    from engine.data.trajectories import TrajectoryDataset
    csv = generate_maze(tmp_path, 2, num_frames=8, size=32, seed=0)
    ds = TrajectoryDataset([str(csv)], frames_per_clip=4, frame_step=1)
    sample = ds[0]
    clip, actions, states = sample[0].clip, sample[0].actions, sample[0].states
    assert tuple(actions.shape) == (3, 2) and tuple(states.shape) == (4, 2) and clip.shape[0] == 4


def test_frames_are_the_renderers(tmp_path, maze):
    """The default codec is lossless: the training frames are the frames the planner renders (4:2:0 video
    moves a 32-px maze frame's pixels by more than a step of the ball does)."""
    from engine.data import decode_clip, read_index_csv
    from engine.datagen.__main__ import main as datagen_main
    datagen_main(["maze", "--output", str(tmp_path), "--num", "1", "--frames", "8"])   # the command's defaults
    rendered, _, _ = explore_episode(maze, np.random.default_rng([0, 0]), 8)
    np.testing.assert_array_equal(decode_clip(read_index_csv(tmp_path / "maze.csv")[0][0], range(8)), rendered)


def test_goals_are_held_out_behind_the_wall_and_only_the_oracle_reaches_them():
    task = MazeTask(size=32, tolerance=0.15, max_steps=30, seed=1000)
    try:
        eps = [task.episode(i) for i in range(3)]
        again = task.episode(1)
        np.testing.assert_array_equal(again.goal_image, eps[1].goal_image)
        for ep in eps:
            assert ep.start_pos[0] < -0.3 and ep.goal_pos[0] > 0.3 and ep.goal_pos[1] > 0.2   # across the wall
            assert ep.goal_image.shape == (32, 32, 3)
            assert task.run(ep, oracle_controller).success
            straight = task.run(ep, lambda f, s, e, m: np.clip(e.goal_pos - m.position(), -MAX_STEP, MAX_STEP))
            assert not straight.success and straight.steps == 30
    finally:
        task.close()


def test_a_size_that_4_2_0_video_cannot_hold_is_refused_and_closes_the_simulator(tmp_path, monkeypatch):
    closed, real_close = [], Maze.close
    monkeypatch.setattr(Maze, "close", lambda self: (closed.append(True), real_close(self)))
    with pytest.raises(ValueError, match="size must be a multiple of 4"):
        generate_maze(tmp_path, 1, num_frames=4, size=30)
    assert closed == [True] and not (tmp_path / "maze.csv").exists()


def test_geodesic_distance_is_straight_in_sight_and_bends_round_the_wall_otherwise():
    assert geodesic_distance([-0.5, 0.5], [-0.2, 0.1]) == pytest.approx(0.5)          # one room
    assert geodesic_distance([-0.5, -0.7], [0.5, -0.7]) == pytest.approx(1.0)         # under the wall
    # upper left to upper right: down to the left corner, across, up from the right corner
    leg = np.hypot(0.5 - WALL_CORNER_X, 0.5 - WALL_CORNER_Y)
    assert geodesic_distance([-0.5, 0.5], [0.5, 0.5]) == pytest.approx(2 * leg + 2 * WALL_CORNER_X)
    # low in the left room the right corner is in sight: one bend
    p, q, c = np.array([-0.5, -0.7]), np.array([0.5, 0.5]), np.array([WALL_CORNER_X, WALL_CORNER_Y])
    assert geodesic_distance(p, q) == pytest.approx(np.linalg.norm(c - p) + np.linalg.norm(q - c))
    rng = np.random.default_rng(0)
    for _ in range(50):        # never shorter than the straight line, symmetric
        a, b = rng.uniform(-0.8, 0.8, 2), rng.uniform(-0.8, 0.8, 2)
        assert geodesic_distance(a, b) >= np.linalg.norm(a - b) - 1e-12
        assert geodesic_distance(a, b) == pytest.approx(geodesic_distance(b, a))
