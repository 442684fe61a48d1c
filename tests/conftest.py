import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# torch.compile's on-disk cache keys its compiled graphs neither on ATEN_CPU_CAPABILITY (C++ cached under
# one dispatch, with at::vec kernels, fails to build under `default`) nor on our custom ops' code (here a
# graph cached by earlier runs aborted in its call of jepa's block attention; a fresh cache passed). One
# cache per dispatch and per version of kernels/, unless the caller picks one.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    import getpass
    import hashlib
    import tempfile
    _h = hashlib.sha1(os.environ.get("ATEN_CPU_CAPABILITY", "native").encode())
    for _p in sorted((ROOT / "kernels").glob("*.py")) + sorted((ROOT / "kernels").glob("*.so")):
        _h.update(_p.name.encode() + _p.read_bytes())
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}_tests_{_h.hexdigest()[:12]}")


# One torch thread count for the whole run: the tests' own processes (module fixtures included, which
# pytest sets up before any function fixture) and the engine.train processes they start. Results are
# bitwise equal only at equal thread counts, and a resume test compares a run made in one process with
# one made in another. JEPA_TEST_THREADS, else OMP_NUM_THREADS, else 2.
# A new process caps OMP_NUM_THREADS at what the machine has, so the count is the one a child gets.
os.environ["OMP_NUM_THREADS"] = os.environ.get("JEPA_TEST_THREADS") or os.environ.get("OMP_NUM_THREADS") or "2"
THREADS = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                             capture_output=True, text=True, check=True).stdout)


def pytest_configure(config):
    import torch
    torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch
    torch.set_num_threads(THREADS)   # again: a test may have changed it
    yield
