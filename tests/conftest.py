import os
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


@pytest.fixture(autouse=True)
def _torch_threads():
    import torch
    torch.set_num_threads(int(os.environ.get("JEPA_TEST_THREADS", "2")))
    yield
