"""Kernel microbenchmarks: gather (fwd+bwd), gather+layer_norm, EMA, GELU with its gradient, RoPE on q and k
(fwd+bwd), vs the reference ways.

    python bench/run_kernels.py [--quick] [--csv bench/results/kernels_cpu.csv]
    python bench/bench_attention.py [--quick] [--csv bench/results/attention_cpu.csv]   # block attention

Per op and shape it prints time, GB/s, % of this machine's copy bandwidth, ratios vs the reference
ways and peak memory, and the GPU arithmetic (bytes moved, time at 3 TB/s). Every method of one op is
credited with the same bytes (the op's minimum: what must be read and written once), and the % is
against a `copy_` that moves those same bytes, timed in the same alternating rounds (so a working set
that fits in cache is compared with a copy that fits in cache too, and a busy spell hits both). A copy_
also reads each destination line before writing it (read for ownership) where an in-place update
like the EMA's target does not, so an in-place op can pass 100%. Reference ways:
gather = `torch.gather` with an index repeated to [B,K,D] (V-JEPA's apply_masks) and a flat
`index_select` over [B*N, D] (the best plain-torch way); gather+LN = gather then `F.layer_norm` of the
gathered rows (what a competent user writes); EMA = per-parameter `mul_().add_()` loop (V-JEPA),
`_foreach_mul_` + `_foreach_add_` (V-JEPA 2), `_foreach_lerp_`; GELU with its gradient = `F.gelu` then ATen's
`gelu_backward` (what a layer that recomputes the GELU in its backward runs without the fused kernel); RoPE =
kernels.rope_ref on q and on k with autograd's backward (the plain way: slices, casts, a stack, a concatenation).

Times come from this process (glibc defaults: freed memory is reused, as in training). Peak memory is
measured in a child run of this script: the rise of peak RSS during one call (Linux clear_refs + VmHWM)
with glibc forced to mmap large blocks (MALLOC_MMAP_THRESHOLD_), so freed memory leaves RSS at once.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import kernels  # noqa: E402
from kernels import _ops  # noqa: E402
from engine.core.io import atomic_write_csv  # noqa: E402

GPU_BW = 3e12


PEAK_MODE = "--peak-child" in sys.argv   # child run: one call per way, peaks only


def timeit(fn, reps: int, warmup: int = 1) -> float:
    if PEAK_MODE:
        fn()   # warm (lazy init, first-touch of inputs), so the peak counts only the call itself
        return 1.0
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def time_ways(ways: dict, reps: int) -> dict:
    """Median seconds per way, the ways timed in alternating rounds (A B C A B C ...), so a slow spell
    of a shared machine hits every way alike."""
    if PEAK_MODE:
        return {w: timeit(fn, reps) for w, fn in ways.items()}
    for fn in ways.values():
        fn()   # warm
    ts = {w: [] for w in ways}
    for _ in range(reps):
        for w, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            ts[w].append(time.perf_counter() - t0)
    return {w: sorted(v)[len(v) // 2] for w, v in ts.items()}


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def peak_mb(fn) -> float:
    """Rise of peak RSS during one call of fn, in MB (nan where clear_refs is not allowed)."""
    if not PEAK_MODE:
        return float("nan")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return float("nan")
    base = _status("VmRSS")
    fn()
    return (_status("VmHWM") - base) / 1e6


def copy_bandwidth(quick: bool, nbytes: int | None = None) -> float:
    """GB/s of `copy_` (read + write counted) moving `nbytes` in all (default: a DRAM-sized buffer)."""
    n = max(1, (nbytes or ((64 if quick else 256) << 20)) // 8)   # fp32 elements per side
    a, b = torch.randn(n), torch.empty(n)
    t = timeit(lambda: b.copy_(a), reps=5 if quick else 10)
    return 2 * n * 4 / t / 1e9


COPY = "copy_ (same bytes)"


def with_copy(ways: dict, nbytes: int) -> dict:
    """The ways plus a `copy_` moving the same bytes, so it is timed in the same alternating rounds."""
    n = max(1, nbytes // 8)
    a, b = torch.randn(n), torch.empty(n)
    return {**ways, COPY: lambda: b.copy_(a)}


def timed_with_copy(ways: dict, nbytes: int, reps: int):
    """(median seconds per way, GB/s of the same-bytes copy measured in the same rounds)."""
    t = time_ways(with_copy(ways, nbytes), reps)
    t_copy = t.pop(COPY)
    return t, (2 * max(1, nbytes // 8) * 4 / t_copy / 1e9 if not PEAK_MODE else 1.0)


ROWS = []
PEAKS = {}
LOG = True


def emit(op, shape, method, t, nbytes, copy_bw, peak=float("nan"), extra=None):
    gbs = nbytes / t / 1e9
    row = {"op": op, "shape": shape, "method": method, "ms": round(t * 1e3, 3), "GB_s": round(gbs, 2),
           "copy_GB_s_same_bytes": round(copy_bw, 2), "pct_copy_bw": round(100 * gbs / copy_bw, 1),
           "peak_MB": round(peak, 1),
           "bytes_MB": round(nbytes / 1e6, 2), "gpu_us_at_3TBs": round(nbytes / GPU_BW * 1e6, 1)}
    if extra:
        row.update(extra)
    if (op, shape, method) in PEAKS:
        row["peak_MB"] = peak = PEAKS[(op, shape, method)]
    ROWS.append(row)
    if LOG:
        print(f"  {method:<28} {t*1e3:9.3f} ms {gbs:7.1f} GB/s {row['pct_copy_bw']:6.1f}% copy  peak {peak:8.1f} MB"
          + (f"  {extra}" if extra else ""))


# -- gather ----------------------------------------------------------------------------------------
def bench_gather(B, N, D, keep, reps):
    K = max(1, int(N * keep))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, N, D, generator=g, requires_grad=True)
    idx_BK = torch.stack([torch.randperm(N, generator=g)[:K].sort().values for _ in range(B)])
    rows_T = (idx_BK + torch.arange(B)[:, None] * N).reshape(-1)
    gy = torch.randn(B * K, D, generator=g)
    shape = f"B{B} N{N} D{D} keep{keep}"
    # fwd reads K rows + writes K rows; bwd writes the whole [B,N,D] grad (zeros + K rows) and reads K rows
    nbytes = 4 * D * (2 * B * K + B * N + B * K)

    def repeated():
        x.grad = None
        y = torch.gather(x, 1, idx_BK.unsqueeze(-1).repeat(1, 1, D))   # V-JEPA apply_masks
        y.backward(gy.view(B, K, D))

    def index_select():
        x.grad = None
        y = x.reshape(B * N, D).index_select(0, rows_T)
        y.backward(gy)

    def ours():
        x.grad = None
        y = kernels.gather_tokens(x, rows_T)
        y.backward(gy)

    print(f"gather fwd+bwd {shape}  ({nbytes/1e6:.0f} MB moved)")
    ways = {"torch.gather repeated idx": repeated, "flat index_select": index_select, "kernels.gather_tokens": ours}
    times, copy_bw = timed_with_copy(ways, nbytes, reps)
    res = {name: (t, peak_mb(ways[name])) for name, t in times.items()}
    t_rep, t_is = res["torch.gather repeated idx"][0], res["flat index_select"][0]
    for name, (t, pk) in res.items():
        emit("gather_fwd_bwd", shape, name, t, nbytes, copy_bw, peak=pk,
             extra={"x_vs_repeated": round(t_rep / t, 2), "x_vs_index_select": round(t_is / t, 2)})

    # target path: gather then layer_norm of the gathered rows (two passes over K rows) vs one fused pass;
    # both credited with the op's minimum bytes (read K rows, write K rows)
    with torch.no_grad():
        xd = x.detach()
        nb = 4 * D * (2 * B * K)

        def gather_then_ln():
            return F.layer_norm(xd.reshape(B * N, D).index_select(0, rows_T), (D,))

        def fused():
            return kernels.gather_layer_norm(xd, rows_T)

        t, copy_bw = timed_with_copy({"ref": gather_then_ln, "ours": fused}, nb, reps)
        t_ref, t_o, pk_ref, pk_o = t["ref"], t["ours"], peak_mb(gather_then_ln), peak_mb(fused)
    print(f"gather_layer_norm {shape}")
    emit("gather_layer_norm", shape, "gather then layer_norm", t_ref, nb, copy_bw, peak=pk_ref, extra={"x_vs_ref": 1.0})
    emit("gather_layer_norm", shape, "kernels.gather_layer_norm", t_o, nb, copy_bw, peak=pk_o,
         extra={"x_vs_ref": round(t_ref / t_o, 2)})


# -- EMA -------------------------------------------------------------------------------------------
def vit_params(D, depth):
    shapes = [(D, 3, 16, 16), (D,)]   # patch embed
    for _ in range(depth):
        shapes += [(D,), (D,), (3 * D, D), (3 * D,), (D, D), (D,), (D,), (D,), (4 * D, D), (4 * D,), (D, 4 * D), (D,)]
    return shapes + [(D,), (D,)]


def bench_ema(name, shapes, sdt, reps):
    g = torch.Generator().manual_seed(0)
    tl = [torch.randn(s, generator=g) for s in shapes]
    sl = [torch.randn(s, generator=g).to(sdt) for s in shapes]
    n = sum(t.numel() for t in tl)
    m = 0.996
    nbytes = n * (8 + sl[0].element_size())   # read+write target, read source
    shape = f"{name} {n/1e6:.0f}M params {len(shapes)} tensors src {str(sdt).split('.')[-1]}"
    print(f"ema {shape}")
    flat_t = torch.cat([t.reshape(-1) for t in tl])
    flat_s = torch.cat([s.reshape(-1) for s in sl])

    def loop():
        for t, s in zip(tl, sl):
            t.mul_(m).add_((1 - m) * s)

    def foreach():
        torch._foreach_mul_(tl, m)
        torch._foreach_add_(tl, sl, alpha=1 - m)

    def lerp():
        torch._foreach_lerp_(tl, sl if sdt == torch.float32 else [s.float() for s in sl], 1 - m)

    mt = torch.tensor(m)
    ways = [("per-param mul_.add_ loop", loop), ("_foreach_mul_+_foreach_add_", foreach), ("_foreach_lerp_", lerp),
            ("kernels.ema_ (list)", lambda: kernels.ema_(tl, sl, mt)),
            ("kernels.ema_ (flat buffer)", lambda: kernels.ema_(flat_t, flat_s, mt))]
    times, copy_bw = timed_with_copy(dict(ways), nbytes, reps)
    res = {w: (t, peak_mb(dict(ways)[w])) for w, t in times.items()}
    t_loop, t_lerp = res["per-param mul_.add_ loop"][0], res["_foreach_lerp_"][0]
    for w, (t, pk) in res.items():
        emit("ema", shape, w, t, nbytes, copy_bw, peak=pk,
             extra={"x_vs_loop": round(t_loop / t, 2), "x_vs_lerp": round(t_lerp / t, 2)})


# -- GELU with its gradient ---------------------------------------------------------------------------
def bench_gelu(T, D, dtype, reps):
    g0 = torch.Generator().manual_seed(0)
    h = (torch.randn(T, D, generator=g0) * 3).to(dtype)
    g = torch.randn(T, D, generator=g0).to(dtype)
    nbytes = 4 * h.numel() * h.element_size()   # read h and g, write gelu(h) and the gradient
    shape = f"T{T} D{D} {str(dtype).split('.')[-1]}"
    # the kernel overwrites its g: each call of either way takes a fresh copy made outside the timing (one
    # reused would be multiplied by gelu'(h) call after call, down to denormals, and would sit in cache)
    fresh = {w: iter([g.clone() for _ in range(2 * reps + 8)]) for w in ("ref", "ours")}

    def ref():   # GeluLinear's backward before: recompute the GELU, then ATen's gelu_backward
        return F.gelu(h), torch.ops.aten.gelu_backward(next(fresh["ref"]), h)

    def ours():
        return kernels.gelu_with_grad(h, next(fresh["ours"]))

    print(f"gelu_with_grad {shape}")
    ways = {"F.gelu + aten gelu_backward": ref, "kernels.gelu_with_grad": ours}
    times, copy_bw = timed_with_copy(ways, nbytes, reps)
    fresh = {w: iter([g.clone() for _ in range(16)]) for w in ("ref", "ours")}
    res = {w: (t, peak_mb(ways[w])) for w, t in times.items()}
    t_ref = res["F.gelu + aten gelu_backward"][0]
    for w, (t, pk) in res.items():
        emit("gelu_with_grad", shape, w, t, nbytes, copy_bw, peak=pk, extra={"x_vs_ref": round(t_ref / t, 2)})


# -- RoPE on q and k --------------------------------------------------------------------------------
def bench_rope(M, H, Dh, dtype, reps):
    """q, k turned and their gradients turned back (forward + backward), from views of one qkv tensor as
    attention makes them; R = the 3 axes' rotated dims of V-JEPA 2's RoPE, the rest of the head copied."""
    g0 = torch.Generator().manual_seed(0)
    R = 6 * (Dh // 6)
    qkv = torch.randn(M, 3, H, Dh, generator=g0).to(dtype).requires_grad_(True)
    ang = torch.randn(M, 1, R, generator=g0) * 4
    cos, sin = ang.cos(), ang.sin()
    gq, gk = (torch.randn(M, H, Dh, generator=g0).to(dtype) for _ in range(2))
    nbytes = 8 * M * H * Dh * qkv.element_size()   # q, k read and written forward, both gradients backward
    shape = f"M{M} H{H} Dh{Dh} {str(dtype).split('.')[-1]}"

    def way(fn):
        def run():
            q, k, _ = qkv.unbind(1)
            return torch.autograd.grad(fn(q, k), [qkv], [gq, gk])
        return run

    print(f"rope_qk {shape}")
    ref_name = "rope_ref on q and k + autograd"
    ways = {ref_name: way(lambda q, k: (kernels.rope_ref(q, cos, sin), kernels.rope_ref(k, cos, sin))),
            "kernels.rope_qk": way(lambda q, k: kernels.rope_qk(q, k, cos, sin))}
    times, copy_bw = timed_with_copy(ways, nbytes, reps)
    res = {w: (t, peak_mb(ways[w])) for w, t in times.items()}
    t_ref = res[ref_name][0]
    for w, (t, pk) in res.items():
        emit("rope_qk_fwd_bwd", shape, w, t, nbytes, copy_bw, peak=pk, extra={"x_vs_ref": round(t_ref / t, 2)})


def run(args, copy_bw, peaks=None, log=True):
    global PEAKS, LOG
    PEAKS, LOG = peaks or {}, log
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"copy_ bandwidth (read+write): {copy_bw:.1f} GB/s\n")
    ROWS.append({"op": "copy_", "shape": "fp32", "method": "copy_", "GB_s": round(copy_bw, 2), "pct_copy_bw": 100.0})

    if args.quick:
        gathers = [(2, 1568, 384, 0.25), (2, 2048, 1024, 0.7)]
        emas = [("ViT-L depth 2", vit_params(1024, 2), torch.float32)]
        gelus = [(2048, 768, torch.float32)]
        ropes = [(1190, 3, 64, torch.float32)]
        reps = 3
    else:
        gathers = [(8, 1568, 384, 0.1), (8, 1568, 384, 0.25), (8, 1568, 384, 0.7),
                   (4, 2048, 1024, 0.1), (4, 2048, 1024, 0.4), (4, 2048, 1024, 0.7),
                   (2, 1568, 1408, 0.25), (2, 1568, 1408, 0.7)]
        emas = [("ViT-L", vit_params(1024, 24), torch.float32), ("ViT-L", vit_params(1024, 24), torch.bfloat16),
                ("ViT-H depth16", vit_params(1280, 16), torch.float32)]
        gelus = [(2048, 768, torch.float32), (4096, 384, torch.float32), (2048, 768, torch.bfloat16),
                 (8192, 1024, torch.float32)]
        # the tiny V-JEPA 2 step's context (1190 tokens, 3 heads of 64) and a ViT-L clip (2048 x 16 x 64)
        ropes = [(1190, 3, 64, torch.float32), (2048, 16, 64, torch.float32), (2048, 16, 64, torch.bfloat16)]
        reps = 7
    for B, N, D, keep in gathers:
        bench_gather(B, N, D, keep, reps)
    for name, shapes, sdt in emas:
        bench_ema(name, shapes, sdt, reps)
    for T, D, dtype in gelus:
        bench_gelu(T, D, dtype, reps)
    for M, H, Dh, dtype in ropes:
        bench_rope(M, H, Dh, dtype, reps)



def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes, few reps (< 60 s)")
    ap.add_argument("--csv", default=None, help="write the table here")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--peak-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-peak", action="store_true", help="skip the peak-memory child run")
    args = ap.parse_args()
    if args.peak_child:
        sys.stdout = sys.stderr   # the JSON line below is the only thing on stdout
        run(args, copy_bw=1.0, log=False)
        json.dump(ROWS, sys.__stdout__)
        return
    peaks = {}
    if not args.no_peak:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
        cmd = [sys.executable, __file__, "--peak-child"] + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        peaks = {(r["op"], r["shape"], r["method"]): r.get("peak_MB") for r in json.loads(out.splitlines()[-1])}
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = "cpp" if _ops.cpp_available() else "torch (extension not built!)"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, kernels backend on CPU: {backend}")
    run(args, copy_bandwidth(args.quick), peaks=peaks)

    if args.csv:
        atomic_write_csv(args.csv, ROWS)
        print(f"\nwrote {args.csv}")


if __name__ == "__main__":
    main()
