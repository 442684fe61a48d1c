"""Run metrics: grad norms from step 0, throughput columns (tokens/s, MFU, peak memory), the named
summary, group-readable files, the W&B sink (offline), the FLOP count against torch's counter."""
import csv
import json
import math
import os
import re
import stat
import time

import numpy as np
import pytest
import torch

from engine.config import load_config

from tests.engine.test_train import SMALL, videos  # noqa: F401  (the trainer tests' small config and videos)


def test_every_step_logs_grad_norms_and_throughput_and_files_are_group_readable(videos, tmp_path):
    from engine.runtime.trainer import Trainer
    cfg = load_config("configs/tiny_cpu.yaml", SMALL + [f"data.datasets=[{videos / 'train.csv'}]"])
    old = os.umask(0o022)
    try:
        summary = Trainer(cfg, tmp_path, progress=False).fit(max_steps=3)
    finally:
        os.umask(old)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    for r in rows:   # all in the warm-up (no clipping), where the norms used to be NaN
        for col in ("enc_grad_norm", "pred_grad_norm", "tokens_per_s", "mfu", "peak_mem_mb"):
            v = float(r[col])
            assert math.isfinite(v) and v > 0, (r["step"], col, r[col])
        assert float(r["mfu"]) < 1.0
        tokens = int(float(r["ctx_tokens"])) + int(float(r["tgt_tokens"]))
        assert float(r["tokens_per_s"]) == pytest.approx(tokens / (float(r["step_ms"]) / 1e3), rel=1e-3)
    assert "final_loss" not in summary and summary["first_loss"] == pytest.approx(float(rows[0]["loss"]), rel=1e-5)
    assert summary["last_loss"] == pytest.approx(float(rows[-1]["loss"]), rel=1e-5)
    assert summary["mean_loss_last_20"] == pytest.approx(np.mean([float(r["loss"]) for r in rows]), rel=1e-5)
    ckpt = tmp_path / "checkpoints"
    for path in (tmp_path / "metrics.csv", tmp_path / "config.yaml", ckpt / "latest", *ckpt.glob("step_*.pt")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, (path.name, oct(path.stat().st_mode))


def test_grad_norm_is_clip_grad_norm_without_the_clip():
    from engine.core.step import grad_norm
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    b.load_state_dict(a.state_dict())
    (a(torch.randn(4, 8)) ** 2).sum().backward()
    for p, q in zip(a.parameters(), b.parameters()):
        q.grad = p.grad.clone()
    before = [p.grad.clone() for p in a.parameters()]
    norm = grad_norm(a.parameters())                      # no clip: grads untouched
    assert all(torch.equal(g, p.grad) for g, p in zip(before, a.parameters()))
    clipped = grad_norm(a.parameters(), clip=0.1)
    ref = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.1)
    assert norm == clipped == pytest.approx(float(ref), rel=1e-6) and norm > 0.1
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(a.parameters(), b.parameters()))


def test_step_flops_match_torch_flop_counter():
    """The Linear / conv FLOPs counted from shapes equal what torch's FlopCounterMode sees in a real
    forward (it does not count our attention op, so the attention term is checked by hand)."""
    from torch.utils.flop_counter import FlopCounterMode
    from engine.builders import build_jepa, build_mask_sampler
    from engine.runtime import flops
    cfg = load_config("configs/tiny_cpu.yaml", SMALL)
    torch.manual_seed(0)
    model = build_jepa(cfg)
    B = 2
    masks = build_mask_sampler(cfg).sample(B, np.random.default_rng(0))
    x = torch.randn(B, 3, cfg.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, masks)
    counts = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    ours = flops.jepa_forward_flops(model, masks, B, attention=False)
    # the patch embedding runs as one addmm (layers.patch_tokens), like every Linear here
    assert "aten.convolution" not in counts
    assert sum(ours.values()) == counts["aten.addmm"]
    # attention: QK^T and AV, 2 * L * L * width each, per layer and sequence
    enc = model.encoder
    lens = [3, 5]
    extra = flops.transformer_flops(enc, lens) - flops.transformer_flops(enc, lens, attention=False)
    assert extra == 2 * 2 * (3 * 3 + 5 * 5) * enc.embed_dim * len(enc.blocks)
    # the predictor's last block attends from the target rows only (the last sequence's padded up to 64)
    pred = model.predictor
    width = pred.predictor_blocks[0].attn.qkv.out_features // 3
    ctx_l, tgt_l = [2, 4], [5, 3]
    extra = (flops._predictor_blocks_flops(pred.predictor_blocks, ctx_l, tgt_l, True)
             - flops._predictor_blocks_flops(pred.predictor_blocks, ctx_l, tgt_l, False))
    depth = len(pred.predictor_blocks)
    assert extra == 4 * width * ((depth - 1) * (7 * 7 + 7 * 7) + (5 * 7 + (3 + 56) * 7))
    step = flops.jepa_step_flops(model, masks, B)
    full = flops.jepa_forward_flops(model, masks, B)
    assert step == full["target"] + 3 * (full["context"] + full["predictor"])


def test_wandb_logger_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the W&B sink is optional: pip install wandb==0.31.0 (requirements.txt)")
    from engine.runtime.metrics import MetricsLogger
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config("configs/tiny_cpu.yaml", ["logging.tensorboard=false", "logging.wandb=true",
                                                "logging.wandb_project=jepa-test"])
    log = MetricsLogger.from_config(tmp_path, cfg)
    rows = [{"step": s, "loss": 1.0 / (s + 1), "enc_grad_norm": 0.5 + s, "mfu": 0.01 * (s + 1)} for s in range(3)]
    for r in rows:
        log.write(r)
    log.close()
    run_id = (tmp_path / "wandb_id").read_text().strip()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
    # Offline runs keep their records in run-<id>.wandb (protobuf history and summary items: key, then
    # value_json) for `wandb sync`; wandb ships no reader for it, so read the items of the keys we logged.
    # wandb's service process may still be writing the file when finish() returns: wait for it.
    path = runs[0] / f"run-{run_id}.wandb"
    want = {f"train/{k}": [r[k] for r in rows] for k in ("loss", "enc_grad_norm", "mfu")}
    deadline = time.monotonic() + 30
    while True:
        logged = _wandb_items(path.read_bytes())
        history = {k: v[::2] for k, v in logged.items()}   # each value as a history item, then a summary item
        if all(len(history.get(k, [])) >= len(v) for k, v in want.items()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for key, values in want.items():
        assert history.get(key) == pytest.approx(values), (key, logged)
    with open(tmp_path / "metrics.csv") as f:            # the CSV sink got the same rows
        assert [float(r["loss"]) for r in csv.DictReader(f)] == pytest.approx([r["loss"] for r in rows])


def _wandb_items(data: bytes) -> dict:
    """{key: [values]} of the train/* items in the order they appear in a .wandb record file."""
    out = {}
    for m in re.finditer(rb"\x12.(train/[a-z_]+)\x82\x01(.)", data, re.S):
        out.setdefault(m.group(1).decode(), []).append(json.loads(data[m.end():m.end() + m.group(2)[0]]))
    return out
