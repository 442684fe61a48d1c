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
    threads = torch.get_num_threads()
    fp32, bf16 = step.cpu_gemm_ms.__wrapped__()
    assert fp32 > 0 and bf16 > 0
    assert torch.get_num_threads() == threads      # measured on one thread, the caller's count restored


@pytest.mark.parametrize("mask_mode", ["ragged", "compat"])
def test_bf16_step_follows_the_fp32_step(mask_mode):
    # The JEPA step under CPU bf16 autocast (the patch GEMM, packed and dense attention with their fp32
    # backward, bf16 GEMMs) against the same step in fp32, from the same weights, clips and masks: the loss
    # within bf16's relative precision, and every parameter's gradient pointing the same way and of the
    # same size (a wrong layout or a dropped term in any backward moves one far off).
    from pathlib import Path

    import numpy as np

    from engine.builders import build_jepa, build_mask_sampler
    from engine.config import load_config
    root = Path(__file__).resolve().parents[2]
    small = ["model.depth=2", "model.pred_depth=2", "model.embed_dim=48", "model.num_heads=2",
             "model.pred_embed_dim=32", "model.pred_num_heads=2", "data.batch_size=3", f"meta.mask_mode={mask_mode}"]
    cfg = load_config(root / "configs" / "tiny_cpu.yaml", small)
    torch.manual_seed(0)
    model = build_jepa(cfg)
    masks = build_mask_sampler(cfg).sample(3, np.random.default_rng(0))
    x = torch.randn(3, 3, 8, 64, 64)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.zero_grad(set_to_none=True)
        with step.autocast(dtype, torch.device("cpu")):
            loss, _ = model(x, masks)
        loss.backward()
        out[dtype] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (l32, g32), (l16, g16) = out[torch.float32], out[torch.bfloat16]
    assert abs(l16 - l32) <= 1e-2 * abs(l32)           # bf16 keeps 8 bits: 4e-3 per rounding
    assert g32.keys() == g16.keys() and len(g32) > 20
    # per weight matrix (a sum of products over every token, not a cancellation), then all together
    # (biases and norms included: their small gradients are sums of signed terms bf16 rounds)
    for name, a in g32.items():
        b = g16[name]
        assert b.dtype == torch.float32
        if a.dim() >= 2:
            cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
            assert cos > 0.999 and abs(b.norm() - a.norm()) <= 0.02 * a.norm(), (name, float(cos))
    a, b = (torch.cat([g[n].flatten() for n in sorted(g32)]) for g in (g32, g16))
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999
    assert abs(b.norm() - a.norm()) <= 0.01 * a.norm()
