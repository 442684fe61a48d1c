import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# torch.compile's on-disk cache does not key its generated C++ on ATEN_CPU_CAPABILITY: code cached under
# one dispatch (at::vec kernels) fails to build under another (`default`). One cache per forced dispatch.
if os.environ.get("ATEN_CPU_CAPABILITY") and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    import getpass
    import tempfile
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_{os.environ['ATEN_CPU_CAPABILITY']}")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))



@pytest.fixture(autouse=True)
def _torch_threads():
    import torch
    torch.set_num_threads(int(os.environ.get("JEPA_TEST_THREADS", "2")))
    yield
