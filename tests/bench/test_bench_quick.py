"""The kernel and loader benchmark scripts run end to end in small modes and write complete tables.
(Speed itself is never asserted in tests: the numbers go to bench/results.)"""
import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_run_kernels_quick_writes_every_op(tmp_path):
    out = tmp_path / "k.csv"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "run_kernels.py"), "--quick", "--no-peak",
                        "--csv", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    ops = {row["op"] for row in rows}
    assert {"copy_", "gather_fwd_bwd", "gather_layer_norm"} <= ops and any(o.startswith("ema") for o in ops)
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
    assert {"gather then layer_norm", "kernels.gather_layer_norm"} <= {row["method"] for row in rows}


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
