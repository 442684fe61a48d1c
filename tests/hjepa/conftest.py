"""The H-JEPA tests' shared data: a few generated maze episodes."""
import pytest


@pytest.fixture(scope="module")
def maze_csv(tmp_path_factory):
    from engine.datagen.sources import generate_maze
    return generate_maze(tmp_path_factory.mktemp("maze"), 4, num_frames=14, size=32, seed=0)
