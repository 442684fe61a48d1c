"""Build and install the JEPA engine: `engine`, `kernels` and the C++/CUDA ops.

    pip install --no-build-isolation -e .      # uses the venv's pinned torch; never fetches one

Metadata, dependencies and extras: pyproject.toml.

`kernels._C` is built from every csrc/cpu/*.cpp (add a file there and it is part of the build);
`kernels._C_cuda` from csrc/cuda/*.cu + csrc/cuda/*.cpp only when torch has CUDA and nvcc exists.
Set JEPA_NATIVE=1 to add -march=native to the CPU build (faster, not portable).
"""
import glob
import os
import shutil

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def extensions():
    # -fno-math-errno -fno-trapping-math as torch's own build: without them GCC keeps a loop with a float
    # comparison in a select (csrc/cpu/gelu.cpp) scalar below AVX-512
    cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    if os.environ.get("JEPA_NATIVE") == "1":
        cxx.append("-march=native")
    exts = [CppExtension("kernels._C", _rel(glob.glob(os.path.join(ROOT, "csrc/cpu/*.cpp"))),
                         extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]
    cu = glob.glob(os.path.join(ROOT, "csrc/cuda/*.cu"))
    nvcc = shutil.which("nvcc") or (os.path.exists("/usr/local/cuda/bin/nvcc") and "/usr/local/cuda/bin/nvcc")
    if cu and torch.version.cuda is not None and nvcc and os.environ.get("JEPA_NO_CUDA") != "1":
        from torch.utils.cpp_extension import CUDAExtension
        srcs = cu + glob.glob(os.path.join(ROOT, "csrc/cuda/*.cpp"))
        arch = ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90"]
        exts.append(CUDAExtension("kernels._C_cuda", _rel(srcs),
                                  extra_compile_args={"cxx": ["-O3"],
                                                      "nvcc": ["-O3", *arch]}))
    return exts


# Metadata, dependencies and extras are in pyproject.toml; this file adds only the compiled ops.
setup(
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
