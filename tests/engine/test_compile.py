"""model.compile_model: the blocks run compiled, give the eager model's loss and gradients, and a new
packed length reuses the compiled graphs (dynamic shapes) instead of compiling again."""
import copy

import numpy as np
import pytest
import torch

from engine.builders import build_jepa, build_mask_sampler
from engine.config import load_config
from engine.models.layers import Block

SMALL = ["model.depth=1", "model.pred_depth=1", "model.embed_dim=48", "model.num_heads=2", "model.pred_embed_dim=32",
         "model.pred_num_heads=2", "data.batch_size=2"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compiled_blocks_match_eager_without_recompiling():
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    cfg = load_config("configs/tiny_cpu.yaml", [*SMALL, "model.compile_model=true"])
    torch.manual_seed(0)
    compiled = build_jepa(cfg)
    eager = build_jepa(load_config("configs/tiny_cpu.yaml", SMALL))
    eager.load_state_dict(compiled.state_dict())   # same keys: compiling in place does not rename them
    assert all(blk._compiled_call_impl is not None for blk in compiled.modules() if isinstance(blk, Block))
    sampler = build_mask_sampler(cfg)
    rng = np.random.default_rng(0)
    x = torch.randn(2, 3, 8, 64, 64)
    graphs = []
    for _ in range(2):
        masks = sampler.sample(2, rng)
        losses = []
        for model in (compiled, eager):
            model.zero_grad(set_to_none=True)
            loss, _ = model(x, copy.deepcopy(masks))
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
        # one scale for all: a bias gradient summed over tokens can be ~0 by cancellation
        grads = [(n, pc.grad, pe.grad) for (n, pc), pe in zip(compiled.named_parameters(), eager.parameters())
                 if pe.grad is not None]
        scale = max(float(ge.abs().max()) for _, _, ge in grads)
        for name, gc, ge in grads:
            assert float((gc - ge).abs().max()) <= 1e-4 * scale, name
        graphs.append(counters["stats"]["unique_graphs"])
    # the first step compiles (grad and no-grad, per width); the next packed lengths reuse those graphs
    assert graphs[0] > 0 and graphs[1] == graphs[0], graphs
