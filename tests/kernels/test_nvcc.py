"""Every csrc/cuda/*.cu compiles with nvcc for sm_80 and sm_90 with warnings as errors (pure CUDA: no
torch headers, which the CPU torch wheel cannot give nvcc), and each launcher bindings_cuda.cpp declares
is defined by a .cu file."""
import glob
import os
import re
import shutil
import subprocess
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))


def test_cuda_sources_exist():
    names = {os.path.basename(p) for p in SOURCES}
    assert {"gather.cu", "ema.cu"} <= names


def test_cuda_sources_are_torch_free_and_match_the_bindings():
    defined = set()
    for src in SOURCES:
        text = open(src).read()
        assert not re.search(r"#include\s*[<\"](torch|ATen|c10)/", text), f"{src} includes a torch header"
        defined |= set(re.findall(r"^cudaError_t (jepa_\w+)\(", text, re.M))
    bindings = open(os.path.join(ROOT, "csrc", "cuda", "bindings_cuda.cpp")).read()
    declared = set(re.findall(r"^cudaError_t (jepa_\w+)\(", bindings, re.M))
    assert declared and declared <= defined, declared - defined


@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH or in /usr/local/cuda/bin")
@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("src", SOURCES, ids=os.path.basename)
def test_nvcc_compiles(src, arch):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, os.path.basename(src) + f".sm{arch}.o")
        r = subprocess.run([NVCC, "-O3", "-std=c++17", "-Werror", "all-warnings", f"-gencode=arch=compute_{arch},code=sm_{arch}",
                            "-c", src, "-o", out], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-4000:]
        assert os.path.getsize(out) > 0
