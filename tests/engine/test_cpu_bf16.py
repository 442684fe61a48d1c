"""meta.dtype: bfloat16 on a CPU warns once, naming the key and the measured GEMM times, where this
CPU's bf16 GEMM is slower than its fp32 one; where it is faster, nothing is said."""
import warnings

import pytest
import torch

from engine.core import step


@pytest.fixture
def gemm_ms(monkeypatch):
    def use(fp32, bf16):
        monkeypatch.setattr(step, "cpu_gemm_ms", lambda: (fp32, bf16))
        step.warn_if_slow_cpu_bf16.cache_clear()
    yield use
    step.warn_if_slow_cpu_bf16.cache_clear()


def test_slow_bf16_warns_once_by_key(gemm_ms):
    gemm_ms(5.0, 33.0)
    with pytest.warns(UserWarning, match=r"^meta\.dtype: bfloat16 on this CPU runs torch's GEMMs 6\.6x slower"):
        with step.autocast(torch.bfloat16, torch.device("cpu")):
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with step.autocast(torch.bfloat16, torch.device("cpu")):   # once per process
            pass


def test_fast_bf16_and_fp32_say_nothing(gemm_ms):
    gemm_ms(11.0, 3.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with step.autocast(torch.bfloat16, torch.device("cpu")):
            assert torch.is_autocast_enabled("cpu")
        with step.autocast(torch.float32, torch.device("cpu")):
            assert not torch.is_autocast_enabled("cpu")


def test_gemm_probe_measures_both_dtypes():
    fp32, bf16 = step.cpu_gemm_ms()
    assert fp32 > 0 and bf16 > 0
