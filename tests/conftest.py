import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))



@pytest.fixture(autouse=True)
def _torch_threads():
    import torch
    torch.set_num_threads(int(os.environ.get("JEPA_TEST_THREADS", "2")))
    yield
