"""pytest-benchmark: EMA over a ViT parameter list, kernels.ema_ vs the reference ways.

    pytest bench/bench_ema.py --benchmark-only      # bench/run_kernels.py gives GB/s and ratios
"""
import pytest
import torch

import kernels


def _vit(D=1024, depth=2):
    shapes = [(D, 3, 16, 16), (D,)]
    for _ in range(depth):
        shapes += [(D,), (D,), (3 * D, D), (3 * D,), (D, D), (D,), (D,), (D,), (4 * D, D), (4 * D,), (D, 4 * D), (D,)]
    return shapes


@pytest.mark.parametrize("way", ["loop", "foreach_mul_add", "foreach_lerp", "kernels_list", "kernels_flat"])
def test_ema(benchmark, way):
    g = torch.Generator().manual_seed(0)
    tl = [torch.randn(s, generator=g) for s in _vit()]
    sl = [torch.randn(s, generator=g) for s in _vit()]
    m = 0.996
    if way == "loop":
        def fn():
            for t, s in zip(tl, sl):
                t.mul_(m).add_((1 - m) * s)
    elif way == "foreach_mul_add":
        def fn():
            torch._foreach_mul_(tl, m)
            torch._foreach_add_(tl, sl, alpha=1 - m)
    elif way == "foreach_lerp":
        def fn():
            torch._foreach_lerp_(tl, sl, 1 - m)
    elif way == "kernels_list":
        mt = torch.tensor(m)

        def fn():
            kernels.ema_(tl, sl, mt)
    else:
        ft, fs, mt = torch.cat([t.reshape(-1) for t in tl]), torch.cat([s.reshape(-1) for s in sl]), torch.tensor(m)

        def fn():
            kernels.ema_(ft, fs, mt)
    benchmark(fn)
