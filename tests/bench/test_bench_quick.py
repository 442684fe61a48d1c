"""The kernel and loader benchmark scripts run end to end in small modes and write complete tables.
(Speed itself is never asserted in tests: the numbers go to bench/results.)"""
import csv
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_run_kernels_quick_writes_every_op(tmp_path):
    out = tmp_path / "k.csv"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "run_kernels.py"), "--quick", "--no-peak",
                        "--csv", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    ops = {row["op"] for row in rows}
    assert {"copy_", "gather_fwd_bwd", "gather_layer_norm", "gelu_with_grad", "rope_qk_fwd_bwd"} <= ops
    assert any(o.startswith("ema") for o in ops)
    assert all(float(row["GB_s"]) > 0 for row in rows if row["GB_s"])
    # every op row's % is against a copy of the same bytes, and all methods of an op share their bytes
    for row in rows:
        if row["op"] != "copy_":
            gbs, copy = float(row["GB_s"]), float(row["copy_GB_s_same_bytes"])
            # GB/s are written with 2 decimals: allow that rounding in both
            slack = 100 * (0.005 / copy + (gbs + 0.005) * 0.005 / (copy * (copy - 0.005))) + 0.05
            assert copy > 0 and abs(float(row["pct_copy_bw"]) - 100 * gbs / copy) <= slack
    for op in ops - {"copy_"}:
        assert len({row["bytes_MB"] for row in rows if row["op"] == op and row["shape"] == rows[1]["shape"]}) <= 1
    assert {"gather then layer_norm", "kernels.gather_layer_norm", "F.gelu + aten gelu_backward",
            "kernels.gelu_with_grad", "kernels.rope_qk"} <= {row["method"] for row in rows}


def test_bench_attention_ways_compute_the_same_attention():
    # what the attention bench compares is the same work: every way's output equals ours, plain and frame-causal
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import bench_attention
    finally:
        sys.path.remove(str(ROOT / "bench"))
    for frames in (None, 3):
        _, _, forwards = bench_attention.make_ways([54, 7, 30], 2, 16, torch.float32, frames)
        with torch.no_grad():
            outs = {w: f() for w, f in forwards.items()}
        assert set(outs) == {"ours", "pad", "loop", "dense"}
        for w, o in outs.items():
            torch.testing.assert_close(o, outs["ours"], rtol=1e-5, atol=1e-5, msg=f"{w}, frames={frames}")


def test_bench_loader_runs_every_loader(tmp_path):
    """The loader bench on a few small prepared (sparse-ref) and default files: every loader delivers
    clips and gets a row; ratios are against the reference loader of the same run."""
    out = tmp_path / "l.csv"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_loader.py"), "--codecs", "vp9_sparse", "h264",
                        "--crops", "32", "--workers", "0", "--videos", "4", "--batch", "2", "--batches", "2",
                        "--rounds", "1", "--frame-width", "64", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    kinds = ("reference", "pyav", "pyav_u8", "pyav_rgb", "pyav_avopen", "decode_floor")
    want = {("vp9_sparse", k) for k in kinds} | {("h264", k) for k in kinds}
    assert want <= {(row["codec"], row["loader"]) for row in rows}
    assert all(float(row["clips_per_s"]) > 0 for row in rows)
    assert all(float(row["vs_reference"]) == 1.0 for row in rows if row["loader"] == "reference")


def test_bench_yuv_resize_quick(tmp_path):
    out = tmp_path / "y.csv"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_yuv_resize.py"), "--quick", "--csv", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert {row["method"] for row in rows} == {"reference", "rgb_then_resize", "yuv_resized_crop"}
    assert all(float(row["us_per_frame"]) > 0 for row in rows)


def test_bench_kernel_floor_records_gemms_and_attention(tmp_path):
    """The floor bench sees every mode's GEMMs and attention kernels (ATen's and the engine's packed one)
    at the dispatcher, and writes a row per mode."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_kernel_floor as kf
    from bench_e2e import Mode
    tiny = ["model.depth=1", "model.pred_depth=1", "model.embed_dim=48", "model.num_heads=2", "data.batch_size=2",
            "loss.std_coeff=0", "loss.cov_coeff=0"]
    for name in kf.MODES:
        m = Mode(name, ROOT / "configs" / "tiny_cpu.yaml", tiny)
        cfg = m.cfg
        x = torch.randn(cfg.data.batch_size, 3, cfg.frames_per_clip, cfg.data.crop_size, cfg.data.crop_size)
        kinds = [k for _, k, _, _ in kf.record(m, x)]
        assert kinds.count("gemm") >= 6 and kinds.count("attention") >= 2, (name, kinds)
    out = tmp_path / "f.csv"
    kf.main(["--rounds", "1", "--steps", "1", "--threads", "1", "--out", str(out)] + [a for o in tiny for a in ("--set", o)])
    rows = list(csv.DictReader(out.open()))
    assert [r["mode"] for r in rows] == list(kf.MODES)
    assert all(float(r["floor_s"]) > 0 and float(r["floor_gemm_s"]) > 0 and float(r["floor_attention_s"]) > 0
               for r in rows)
