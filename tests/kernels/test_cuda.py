"""Every device backend on a real GPU, fp16 and bf16 included (bench/gpu_check.py's checks, small cases).
Skipped without CUDA: these kernels cannot run on a CPU machine (the Triton ones run there under the
interpreter in the other test files)."""
import pytest
import torch

from tests.bench.test_gpu_check import _module

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_every_device_backend_passes_the_rule():
    gc = _module()
    failed, ran = [], 0
    for op, backend, dtype, label, why, thunk in gc.correctness_cases(torch.device("cuda"), small=True):
        if why is not None:
            continue
        for r in thunk():
            ran += 1
            if not r["ok"]:
                failed.append((op, backend, dtype, label, r))
    assert ran and not failed, failed
