"""The attentive classifier against the reference's own modules (fixture made once by running
facebookresearch/jepa's and vjepa2's AttentiveClassifier): same parameter names and shapes, same logits
from the same weights, for both layouts; and the reference init's per-layer rescaling."""
import math
from pathlib import Path

import pytest
import torch

from engine.eval.attentive import AttentiveClassifier

FIXTURE = Path(__file__).parent.parent / "fixtures" / "ref_attentive_probe.pt"


@pytest.mark.parametrize("layout", ["vjepa", "vjepa2"])
def test_matches_the_reference_classifier(layout):
    ref = torch.load(FIXTURE, weights_only=True)[layout]
    clf = AttentiveClassifier(embed_dim=24, num_heads=3, num_classes=6, depth=ref["depth"], layout=layout).eval()
    clf.load_state_dict(ref["state"], strict=True)   # every reference key, no other, same shapes
    with torch.no_grad():
        torch.testing.assert_close(clf(ref["x"]), ref["logits"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout,depth", [("vjepa", 3), ("vjepa2", 4), ("vjepa2", 1)])
def test_reference_init_rescales_output_projections(layout, depth):
    torch.manual_seed(0)
    clf = AttentiveClassifier(embed_dim=384, num_heads=6, num_classes=5, depth=depth, layout=layout)
    std = lambda w: float(w.detach().std())  # noqa: E731
    blocks = list(clf.pooler.blocks or [])
    first_id = 2 if layout == "vjepa" else 1
    for i, blk in enumerate(blocks):
        want = 0.02 / math.sqrt(2.0 * (first_id + i))
        assert abs(std(blk.attn.proj.weight) / want - 1) < 0.05 and abs(std(blk.mlp.fc2.weight) / want - 1) < 0.05
    xfc2 = 0.02 / math.sqrt(2.0 * (1 if layout == "vjepa" else max(1, len(blocks))))
    assert abs(std(clf.pooler.cross_attention_block.mlp.fc2.weight) / xfc2 - 1) < 0.05
    assert abs(std(clf.pooler.cross_attention_block.xattn.q.weight) / 0.02 - 1) < 0.05   # not rescaled
