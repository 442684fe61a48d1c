"""One command for one short window on one GPU (H100/H200): are the device kernels correct, how fast are
they against the library kernels, and what does a ViT-L V-JEPA step do. Under 8 minutes; CSVs in
bench/results/gpu_*.csv; exit status 1 when any correctness case fails.

    python setup.py build_ext --inplace            # first, on a machine with its own CUDA torch: the C++/CUDA
                                                   # ops against that torch (no install; setuptools >= 77, or
                                                   # run it on a copy of setup.py + csrc/ without pyproject.toml)
    python bench/gpu_check.py                      # on a CUDA machine: every section
    python bench/gpu_check.py --dry-run            # anywhere: what it would run (the default without CUDA)
    python bench/gpu_check.py --self-test          # on CPU: the harness itself, CPU backends, tiny shapes
    python bench/gpu_check.py --sections correctness,ops --budget-s 450 --out-dir bench/results

Sections, in this order (each starts no new case once the time budget is spent; those rows say so):
  correctness  gpu_correctness.csv: every device backend of every op (kernels/_registry.py: triton and
               cuda; block attention's cuda = flash_attn, torch's own flash kernel, xformers, each alone, and
               FlexAttention for block-causal calls) in
               fp32/fp16/bf16 against fp64 references, gradients included, block_causal on and off, odd
               lengths and head dims. Rule (FlashAttention's): error <= 2x (outputs) / 3x (grads) the
               error of the same-dtype torch reference, plus a rounding floor that scales with the
               magnitudes that sum (so an output that is 0 by cancellation is judged fairly).
               Gather/scatter must be exact. Triton tiles are fixed here (autotune off: fewer compiles).
  e2e          gpu_e2e.csv: the ViT-L/16 V-JEPA step at 16x224x224 (bf16 autocast, AdamW, EMA; batch
               --e2e-batch): tokens/s, MFU (model FLOPs 6 x encoder params x context tokens + 6 x predictor
               params x context+target tokens + 2 x encoder params x all tokens for the target pass,
               attention excluded, over the device's dense bf16 peak), peak memory, ragged against compat.
               --e2e-modes picks rows (compat / ragged, "+compile": model.compile_model, "+flex": block-causal
               attention on FlexAttention, "+allrows": the predictor's last block on every row), --e2e-profile
               adds the share of the step the device is busy and its top kernels, --e2e-config runs
               another config's step (a world model on random trajectories: time and memory).
  ops          gpu_ops.csv: EMA, gather and RoPE (q and k, fwd+bwd) in GB/s and % of a device-to-device
               copy_ of the same bytes measured in this run; block attention fwd+bwd TFLOP/s counting real
               tokens only, ours (Triton, autotuned) beside flash_attn varlen, torch's flash varlen, xformers
               and SDPA (padded, and per-sequence loop) on V-JEPA length mixes, and beside FlexAttention and
               SDPA with the dense frame mask on the world models' block-causal mixes. Methods alternate round by
               round; medians of CUDA-event times.
  decode       gpu_decode.csv: DALI NVDEC (fn.readers.video on the GPU) against PyAV, clips/s, on H.264
               files written at the start.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import kernels  # noqa: E402
from kernels import _registry  # noqa: E402
from engine.core.io import atomic_write_csv  # noqa: E402

SECTIONS = ("correctness", "e2e", "ops", "decode")   # the step before the op timings: it matters more
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# dense bf16 tensor-core peaks (no sparsity), FLOP/s, for MFU
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
ATTN_LENS = {   # (lengths, block_causal) cases: the CPU tests' odd ones and a V-JEPA-like mix
    "one_token": [1, 1, 1, 1],
    "odd_lengths": [7, 33, 65, 100, 17],
    "many_short": [3, 9, 1, 14, 20, 5, 11, 2, 19, 8, 6, 13, 4, 16, 10, 7, 12, 18, 15, 1],
    "few_long": [300, 257],
    "empty_seqs": [0, 5, 0, 9, 0],
    "vjepa_mix": [1568, 611, 75, 402],
    # (query lengths, key lengths): the predictor's last block attends from its target rows only
    "cross": ([9, 0, 1, 30, 200, 700], [20, 5, 1, 30, 257, 1000]),
}
ATTN_CASES = [("one_token", 64, False), ("odd_lengths", 80, True), ("many_short", 24, False),
              ("few_long", 128, True), ("empty_seqs", 64, True), ("vjepa_mix", 64, False), ("odd_lengths", 40, False),
              ("vjepa_mix", 80, True), ("odd_lengths", 16, False), ("many_short", 96, True), ("empty_seqs", 32, False),
              ("cross", 64, False), ("cross", 32, False),
              # block-causal with the head dims FlexAttention takes (the "cuda" backend's flex path)
              ("odd_lengths", 64, True), ("many_short", 32, True), ("vjepa_mix", 128, True)]


# -- plumbing ---------------------------------------------------------------------------------------------
class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ways(ways: dict, reps: int, device) -> dict:
    """Median ms per way; the ways alternate round by round (A B C A B C ...)."""
    for fn in ways.values():
        fn()
    sync(device)
    ts = {w: [] for w in ways}
    for _ in range(reps):
        for w, fn in ways.items():
            if device.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                ts[w].append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                fn()
                ts[w].append(1e3 * (time.perf_counter() - t0))
    return {w: sorted(v)[len(v) // 2] for w, v in ts.items()}


def device_backends(op: str, device, extra: dict) -> list[tuple[str, str | None]]:
    """(backend, None) for each device backend of op that runs here, (backend, reason) for the others."""
    wanted = ("triton", "cuda") if device.type == "cuda" else ("cpp",)
    out = []
    for b in wanted:
        if b in _registry.backends(op):
            out.append((b, _registry.REGISTRY[op][b].refusal(device, extra)))
    return out


def matches(match: str, text: str) -> bool:
    """--match: a comma-separated list of substrings, any of which selects; empty selects everything."""
    return not match or any(m.strip() and m.strip() in text for m in match.split(","))


def rule_ok(err: float, err_ref: float, floor: float, factor: float) -> bool:
    return math.isfinite(err) and err <= factor * err_ref + floor


# -- correctness ------------------------------------------------------------------------------------------
def check_gather(device, backend, dtype, B, N, D, K, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D, generator=g).to(device=device, dtype=dtype)
    idx_BK = torch.stack([torch.randperm(N, generator=g)[:K] for _ in range(B)]).to(device)
    rows = (idx_BK + torch.arange(B, device=device)[:, None] * N).reshape(-1)
    gy = torch.randn(B * K, D, generator=g).to(device=device, dtype=dtype)
    with kernels.backend(backend):
        xr = x.clone().requires_grad_(True)
        y = kernels.gather_tokens(xr, rows)
        y.backward(gy)
        ok = torch.equal(y, x.reshape(B * N, D)[rows])
        want = torch.zeros(B * N, D, device=device, dtype=dtype)
        want[rows] = gy
        ok = ok and torch.equal(xr.grad.reshape(B * N, D), want)
        ok = ok and torch.equal(kernels.scatter_tokens(gy, rows, B, N).reshape(B * N, D), want)
        ok = ok and torch.equal(kernels.gather_tokens(x, idx_BK), torch.gather(x, 1, idx_BK[..., None].expand(-1, -1, D)))
        ln = kernels.gather_layer_norm(x, rows)
    ref64 = F.layer_norm(x.double().reshape(B * N, D)[rows], (D,))
    ref = F.layer_norm(x.reshape(B * N, D)[rows], (D,))
    err = (ln.double() - ref64).abs().max().item() if K else 0.0
    err_ref = (ref.double() - ref64).abs().max().item() if K else 0.0
    floor = 4 * torch.finfo(dtype).eps * math.sqrt(D)   # |y| <= sqrt(D) after normalisation
    ok_ln = rule_ok(err, err_ref, floor, 2)
    return [dict(op="gather/scatter (exact)", err=0.0 if ok else float("nan"), err_ref=0.0, floor=0.0, ok=ok),
            dict(op="gather_layer_norm", err=err, err_ref=err_ref, floor=floor, ok=ok_ln)]


def check_ema(device, backend, dtype, sizes, seed):
    g = torch.Generator().manual_seed(seed)
    tdt = torch.float64 if dtype == torch.float64 else torch.float32
    t = [torch.randn(n, generator=g).to(device=device, dtype=tdt) for n in sizes]
    s = [torch.randn(n, generator=g).to(device=device, dtype=dtype) for n in sizes]
    m = 0.99925
    want = [m * a.double() + (1 - m) * b.double() for a, b in zip(t, s)]
    ref = [a.clone() for a in t]
    kernels.ema_ref(ref, s, m)
    with kernels.backend(backend):
        kernels.ema_(t, s, torch.tensor(m, dtype=torch.float64, device=device))
    err = max(((a.double() - w).abs().max().item() for a, w in zip(t, want) if a.numel()), default=0.0)
    err_ref = max(((a.double() - w).abs().max().item() for a, w in zip(ref, want) if a.numel()), default=0.0)
    floor = 2 * torch.finfo(tdt).eps * max((w.abs().max().item() for w in want if w.numel()), default=0.0)
    return [dict(op="ema_", err=err, err_ref=err_ref, floor=floor, ok=rule_ok(err, err_ref, floor, 2))]


def _attn_run(fn, q, k, v, dout, cu, L, frames):
    """cu, L: one (cu_seqlens, max_seqlen) for queries and keys alike, or a (queries, keys) pair of each."""
    (cu_q, cu_k), (L_q, L_k) = (cu if isinstance(cu, tuple) else (cu, cu)), (L if isinstance(L, tuple) else (L, L))
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v, cu_q, cu_k, max_seqlen_q=L_q, max_seqlen_k=L_k, block_causal=frames)
    if not out.requires_grad:
        return [out.detach()] + [torch.zeros_like(t) for t in (q, k, v)]
    out.backward(dout)
    return [out.detach(), q.grad, k.grad, v.grad]


def check_attention(device, backend, dtype, lens, D, causal, seed, H=2):
    """FlashAttention's rule on out, dq, dk, dv; floors as tests/kernels/test_block_attention.py's."""
    g = torch.Generator().manual_seed(seed)
    lens_q, lens_k = lens if isinstance(lens, tuple) else (lens, lens)

    def cu_of(ls):
        return torch.tensor([0] + ls).cumsum(0).to(device=device, dtype=torch.int32)

    cu, L = (cu_of(lens_q), cu_of(lens_k)), (max(lens_q), max(lens_k))
    T, Tk = sum(lens_q), sum(lens_k)
    q, dout = (torch.randn(T, H, D, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    k, v = (torch.randn(Tk, H, D, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    frames = None
    if causal:
        frames = torch.cat([torch.randint(0, 4, (n,), generator=g).sort().values for n in lens_q]).to(device)
    ref_fn = kernels.block_attention_ref

    def ours(*a, **kw):
        with kernels.backend(backend):
            return kernels.block_attention(*a, **kw)

    ref64 = _attn_run(ref_fn, q.double(), k.double(), v.double(), dout.double(), cu, L, frames)
    ref = _attn_run(ref_fn, q, k, v, dout, cu, L, frames)
    got = _attn_run(ours, q, k, v, dout, cu, L, frames)
    # magnitudes the outputs sum (see _term_magnitudes in the tests): out, dq, dk, dv
    qd, kd, vd, dd = (t.double() for t in (q, k, v, dout))
    out_abs, _, _, dv_abs = _attn_run(ref_fn, qd, kd, vd.abs(), dd.abs(), cu, L, frames) if T else [torch.zeros(1)] * 4
    dot_max = torch.einsum("thd,shd->hts", dd.abs(), vd.abs()).max().item() if T else 0.0
    sc = D ** -0.5
    terms = [out_abs.abs().max().item(), 2 * sc * (kd.abs().max().item() if Tk else 0) * dot_max,
             2 * sc * (qd.abs().max().item() if T else 0) * dot_max, dv_abs.abs().max().item()]
    rows = []
    eps_out, eps_acc = torch.finfo(dtype).eps, torch.finfo(torch.float32).eps
    for i, name in enumerate(("out", "dq", "dk", "dv")):
        t = ref64[i]
        err = (got[i].double() - t).abs().max().item() if t.numel() else 0.0
        err_ref = (ref[i].double() - t).abs().max().item() if t.numel() else 0.0
        floor = 4 * eps_out * (t.abs().max().item() if t.numel() else 0.0) + eps_acc * terms[i]
        rows.append(dict(op=f"block_attention {name}", err=err, err_ref=err_ref, floor=floor,
                         ok=rule_ok(err, err_ref, floor, 2 if i == 0 else 3)))
    return rows


def _rope_run(fn, q, k, cos, sin, gq, gk):
    qkv = torch.stack([q, k]).detach().requires_grad_(True)
    qo, ko = fn(qkv[0], qkv[1], cos, sin)
    qkv.grad = None
    torch.autograd.backward([qo, ko], [gq, gk])
    return [qo.detach(), ko.detach(), qkv.grad[0], qkv.grad[1]]


def check_rope(device, backend, dtype, M, H, Dh, R, seed):
    """q, k turned (and their gradients turned back) against the fp64 reference; the floor scales with the
    largest term that enters an output (|x| |cos| + |x'| |sin| <= 2 max|x|)."""
    g = torch.Generator().manual_seed(seed)
    q, k, gq, gk = (torch.randn(M, H, Dh, generator=g).to(device=device, dtype=dtype) for _ in range(4))
    ang = (torch.randn(M, 1, R, generator=g) * 4).to(device)
    cos, sin = ang.cos(), ang.sin()

    def ref(q, k, c, s):
        return kernels.rope_ref(q, c, s), kernels.rope_ref(k, c, s)

    ref64 = _rope_run(ref, q.double(), k.double(), cos.double(), sin.double(), gq.double(), gk.double())
    with kernels.backend(backend):   # the backward (the same op, transposed) on the same backend
        got = _rope_run(kernels.rope_qk, q, k, cos, sin, gq, gk)
    refd = _rope_run(ref, q, k, cos, sin, gq, gk)
    rows = []
    for i, name in enumerate(("q", "k", "dq", "dk")):
        t = ref64[i]
        src = (q, k, gq, gk)[i]
        err = (got[i].double() - t).abs().max().item() if t.numel() else 0.0
        err_ref = (refd[i].double() - t).abs().max().item() if t.numel() else 0.0
        floor = 4 * torch.finfo(dtype).eps * 2 * (src.double().abs().max().item() if src.numel() else 0.0)
        rows.append(dict(op=f"rope_qk {name}", err=err, err_ref=err_ref, floor=floor, ok=rule_ok(err, err_ref, floor, 2)))
    return rows


def correctness_cases(device, small: bool):
    """(op, backend, dtype, label, thunk) for every case, or a reason it cannot run."""
    cases = []
    dtypes = DTYPES if device.type == "cuda" else (torch.float32,)
    gathers = [(2, 1568, 1024, 400), (3, 37, 80, 11), (1, 1, 1, 1), (2, 9, 24, 0)]
    emas = [[1, 7, 70001, 0, 1024 * 1024 + 3], [5]]
    attn = ATTN_CASES[:3] if small else ATTN_CASES
    if small:
        gathers = gathers[1:]
        emas = [[1, 7, 3001, 0]]
    for b, why in device_backends("gather_rows", device, {}):
        for dt in dtypes:
            for B, N, D, K in gathers:
                cases.append(("gather", b, dt, f"B{B} N{N} D{D} K{K}", why,
                              lambda b=b, dt=dt, B=B, N=N, D=D, K=K: check_gather(device, b, dt, B, N, D, K, seed=D)))
    for dt in dtypes:
        for b, why in device_backends("ema_", device, {"fp64": False}):
            for sizes in emas:
                cases.append(("ema_", b, dt, f"{len(sizes)} tensors, {sum(sizes)} elements", why,
                              lambda b=b, dt=dt, sizes=sizes: check_ema(device, b, dt, sizes, seed=len(sizes))))
    for dt in dtypes:
        for b, why in device_backends("rope_qk", device, {"dtype": dt}):
            for M, H, Dh, R in ([(37, 3, 20, 18), (0, 2, 8, 8)] if small else [(37, 3, 20, 18), (0, 2, 8, 8), (6272, 16, 64, 60)]):
                cases.append(("rope_qk", b, dt, f"M{M} H{H} Dh{Dh} R{R}", why,
                              lambda b=b, dt=dt, M=M, H=H, Dh=Dh, R=R: check_rope(device, b, dt, M, H, Dh, R, seed=Dh)))
    for dt in dtypes:
        for b, why in device_backends("block_attention", device, {"dtype": dt, "head_dim": 64, "causal": False}):
            ba = sys.modules["kernels.block_attention"]
            # the library kernels one at a time: flash_attn, torch's flash with flash_attn hidden, xformers with both hidden
            libs = ({"flash_attn": ba.flash_attn_varlen_func, "torch_flash": True if _with_library(
                "torch_flash", ba.torch_flash_ok) else None, "xformers": ba.fmha,
                "flex": True if ba.flex_runs() else None} if b == "cuda" else {None: True})
            for lib, present in libs.items():
                for name, D, causal in attn:
                    call = {"dtype": dt, "head_dim": D, "causal": causal}
                    reason = why
                    if reason is None and present is None:
                        reason = f"{lib} is not installed"
                    elif reason is None and lib is not None:
                        reason = _with_library(lib, lambda: _registry.REGISTRY["block_attention"][b].refusal(device, call))
                        if reason is None and _with_library(lib, lambda: ba._library(dt, D, causal)) != lib:
                            reason = f"{lib} does not take this call"
                    label = f"{name} Dh{D} causal={causal}" + (f" [{lib}]" if lib else "")
                    cases.append(("block_attention", b, dt, label, reason,
                                  lambda b=b, dt=dt, name=name, D=D, causal=causal, lib=lib:
                                  _with_library(lib, lambda: check_attention(device, b, dt, ATTN_LENS[name], D, causal,
                                                                             seed=D))))
    return cases


def _with_library(lib, fn):
    """Run fn with `lib` first among block attention's library kernels: the ones before it are hidden
    (torch_flash: flash_attn hidden; xformers: both). flex (FlexAttention, opt-in outside this script:
    JEPA_FLEX_ATTENTION=1) takes only block-causal calls, which no other library kernel takes; "noflex"
    hides it (those calls then run our Triton kernel)."""
    ba = sys.modules["kernels.block_attention"]
    saved = ba.flash_attn_varlen_func, dict(ba._torch_flash), dict(ba._flex)
    if lib in ("torch_flash", "xformers"):
        ba.flash_attn_varlen_func = None
    if lib == "xformers":
        ba._torch_flash["ok"] = False
    if lib in ("flex", "noflex"):
        ba._flex["ok"] = lib == "flex" and ba.flex_runs()
    try:
        return fn()
    finally:
        ba.flash_attn_varlen_func = saved[0]
        for d, old in ((ba._torch_flash, saved[1]), (ba._flex, saved[2])):
            d.clear()
            d.update(old)


def _crashed(op: str, error: str) -> list[dict]:
    """The one failed row of a case that raised or whose process died."""
    return [dict(op=op, err=float("nan"), err_ref=float("nan"), floor=0.0, ok=False, error=error)]


def run_case(device, small, index: int) -> list[dict]:
    """Correctness case `index` of correctness_cases, in this process; a crash is a failed row."""
    op, _, _, _, _, thunk = correctness_cases(device, small)[index]
    try:
        results = thunk()
        sync(device)
    except Exception as e:   # a crash is a failure of this case, reported; the run goes on
        traceback.print_exc()
        results = _crashed(op, f"{type(e).__name__}: {str(e)[:300]}")
    return results


def run_case_isolated(device, small, index: int) -> list[dict]:
    """Case `index` in a fresh process: an illegal memory access ends that process's CUDA context only,
    and the cases after it still run. The child prints its results as the last line of its output."""
    cmd = [sys.executable, __file__, "--case", str(index)] + (["--self-test"] if small else [])
    env = dict(os.environ, JEPA_TRITON_AUTOTUNE="0")
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        last = r.stdout.strip().splitlines()[-1:] or [""]
        results = json.loads(last[0]) if last[0].startswith("[") else None
        for x in results or []:   # JSON has no NaN: the child wrote None
            x.update({k: float("nan") for k in ("err", "err_ref", "floor") if x.get(k) is None})
        why = f"child exited {r.returncode}: {r.stderr.strip()[-300:]}"
    except subprocess.TimeoutExpired:
        results, why = None, "child ran past 600 s"
    if results is None:
        results = _crashed(correctness_cases(device, small)[index][0], why)
    elif r.returncode == 0 and any(x.get("error") for x in results):
        print(r.stderr[-3000:], flush=True)   # the crashed case's traceback
    return results


def run_correctness(device, budget, small, dry, isolate=False, jobs=8, match=""):
    rows, failures = [], 0
    os.environ["JEPA_TRITON_AUTOTUNE"] = "0"
    todo = []
    for index, (op, b, dt, label, why, _) in enumerate(correctness_cases(device, small)):
        base = dict(section="correctness", case_op=op, backend=b, dtype=str(dt).split(".")[-1], case=label)
        if not matches(match, f"{op} {b} {base['dtype']} {label}"):
            continue
        if dry:
            rows.append({**base, "status": "would run" if why is None else f"would skip: {why}"})
        elif why is not None:
            rows.append({**base, "status": f"skipped: {why}"})
        else:
            todo.append((index, base))
    with ThreadPoolExecutor(jobs if isolate else 1) as pool:
        def one(item):
            index, base = item
            if budget.left() <= 0:
                return base, None
            return base, (run_case_isolated if isolate else run_case)(device, small, index)
        for base, results in pool.map(one, todo):
            if results is None:
                rows.append({**base, "status": "skipped: budget"})
                continue
            for r in results:
                failures += not r["ok"]
                rows.append({**base, "status": "ok" if r["ok"] else "FAIL", "check": r["op"],
                             "err": f"{r['err']:.3g}", "err_ref": f"{r['err_ref']:.3g}", "floor": f"{r['floor']:.3g}",
                             "error": r.get("error", "")})
            # one line a case as it ends, so a run cut short by its time limit still shows how far it got
            print(f"  {base['case_op']:15} {base['backend']:6} {base['dtype']:8} {base['case']:40} "
                  + " ".join("ok" if r["ok"] else f"FAIL({r['op']}: {r['err']:.3g} > {r['err_ref']:.3g}, "
                             f"{r['floor']:.3g}{' ' + r['error'] if r.get('error') else ''})" for r in results),
                  flush=True)
    os.environ.pop("JEPA_TRITON_AUTOTUNE")
    return rows, failures


# -- ops --------------------------------------------------------------------------------------------------
def sig3(x: float) -> float:
    """Three significant digits: a small-op rate on a busy host must not round to 0."""
    return float(f"{x:.3g}")


def copy_gbs(device, nbytes: int, reps: int) -> float:
    n = max(1, nbytes // 8)
    a, b = torch.randn(n, device=device), torch.empty(n, device=device)
    ms = time_ways({"copy": lambda: b.copy_(a)}, reps, device)["copy"]
    return 2 * n * 4 / (ms * 1e-3) / 1e9


def op_rows(device, budget, small, dry, match=""):
    from run_kernels import vit_params
    rows = []
    reps = 2 if small else 20
    # our backends that run here (the CUDA extension may not be built: those rows would only say so)
    backs = [b for b in (("triton", "cuda") if device.type == "cuda" else ("cpp",))
             if _registry.REGISTRY["ema_"][b].refusal(device, {"fp64": False}) is None]

    def emit(op, shape, times, nbytes=None, flops=None, extra=None):
        copy = copy_gbs(device, nbytes, reps) if nbytes else None
        for w, ms in times.items():
            r = dict(section="ops", op=op, shape=shape, method=w, ms=round(ms, 4))
            if nbytes:
                gbs = nbytes / (ms * 1e-3) / 1e9
                r.update(GB_s=sig3(gbs), copy_GB_s_same_bytes=sig3(copy), pct_copy_bw=round(100 * gbs / copy, 1))
            if flops:
                r.update(TFLOP_s_real=sig3(flops / (ms * 1e-3) / 1e12))
            r.update(extra or {})
            rows.append(r)

    plan = []
    D, depth = (64, 1) if small else (1024, 24)
    for sdt in (torch.float32, torch.bfloat16):
        plan.append(("ema", f"ViT-L {'tiny' if small else ''} src {str(sdt).split('.')[-1]}", lambda sdt=sdt: bench_ema(
            device, vit_params(D, depth), sdt, backs, reps, emit)))
    for B, N, Dm, keep in ([(2, 64, 64, 0.5)] if small else [(24, 1568, 1024, 0.1), (24, 1568, 1024, 0.7)]):
        plan.append(("gather", f"B{B} N{N} D{Dm} keep{keep}", lambda a=(B, N, Dm, keep): bench_gather(
            device, *a, backs, reps, emit)))
    for M, H, Dh in ([(64, 2, 16)] if small else [(24 * 2048, 16, 64)]):   # V-JEPA 2 ViT-L: 24 clips x 2048 tokens
        plan.append(("rope_qk", f"M{M} H{H} Dh{Dh} bf16", lambda a=(M, H, Dh): bench_rope(device, *a, reps, emit)))
    for name, lens, H, Dh, frame_len in attention_mixes(small):
        plan.append(("block_attention", name, lambda lens=lens, H=H, Dh=Dh, name=name, f=frame_len: bench_attention(
            device, name, lens, H, Dh, reps, emit, f)))
    for op, shape, thunk in plan:
        if not matches(match, f"{op} {shape}"):
            continue
        if dry:
            rows.append(dict(section="ops", op=op, shape=shape, method="", status="would run"))
        elif budget.left() <= 0:
            rows.append(dict(section="ops", op=op, shape=shape, method="", status="skipped: budget"))
        else:
            try:
                thunk()
            except Exception as e:   # speed rows are reported, never a correctness failure
                traceback.print_exc()
                rows.append(dict(section="ops", op=op, shape=shape, status=f"error: {type(e).__name__}: {str(e)[:200]}"))
    return rows


def bench_rope(device, M, H, Dh, reps, emit):
    """q and k turned and their gradients turned back (forward + backward), from views of one qkv tensor as
    attention makes them: the plain-torch way against the op's backends here."""
    g = torch.Generator().manual_seed(0)
    R = 6 * (Dh // 6)
    qkv = torch.randn(M, 3, H, Dh, generator=g).to(device=device, dtype=torch.bfloat16).requires_grad_(True)
    ang = torch.randn(M, 1, R, generator=g).to(device)
    cos, sin = ang.cos(), ang.sin()
    gq = torch.randn(M, H, Dh, generator=g).to(device=device, dtype=torch.bfloat16)

    def way(fn):
        def run():
            q, k, _ = qkv.unbind(1)
            qo, ko = fn(q, k)
            torch.autograd.grad([qo, ko], [qkv], [gq, gq])
        return run

    ways = {"rope_ref on q and k (slices, stack, cat; autograd)":
            way(lambda q, k: (kernels.rope_ref(q, cos, sin), kernels.rope_ref(k, cos, sin)))}
    for b, why in device_backends("rope_qk", device, {"dtype": torch.bfloat16}):
        if why is None:
            run = way(lambda q, k: kernels.rope_qk(q, k, cos, sin))

            def ours(b=b, run=run):   # forward and backward on backend b
                with kernels.backend(b):
                    run()
            ways[f"kernels.rope_qk [{b}]"] = ours
    # the minimum: q, k read and written forward, the two gradients read and written backward
    emit("rope_qk", f"M{M} H{H} Dh{Dh} bf16 fwd+bwd", time_ways(ways, reps, device), nbytes=8 * M * H * Dh * 2)


def bench_ema(device, shapes, sdt, backs, reps, emit):
    g = torch.Generator().manual_seed(0)
    tl = [torch.randn(s, generator=g).to(device) for s in shapes]
    sl = [torch.randn(s, generator=g).to(device=device, dtype=sdt) for s in shapes]
    ft, fs = torch.cat([t.reshape(-1) for t in tl]), torch.cat([s.reshape(-1) for s in sl])
    n, m = ft.numel(), 0.996
    mt = torch.tensor(m, device=device)
    ways = {"per-param mul_.add_ loop": lambda: [t.mul_(m).add_(s, alpha=1 - m) for t, s in zip(tl, sl)],
            "_foreach_lerp_ (fp32 sources)": lambda: torch._foreach_lerp_(tl, [s.float() for s in sl] if sdt != torch.float32 else sl, 1 - m)}
    for b in backs:
        def run_list(b=b):
            with kernels.backend(b):
                kernels.ema_(tl, sl, mt)

        def run_flat(b=b):
            with kernels.backend(b):
                kernels.ema_(ft, fs, mt)
        ways[f"kernels.ema_ list [{b}]"] = run_list
        ways[f"kernels.ema_ flat [{b}]"] = run_flat
    emit("ema", f"{n / 1e6:.0f}M params {len(shapes)} tensors src {str(sdt).split('.')[-1]}",
         time_ways(ways, reps, device), nbytes=n * (8 + sl[0].element_size()))


def bench_gather(device, B, N, D, keep, backs, reps, emit):
    K = max(1, int(N * keep))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, N, D, generator=g).to(device=device, dtype=torch.bfloat16).requires_grad_(True)
    idx_BK = torch.stack([torch.randperm(N, generator=g)[:K].sort().values for _ in range(B)]).to(device)
    rows_T = (idx_BK + torch.arange(B, device=device)[:, None] * N).reshape(-1)
    gy = torch.randn(B * K, D, device=device, dtype=x.dtype)

    def fwd_bwd(f):
        def run():
            x.grad = None
            f().backward(gy.view(-1, D) if f is not repeated else gy.view(B, K, D))
        return run

    def repeated():
        return torch.gather(x, 1, idx_BK.unsqueeze(-1).repeat(1, 1, D))

    ways = {"torch.gather repeated idx": fwd_bwd(repeated),
            "flat index_select": fwd_bwd(lambda: x.reshape(B * N, D).index_select(0, rows_T))}
    xd = x.detach()
    ln_ways = {"gather then layer_norm": lambda: F.layer_norm(xd.reshape(B * N, D).index_select(0, rows_T), (D,))}
    for b in backs:
        def ours(b=b):
            with kernels.backend(b):
                return kernels.gather_tokens(x, rows_T)

        def ours_ln(b=b):
            with kernels.backend(b):
                return kernels.gather_layer_norm(xd, rows_T)
        ways[f"kernels.gather_tokens [{b}]"] = fwd_bwd(ours)
        ln_ways[f"kernels.gather_layer_norm [{b}]"] = ours_ln
    e = x.element_size()
    shape = f"B{B} N{N} D{D} keep{keep} bf16"
    emit("gather_fwd_bwd", shape, time_ways(ways, reps, device), nbytes=e * D * (2 * B * K + B * N + B * K))
    emit("gather_layer_norm", shape, time_ways(ln_ways, reps, device), nbytes=e * D * 2 * B * K)


def attention_mixes(small: bool):
    g = torch.Generator().manual_seed(0)
    lens = lambda n, lo, hi: torch.randint(lo, hi + 1, (n,), generator=g).tolist()   # noqa: E731
    if small:
        return [("tiny mix", lens(4, 5, 40), 2, 16, None), ("tiny block-causal", [24, 24], 2, 16, 6)]
    ctx = lens(24, 75, 600)
    # (name, lengths, heads, head dim, tokens per frame: block-causal frames, or None)
    return [("ViT-L context B24 75-600", ctx, 16, 64, None),
            ("ViT-L targets B24 full 1568", [1568] * 24, 16, 64, None),
            ("predictor B24 ctx+tgt", [c + t for c, t in zip(ctx, lens(24, 150, 800))], 12, 32, None),
            # V-JEPA 2-AC's predictor (H-JEPA level 1): 8 steps of [action, state, 16 x 16 patches] per clip
            ("AC predictor block-causal B8 x 8 steps x 258", [8 * 258] * 8, 16, 64, 258),
            # H-JEPA level 2 at the same size: 7 steps of 2 frames of 256 pooled tokens and 2 conditioning
            ("H-JEPA level-2 block-causal B8 x 7 steps x 514", [7 * 514] * 8, 16, 64, 514)]


def bench_attention(device, name, lens, H, Dh, reps, emit, frame_len=None):
    """Forward + backward of one mix, each way alternating. frame_len: block-causal frames of that many
    tokens (a query sees the keys of its own and earlier frames); the dense ways then take the frame mask."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(1)
    cu = torch.tensor([0] + lens).cumsum(0).to(device=device, dtype=torch.int32)
    T, S, L = sum(lens), len(lens), max(lens)
    frames = None if frame_len is None else torch.cat([torch.arange(n) // frame_len for n in lens]).to(device)
    q, k, v, dout = (torch.randn(T, H, Dh, generator=g).to(device=device, dtype=dtype) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    pos_T = torch.cat([torch.arange(n) + i * L for i, n in enumerate(lens)]).to(device)
    keymask = (torch.arange(L)[None, :] < torch.tensor(lens)[:, None])[:, None, None, :].to(device)
    ba = sys.modules["kernels.block_attention"]

    def step(f):
        def run():
            for t in (q, k, v):
                t.grad = None
            f().backward(dout)
        return run

    if frames is not None:   # [S, 1, L, L]: the key mask and the frame mask of each padded sequence
        f_SL = torch.full((S * L,), -1, device=device).index_copy(0, pos_T, frames).view(S, L)
        keymask = keymask & (f_SL[:, None, :, None] >= f_SL[:, None, None, :])

    def ours(b, lib=None):
        def f():
            with kernels.backend(b):
                return _with_library(lib, lambda: kernels.block_attention(q, k, v, cu, cu, max_seqlen_q=L,
                                                                          max_seqlen_k=L, block_causal=frames))
        return f

    def padded():
        def to_pad(t):
            return t.new_zeros(S * L, H, Dh).index_copy(0, pos_T, t).view(S, L, H, Dh).transpose(1, 2)
        o = F.scaled_dot_product_attention(to_pad(q), to_pad(k), to_pad(v), attn_mask=keymask)
        return o.transpose(1, 2).reshape(S * L, H, Dh).index_select(0, pos_T)

    def loop():
        c = cu.tolist()
        return torch.cat([F.scaled_dot_product_attention(
            *(t[c[i]:c[i + 1]].transpose(0, 1) for t in (q, k, v)),
            attn_mask=None if frames is None else keymask[i, :, :c[i + 1] - c[i], :c[i + 1] - c[i]]).transpose(0, 1)
            for i in range(S)])

    ways = {}
    if device.type == "cuda" and frames is not None:
        ways["ours [triton]"] = step(ours("triton"))
        if ba.flex_runs():
            ways["flex block mask (ours [cuda])"] = step(ours("cuda", "flex"))
    elif device.type == "cuda":
        ways["ours [triton]"] = step(ours("triton"))
        if ba.flash_attn_varlen_func is not None:
            ways["flash_attn varlen"] = step(lambda: ba.flash_attn_varlen_func(q, k, v, cu, cu, L, L))
        if ba.torch_flash_ok():
            ways["torch flash varlen (aten)"] = step(lambda: torch.ops.aten._flash_attention_forward(
                q, k, v, cu, cu, L, L, 0.0, False, False)[0])
        if ba.fmha is not None:
            bias = ba.fmha.BlockDiagonalMask.from_seqlens(lens, lens)
            ways["xformers BlockDiagonalMask"] = step(
                lambda: ba.fmha.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias)[0])
    else:
        ways["ours [cpp]"] = step(ours("cpp"))
    ways["SDPA padded + key mask" + (" + frame mask" if frames is not None else "")] = step(padded)
    ways["SDPA per-sequence loop"] = step(loop)
    pairs = (float(keymask.sum()) if frames is not None else sum(n * n for n in lens))   # pairs that attend
    flops = 3.5 * 4 * pairs * H * Dh
    emit("block_attention", f"{name} H{H} Dh{Dh} {str(dtype).split('.')[-1]} ({T} tokens)",
         time_ways(ways, reps, device), flops=flops)


# -- e2e --------------------------------------------------------------------------------------------------
E2E_MODES = ("compat", "ragged")
# a mode's "+" suffixes: compile (model.compile_model), flex (block-causal attention on FlexAttention, not our
# Triton kernel), allrows (the predictor's last block on every row, not its target rows alone)
E2E_EXTRAS = ("compile", "flex", "allrows")


def e2e_rows(device, budget, small, dry, batch=8, modes=("compat", "ragged"), profile=False, config=None):
    from engine.builders import build_jepa, build_mask_sampler
    from engine.config import load_config
    cfg_path = Path(config) if config else ROOT / "configs" / ("tiny_cpu.yaml" if small else "vjepa_vitl16.yaml")
    batch = 2 if small else batch
    steps = 2 if small else 6
    rows = []
    for mode in modes:
        base = dict(section="e2e", config=cfg_path.name, mode=mode, batch=batch)
        if dry:
            rows.append({**base, "status": "would run"})
            continue
        if budget.left() <= 0:
            rows.append({**base, "status": "skipped: budget"})
            continue
        try:
            rows.append({**base, **e2e_step(device, cfg_path, mode, batch, steps, load_config, build_jepa,
                                            build_mask_sampler, profile)})
        except Exception as e:   # a speed row, reported; the run goes on
            traceback.print_exc()
            rows.append({**base, "status": f"error: {type(e).__name__}: {str(e)[:200]}"})
    compat = next((r for r in rows if r["mode"] == "compat" and r.get("tokens_per_s")), None)
    for r in rows:
        if compat and r.get("tokens_per_s"):
            r["tokens_per_s_vs_compat"] = round(r["tokens_per_s"] / compat["tokens_per_s"], 3)
    return rows


def e2e_step(device, cfg_path, mode, batch, steps, load_config, build_jepa, build_mask_sampler,
             profile=False) -> dict:
    """Median step time, tokens and MFU of one mask mode ("+compile": model.compile_model): a fresh model,
    AdamW, EMA, bf16 autocast on CUDA. With profile, one more step runs under torch.profiler: the share of
    the median step the device spends in kernels (1.0 = device bound; low = the host's per-op work)."""
    from engine.models.predictor import Predictor
    mask_mode, *extras = mode.split("+")
    saved = Predictor.last_block_target_rows
    Predictor.last_block_target_rows = "allrows" not in extras
    try:
        return _with_library("flex" if "flex" in extras else "noflex", lambda: _e2e_step(
            device, cfg_path, mode, batch, steps, load_config, build_jepa, build_mask_sampler, profile))
    finally:
        Predictor.last_block_target_rows = saved


def _e2e_step(device, cfg_path, mode, batch, steps, load_config, build_jepa, build_mask_sampler, profile):
    import numpy as np
    mask_mode, *extras = mode.split("+")
    over = [f"data.batch_size={batch}", f"model.compile_model={str('compile' in extras).lower()}"]
    cfg = load_config(cfg_path, over)
    world = not cfg.uses_masks   # a world model (AC, H-JEPA, LeWM): whole frames, a trajectory batch
    if world:   # no pretrained encoder to read here: its random init runs the same kernels
        cfg = load_config(cfg_path, over + (["meta.pretrain_checkpoint=null"] if cfg.is_action_conditioned else []))
    else:
        cfg = load_config(cfg_path, over + [f"meta.mask_mode={mask_mode}"])
    torch.manual_seed(0)
    model = build_jepa(cfg).to(device)
    sampler = None if world else build_mask_sampler(cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    T = cfg.frames_per_clip
    x = torch.randn(batch, 3, T, cfg.data.crop_size, cfg.data.crop_size, device=device)
    traj = None
    if cfg.uses_trajectories:
        md = cfg.model
        traj = {"actions": 0.1 * torch.randn(batch, T - 1, md.action_dim, device=device),
                "states": torch.randn(batch, T, md.state_dim or md.action_dim, device=device)}
    rng = np.random.default_rng(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, ctx, tgt = [], [], []
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def one_step(masks):
        with amp:
            loss, info = model(x, masks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.update_target(0.998)
        return info

    warm = time.perf_counter()
    for i in range(steps + 2):   # two warm-up steps (Triton and torch.compile compile there)
        masks = traj if world else sampler.sample(batch, rng)
        sync(device)
        t0 = time.perf_counter()
        if i == 2:
            warm = t0 - warm
        info = one_step(masks)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
            ctx.append(info.get("ctx_tokens", 0))
            tgt.append(info.get("tgt_tokens", 0))
    s = sorted(times)[len(times) // 2]
    n_ctx, n_tgt = float(np.mean(ctx)), float(np.mean(tgt))
    trained = n_ctx + n_tgt
    flops = peak = None   # the masked step's model FLOPs; a world model's row gives its time and memory
    if not world:
        p_enc = sum(p.numel() for p in model.encoder.parameters())
        p_pred = sum(p.numel() for p in model.predictor.parameters())
        # context encoder fwd+bwd on its tokens, predictor fwd+bwd on context+target tokens, target encoder
        # forward on every token; attention excluded
        flops = 6 * p_enc * n_ctx + 6 * p_pred * trained + 2 * p_enc * batch * model.encoder.num_patches
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    busy = ""
    if profile:
        masks = traj if world else sampler.sample(batch, rng)
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                        if device.type == "cuda" else [])
        with torch.profiler.profile(activities=acts) as prof:
            one_step(masks)
            sync(device)
        if device.type == "cuda":   # the kernels themselves (an op's row would count its kernels again)
            kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            busy = round(sum(e.device_time_total for e in kernels) / 1e6 / s, 3)
            print(f"  e2e {mode} batch {batch}: top device ops of one step")
            print(prof.key_averages().table(sort_by="device_time_total", row_limit=12, max_name_column_width=60))
    if world:   # no masks: the mode names the blocks' compiling and the attention kernel
        mode = "+".join(["compile" if "compile" in extras else "eager"] + [e for e in extras if e != "compile"])
        return {"mode": mode, "status": "ok", "warmup_s": round(warm, 1), "s_per_step": round(s, 4),
                "device_busy": busy,
                "samples_per_s": round(batch / s, 1), "peak_mem_GB": round(torch.cuda.max_memory_allocated(device)
                                                                         / 1e9, 2) if device.type == "cuda" else ""}
    return {"status": "ok", "warmup_s": round(warm, 1), "s_per_step": round(s, 4), "device_busy": busy, "tokens_per_step": round(trained),
            "tokens_per_s": round(trained / s), "samples_per_s": round(batch / s, 1),
            "model_TFLOP_s": round(flops / s / 1e12, 2), "MFU": round(flops / s / peak, 3) if peak else "",
            "peak_mem_GB": round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if device.type == "cuda" else ""}


# -- decode -----------------------------------------------------------------------------------------------
def decode_rows(device, budget, small, dry):
    base = dict(section="decode", codec="h264", clip="16 frames stride 4, 320x240")
    try:
        from nvidia.dali import fn, pipeline_def  # noqa: F401
    except ImportError as e:
        return [{**base, "status": f"skipped: DALI not importable ({e})"}]
    if device.type != "cuda":
        return [{**base, "status": "would run" if dry else "skipped: NVDEC needs a GPU"}]
    if dry:
        return [{**base, "status": "would run"}]
    if budget.left() <= 0:
        return [{**base, "status": "skipped: budget"}]
    import av
    import numpy as np

    from engine.datagen.synthetic import write_video
    rows = []
    with tempfile.TemporaryDirectory() as d:
        # moving gradients: cheap to encode, and a real decode workload (64 frames, 16 kept 4 apart)
        t_, y_, x_ = np.meshgrid(np.arange(64), np.arange(240), np.arange(320), indexing="ij")
        files = [str(write_video(Path(d) / f"v{i}.mp4",
                                 np.stack([(x_ + 3 * t_ + 40 * i) % 256, (y_ + 2 * t_) % 256, (x_ + y_) % 256], -1)
                                 .astype(np.uint8), fps=30, codec="h264")) for i in range(4)]
        clips = 32

        @pipeline_def(batch_size=4, num_threads=4, device_id=device.index or 0)
        def pipe():
            return fn.readers.video(device="gpu", filenames=files, sequence_length=16, stride=4,
                                    random_shuffle=False, name="r")

        p = pipe()
        p.build()
        p.run()
        t0 = time.perf_counter()
        for _ in range(clips // 4):
            p.run()
        torch.cuda.synchronize()
        dali = clips / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for i in range(clips):
            with av.open(files[i % len(files)]) as c:
                frames = [f for j, f in zip(range(64), c.decode(video=0)) if j % 4 == 0]
                np.stack([f.to_ndarray(format="rgb24") for f in frames])
        pyav = clips / (time.perf_counter() - t0)
    for name, cps in (("DALI NVDEC", dali), ("PyAV (1 thread)", pyav)):
        rows.append({**base, "status": "ok", "reader": name, "clips_per_s": round(cps, 1),
                     "vs_pyav": round(cps / pyav, 2)})
    return rows


# -- main -------------------------------------------------------------------------------------------------
def environment() -> str:
    """What the run had: library versions and which device backends exist, for the CSVs' reader."""
    from kernels import _ops
    ba = sys.modules["kernels.block_attention"]
    triton = "absent"
    if _ops.triton_available():
        import triton as _t
        triton = _t.__version__
    return (f"triton {triton}, CUDA {torch.version.cuda}, kernels._C {'built' if _ops.cpp_available() else 'not built'}, "
            f"kernels._C_cuda {'built' if _ops.cuda_available() else 'not built'}, "
            f"flash_attn {'present' if ba.flash_attn_varlen_func is not None else 'absent'}, "
            f"torch's flash varlen {'runs' if ba.torch_flash_ok() else 'absent'}, "
            f"xformers {'present' if ba.fmha is not None else 'absent'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="list what would run; the default without CUDA")
    ap.add_argument("--self-test", action="store_true", help="run the harness on CPU backends, tiny shapes")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--budget-s", type=float, default=450.0, help="no new case starts after this (default 7.5 min)")
    ap.add_argument("--out-dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--isolate", action="store_true",
                    help="each correctness case in its own process (always on a GPU: one illegal memory access "
                         "would end the CUDA context of every case after it)")
    ap.add_argument("--jobs", type=int, default=8, help="isolated correctness cases run at once (default 8)")
    ap.add_argument("--e2e-batch", type=int, default=8, help="clips per e2e step (default 8)")
    ap.add_argument("--e2e-modes", default="compat,ragged",
                    help=f"e2e rows: {'/'.join(E2E_MODES)}, each with any of +compile (model.compile_model), "
                         "+flex (block-causal attention on FlexAttention), +allrows (the predictor's last block "
                         "on every row)")
    ap.add_argument("--e2e-config", default=None,
                    help="e2e: this config instead of configs/vjepa_vitl16.yaml; a world model (AC, H-JEPA, LeWM) "
                         "trains on random trajectories with its encoder's random init")
    ap.add_argument("--e2e-profile", action="store_true",
                    help="e2e: one more step under torch.profiler; device_busy = kernel time / step time")
    ap.add_argument("--match", default="", help="correctness: only cases whose 'op backend dtype label' holds this")
    ap.add_argument("--case", type=int, default=None, help=argparse.SUPPRESS)   # a child of --isolate
    args = ap.parse_args(argv)
    if args.case is not None:   # one correctness case, results as one JSON line
        device = torch.device("cpu" if args.self_test else "cuda")
        results = run_case(device, args.self_test, args.case)
        print(json.dumps([{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in r.items()}
                          for r in results]))
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        ap.error(f"--sections: unknown {bad}; expected some of {SECTIONS}")
    e2e_modes = [m.strip() for m in args.e2e_modes.split(",") if m.strip()]
    bad = [m for m in e2e_modes if m.split("+")[0] not in E2E_MODES or not set(m.split("+")[1:]) <= set(E2E_EXTRAS)]
    if bad:
        ap.error(f"--e2e-modes: unknown {bad}; expected {'/'.join(E2E_MODES)}, each with any of "
                 f"{', '.join('+' + e for e in E2E_EXTRAS)}")
    cuda = torch.cuda.is_available()
    if args.self_test:
        device, dry, small, prefix = torch.device("cpu"), False, True, "gpu_selftest_"
    else:
        device, small, prefix = torch.device("cuda" if cuda else "cpu"), False, "gpu_"
        dry = args.dry_run or not cuda
        if not cuda and not args.dry_run:
            print("gpu_check: no CUDA device here: dry run (what it would run on a GPU)")
    if dry:
        device = torch.device("cuda")   # plan for the GPU: the registry reads only the device type
        prefix = "gpu_dryrun_"
    budget = Budget(args.budget_s)
    name = torch.cuda.get_device_name(0) if cuda and not dry else ("(dry run)" if dry else "cpu")
    print(f"gpu_check on {name}: torch {torch.__version__}, sections {sections}, budget {args.budget_s:.0f} s")
    print(f"  {environment()}", flush=True)
    failures = 0
    isolate = args.isolate or (device.type == "cuda" and not dry)
    runners = {"correctness": lambda *a: run_correctness(*a, isolate=isolate, jobs=args.jobs, match=args.match),
               "ops": lambda *a: op_rows(*a, match=args.match),
               "e2e": lambda *a: e2e_rows(*a, batch=args.e2e_batch, modes=e2e_modes,
                                                      profile=args.e2e_profile, config=args.e2e_config), "decode": decode_rows}
    for sec in sections:
        t0 = time.perf_counter()
        out = runners[sec](device, budget, small, dry)
        rows, fails = out if isinstance(out, tuple) else (out, 0)
        failures += fails
        path = Path(args.out_dir) / f"{prefix}{sec}.csv"
        if rows:
            atomic_write_csv(str(path), rows)
        counts = {}
        for r in rows:
            key = str(r.get("status", "ok")).split(":")[0]
            counts[key] = counts.get(key, 0) + 1
        print(f"{sec:12} {time.perf_counter() - t0:7.1f} s  {counts}  -> {path}")
        for r in rows:
            if r.get("status") == "FAIL" or str(r.get("status", "")).startswith("error"):
                print("   ", {k: v for k, v in r.items() if v != ""})
    if failures:
        print(f"gpu_check: {failures} correctness check(s) FAILED")
        return 1
    print("gpu_check: every correctness check that ran passed" + (" (dry run: none ran)" if dry else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
