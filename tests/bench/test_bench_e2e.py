"""bench/bench_e2e.py: its reference_style step computes the engine's compat loss (the same truncated
masks the reference way: per-config dense passes), and the script writes a row per mode."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from bench_e2e import reference_blocks, reference_style_loss, step_tensor_peak_mb  # noqa: E402

from engine.builders import build_jepa, build_mask_sampler  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.models.layers import Attention  # noqa: E402

SMALL = ["model.depth=2", "model.pred_depth=2", "model.embed_dim=48", "model.num_heads=2",
         "model.pred_embed_dim=32", "model.pred_num_heads=2", "loss.std_coeff=0", "loss.cov_coeff=0",
         "data.batch_size=3"]


@pytest.mark.parametrize("rope", [False, True])
def test_reference_style_loss_is_the_compat_loss(rope):
    cfg = load_config(ROOT / "configs" / "tiny_cpu.yaml", [*SMALL, "meta.mask_mode=compat",
                                                          f"model.use_rope={str(rope).lower()}"])
    torch.manual_seed(0)
    model = build_jepa(cfg)
    with torch.no_grad():   # non-zero mask tokens, so a wrong token choice changes the loss
        for t in model.predictor._mask_token_params():
            t.normal_()
    masks = build_mask_sampler(cfg).sample(3, np.random.default_rng(0))
    x = torch.randn(3, 3, 8, 64, 64)
    ours, _ = model(x, masks)
    reference_blocks(model)   # the plain ops: GELU and norms kept by autograd, q and k turned one at a time
    assert all(not m.fused_rope for m in model.modules() if isinstance(m, Attention))
    ref = reference_style_loss(model, x, masks)
    torch.testing.assert_close(ref, ours, rtol=1e-5, atol=0)


def test_bench_e2e_writes_every_mode(tmp_path):
    out = tmp_path / "e2e.csv"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_e2e.py"), "--rounds", "1", "--steps", "1", "--threads", "1",
           "--no-profile", "--out", str(out), "--modes", "reference_style,compat,ragged,ragged:bfloat16",
           *[a for o in SMALL for a in ("--set", o)]]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {row["mode"]: row for row in csv.DictReader(out.open())}
    assert set(rows) == {"reference_style", "compat", "ragged", "ragged:bfloat16"}
    # every mode draws the same masks: the bf16 row trains the fp32 row's tokens
    assert float(rows["ragged:bfloat16"]["tokens_per_step"]) == float(rows["ragged"]["tokens_per_step"])
    # the same truncated masks: equal tokens; ragged trains every kept token, so at least as many
    assert float(rows["compat"]["tokens_per_step"]) == float(rows["reference_style"]["tokens_per_step"])
    assert float(rows["ragged"]["tokens_per_step"]) >= float(rows["compat"]["tokens_per_step"])
    for row in rows.values():
        assert float(row["gflop_per_step"]) > 0 and 0 < float(row["share_of_peak_gemm"])
        assert float(row["step_peak_mb"]) > 0 and float(row["step_tensor_peak_mb"]) > 0


def test_step_tensor_peak_counts_the_most_a_step_holds_at_once():
    # A step that holds 4 MiB, then 4 + 2 MiB, frees both and allocates 3 MiB peaks at 6 MiB; a tensor made
    # before the step and dropped in it (as the last step's gradients) subtracts nothing.
    class Step:
        old = torch.ones(2**20)

        def step(self, x):
            self.old = None
            a = torch.ones(2**20)            # 4 MiB of fp32
            b = torch.ones(2**19)            # 2 MiB
            del a, b
            self.kept = torch.ones(3 * 2**18)   # 3 MiB, replaced (freed) by the next step's
    assert abs(step_tensor_peak_mb(Step(), None, steps=1) - 6.0) < 0.01


def test_bench_e2e_names_a_bad_mode():
    cmd = [sys.executable, str(ROOT / "bench" / "bench_e2e.py"), "--modes", "ragged:float16"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--modes: mode 'ragged:float16'" in r.stderr


def test_the_reference_code_mode_needs_a_checkout_of_it(tmp_path):
    bench = [sys.executable, str(ROOT / "bench" / "bench_e2e.py")]
    r = subprocess.run([*bench, "--modes", "reference_code,ragged"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "--modes reference_code needs --reference-repo DIR" in r.stderr
    r = subprocess.run([*bench, "--modes", "reference_code:bfloat16"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "the reference loop trains in fp32 on a CPU" in r.stderr
    r = subprocess.run([*bench, "--modes", "reference_code", "--reference-repo", str(tmp_path), "--set", "model.depth=12",
                        "--set", "loss.std_coeff=0", "--set", "loss.cov_coeff=0"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "not a checkout of facebookresearch/jepa" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([*bench, "--modes", "reference_code", "--reference-repo", str(tmp_path), "--set", "model.depth=2",
                        "--set", "loss.std_coeff=0", "--set", "loss.cov_coeff=0"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "model.depth=2, but the reference builds vit_tiny by name" in r.stderr
    r = subprocess.run([*bench, "--modes", "reference_code", "--reference-repo", str(tmp_path),
                        "--set", "model.depth=12"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "the reference objective has no loss.std_coeff, loss.cov_coeff" in r.stderr


REFERENCE_REPO = os.environ.get("JEPA_REFERENCE_REPO")
VJEPA2_REPO = os.environ.get("JEPA_VJEPA2_REPO")


def _reference_rows(tmp_path, repo, modes, overrides):
    """(the bench command, its rows by mode) for one quick round of `modes` against the checkout `repo`."""
    out = tmp_path / "e2e.csv"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_e2e.py"), "--rounds", "1", "--steps", "1", "--threads", "1",
           "--no-profile", "--out", str(out), "--modes", modes, "--reference-repo", repo,
           *[a for o in ["model.depth=12", "model.pred_depth=2", "model.pred_embed_dim=48", *overrides,
                         "loss.std_coeff=0", "loss.cov_coeff=0", "data.batch_size=3"] for a in ("--set", o)]]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return cmd, {row["mode"]: row for row in csv.DictReader(out.open())}


@pytest.mark.skipif(not REFERENCE_REPO, reason="needs a checkout of facebookresearch/jepa in JEPA_REFERENCE_REPO "
                                               "(not shipped, and not fetched by the tests)")
def test_the_reference_code_row_runs_its_step(tmp_path):
    cmd, rows = _reference_rows(tmp_path, REFERENCE_REPO, "reference_code,reference_style", ["model.pred_num_heads=3"])
    # its collator truncates to the batch minimum, as the reference_style row does: fewer than B * N * configs
    for row in rows.values():
        assert 0 < float(row["tokens_per_step"]) < 3 * 256 * 2 and float(row["gflop_per_step"]) > 0
    # facebookresearch/jepa has no RoPE: asked for one, the row is refused by name
    r = subprocess.run([*cmd, "--set", "model.use_rope=true"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "model.use_rope is V-JEPA 2's" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(not VJEPA2_REPO, reason="needs a checkout of facebookresearch/vjepa2 in JEPA_VJEPA2_REPO, its "
                                            "modules' timm importable (not shipped, and not fetched by the tests)")
def test_the_vjepa2_reference_code_row_runs_its_rope_step(tmp_path):
    _, rows = _reference_rows(tmp_path, VJEPA2_REPO, "reference_code,ragged",
                              ["model.pred_num_heads=2", "model.use_rope=true"])
    ref, ours = rows["reference_code"], rows["ragged"]
    # its collator truncates to the batch minimum: fewer tokens than the ragged step trains
    assert 0 < float(ref["tokens_per_step"]) < float(ours["tokens_per_step"]) and float(ref["gflop_per_step"]) > 0
