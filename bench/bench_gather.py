"""pytest-benchmark: gather fwd+bwd and gather+layer_norm, kernels vs the reference ways (V-JEPA-like shapes).

    pytest bench/bench_gather.py --benchmark-only      # table; bench/run_kernels.py gives GB/s and ratios
"""
import pytest
import torch
import torch.nn.functional as F

import kernels

SHAPES = [(2, 1568, 384, 0.25), (2, 2048, 1024, 0.7)]   # B, N, D, keep ratio


def _inputs(B, N, D, keep):
    K = max(1, int(N * keep))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, N, D, generator=g, requires_grad=True)
    idx_BK = torch.stack([torch.randperm(N, generator=g)[:K] for _ in range(B)])
    rows_T = (idx_BK + torch.arange(B)[:, None] * N).reshape(-1)
    return x, idx_BK, rows_T, torch.randn(B * K, D, generator=g)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-N{}-D{}-keep{}".format(*s))
@pytest.mark.parametrize("way", ["repeated_gather", "index_select", "kernels"])
def test_gather_fwd_bwd(benchmark, shape, way):
    x, idx_BK, rows_T, gy = _inputs(*shape)
    B, N, D, _ = shape

    def step():
        x.grad = None
        if way == "repeated_gather":
            y = torch.gather(x, 1, idx_BK.unsqueeze(-1).repeat(1, 1, D)).reshape(-1, D)
        elif way == "index_select":
            y = x.reshape(B * N, D).index_select(0, rows_T)
        else:
            y = kernels.gather_tokens(x, rows_T)
        y.backward(gy)

    benchmark(step)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-N{}-D{}-keep{}".format(*s))
@pytest.mark.parametrize("way", ["layer_norm_then_gather", "kernels"])
def test_gather_layer_norm(benchmark, shape, way):
    x, _, rows_T, _ = _inputs(*shape)
    x = x.detach()
    D = x.shape[-1]
    if way == "kernels":
        benchmark(lambda: kernels.gather_layer_norm(x, rows_T))
    else:
        benchmark(lambda: F.layer_norm(x, (D,)).reshape(-1, D).index_select(0, rows_T))
