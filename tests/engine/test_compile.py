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
@pytest.mark.parametrize("rope", [False, True])   # with RoPE: the eager blocks' kernels.rope_qk, compiled plain ops
def test_compiled_blocks_match_eager_without_recompiling(rope):
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    small = [*SMALL, f"model.use_rope={str(rope).lower()}"]
    cfg = load_config("configs/tiny_cpu.yaml", [*small, "model.compile_model=true"])
    torch.manual_seed(0)
    compiled = build_jepa(cfg)
    eager = build_jepa(load_config("configs/tiny_cpu.yaml", small))
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


def _deepspeed_compiled(rank, root):
    from engine.runtime.trainer import Trainer
    from tests.distributed.tiny import RandomClips, build_tiny, tiny_cfg
    losses = {}
    for compiled in (False, True):
        cfg = tiny_cfg([f"model.compile_model={str(compiled).lower()}"])
        tr = Trainer(cfg, f"{root}/z2{compiled}", deepspeed=2, model=build_tiny(cfg), dataset=RandomClips(cfg),
                     mask_sampler=build_mask_sampler(cfg), progress=False)
        losses[compiled] = tr.fit(max_steps=3)["losses"]
    cfg = tiny_cfg(["model.compile_model=true"])
    try:
        Trainer(cfg, f"{root}/z3", deepspeed=3, model=build_tiny(cfg), dataset=RandomClips(cfg),
                mask_sampler=build_mask_sampler(cfg), progress=False)
        refused = ""
    except ValueError as e:
        refused = str(e)
    return losses, refused


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_compiled_blocks_under_deepspeed_zero2_and_zero3_refused(tmp_path):
    """ZeRO 0-2 leave the blocks' modules alone: compiled and eager train alike on 2 ranks. ZeRO-3 hooks
    every module (its parameter gathers would be traced and recompiled per call): refused by name."""
    from tests.distributed.spawn import run_ranks
    for losses, refused in run_ranks(_deepspeed_compiled, world_size=2, args=(str(tmp_path),), timeout_s=300):
        np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
        assert "model.compile_model" in refused and "ZeRO stage 3" in refused, refused
