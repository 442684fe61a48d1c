"""bench/gpu_check.py: its dry run plans every device backend of every op; its harness runs on CPU
backends (--self-test) and turns a failed correctness check into exit status 1."""
import csv
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod
    spec.loader.exec_module(mod)
    return mod


def _rows(path):
    return list(csv.DictReader(open(path)))


def test_dry_run_plans_every_device_backend(tmp_path):
    gc = _module()
    assert gc.main(["--dry-run", "--out-dir", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "gpu_dryrun_correctness.csv")
    planned = {(r["case_op"], r["backend"], r["dtype"]) for r in rows}
    for op in ("gather", "ema_", "block_attention"):
        for backend in ("triton", "cuda"):
            for dt in ("float32", "float16", "bfloat16"):
                assert (op, backend, dt) in planned, (op, backend, dt)
    for dt in ("float32", "float16", "bfloat16"):
        assert ("rope_qk", "triton", dt) in planned   # no CUDA extension kernel: Triton is its device path
    assert all(r["status"] == "would run" or r["status"].startswith("would skip: ") for r in rows)
    attn = {r["case"] for r in rows if r["case_op"] == "block_attention"}
    assert any("causal=True" in c for c in attn) and any("causal=False" in c for c in attn)
    assert any("Dh80" in c for c in attn) and any("one_token" in c for c in attn)
    for sec in ("ops", "e2e", "decode"):
        assert _rows(tmp_path / f"gpu_dryrun_{sec}.csv")


def test_self_test_runs_the_checks_on_cpu(tmp_path):
    gc = _module()
    assert gc.main(["--self-test", "--sections", "correctness,ops", "--out-dir", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "gpu_selftest_correctness.csv")
    assert rows and all(r["status"] == "ok" for r in rows)
    assert {r["check"] for r in rows} >= {"gather/scatter (exact)", "gather_layer_norm", "ema_",
                                          "block_attention out", "block_attention dq", "rope_qk q", "rope_qk dk"}
    ops = _rows(tmp_path / "gpu_selftest_ops.csv")
    assert {r["op"] for r in ops} == {"ema", "gather_fwd_bwd", "gather_layer_norm", "block_attention", "rope_qk"}
    assert all(float(r["copy_GB_s_same_bytes"]) > 0 and r["pct_copy_bw"] for r in ops if r["op"] != "block_attention")


def test_a_failed_check_is_exit_status_1(tmp_path, monkeypatch):
    gc = _module()
    wrong = dict(op="ema_", err=1.0, err_ref=0.0, floor=0.0, ok=False)
    cases = gc.correctness_cases
    monkeypatch.setattr(gc, "correctness_cases", lambda *a: [c for c in cases(*a) if c[0] == "ema_"])
    monkeypatch.setattr(gc, "check_ema", lambda *a, **kw: [wrong])
    assert gc.main(["--self-test", "--sections", "correctness", "--out-dir", str(tmp_path)]) == 1
    rows = _rows(tmp_path / "gpu_selftest_correctness.csv")
    assert any(r["status"] == "FAIL" and r["case_op"] == "ema_" for r in rows)


def test_isolated_cases_match_in_process_ones_and_a_crashed_child_is_a_failed_row(tmp_path, monkeypatch):
    gc = _module()
    args = ["--self-test", "--sections", "correctness", "--match", "ema_"]
    assert gc.main(args + ["--out-dir", str(tmp_path / "a")]) == 0
    assert gc.main(args + ["--isolate", "--jobs", "2", "--out-dir", str(tmp_path / "b")]) == 0
    key = lambda rows: [(r["case_op"], r["case"], r["check"], r["status"]) for r in rows]   # noqa: E731
    in_process = _rows(tmp_path / "a" / "gpu_selftest_correctness.csv")
    assert in_process and key(in_process) == key(_rows(tmp_path / "b" / "gpu_selftest_correctness.csv"))
    # a child that dies without printing its results (a CUDA fault, a segfault) fails its case only
    monkeypatch.setattr(gc.sys, "executable", "/bin/false")
    assert gc.main(args + ["--isolate", "--out-dir", str(tmp_path / "c")]) == 1
    rows = _rows(tmp_path / "c" / "gpu_selftest_correctness.csv")
    assert rows and all(r["status"] == "FAIL" and r["error"].startswith("child exited 1") for r in rows)


def test_e2e_runs_the_modes_asked_for_and_refuses_an_unknown_one(tmp_path):
    import pytest
    gc = _module()
    assert gc.main(["--self-test", "--sections", "e2e", "--e2e-modes", "ragged", "--out-dir", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "gpu_selftest_e2e.csv")
    assert [(r["mode"], r["status"]) for r in rows] == [("ragged", "ok")]
    assert float(rows[0]["s_per_step"]) > 0 and int(rows[0]["tokens_per_step"]) > 0
    with pytest.raises(SystemExit):
        gc.main(["--self-test", "--sections", "e2e", "--e2e-modes", "ragged+fast", "--out-dir", str(tmp_path)])


def test_e2e_trains_a_world_model_config_on_random_trajectories(tmp_path):
    gc = _module()
    assert gc.main(["--self-test", "--sections", "e2e", "--e2e-modes", "ragged", "--e2e-config",
                    str(ROOT / "configs" / "hjepa_tiny_cpu.yaml"), "--out-dir", str(tmp_path)]) == 0
    (row,) = _rows(tmp_path / "gpu_selftest_e2e.csv")
    assert (row["config"], row["mode"], row["status"]) == ("hjepa_tiny_cpu.yaml", "eager", "ok")
    assert float(row["s_per_step"]) > 0 and float(row["samples_per_s"]) > 0
