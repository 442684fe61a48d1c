"""The kernel benchmark script runs end to end in its quick mode and writes a complete table.
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
