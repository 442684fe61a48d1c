"""Block attention fwd+bwd on packed variable-length sequences: kernels.block_attention vs plain-torch ways.

    python bench/bench_attention.py [--quick] [--threads N] [--csv bench/results/attention_cpu.csv]

Per case (V-JEPA-like length mixes and many short sequences) it times forward+backward of
  ours:  kernels.block_attention (auto backend: the CPU bucket path on CPU),
  dense: one SDPA over the whole packed T with a dense block-diagonal bool mask [T, T],
  pad:   every sequence padded to the longest, one batched SDPA with a key-padding mask
         (pad and unpad copies included, as a model would do them),
  loop:  a Python loop of SDPA per sequence, outputs joined with torch.cat,
and prints ms, TFLOP/s counting only real tokens (FlashAttention's count: fwd 4*L^2*H*Dh per
sequence, fwd+bwd 3.5x that) and each baseline's time / ours. The methods run interleaved, round after
round (A B C D A B C D ...), and each reports its median over the rounds with the spread (min, max),
so a slow outlier round (other work shares this machine's cores) moves no ratio. Ratios are from one run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import kernels  # noqa: E402
from engine.core.io import atomic_write_csv  # noqa: E402

DENSE_MAX_T = 6000   # above this the dense [T, T] way takes minutes here: reported as skipped


def _lens(g, n, lo, hi):
    return torch.randint(lo, hi + 1, (n,), generator=g).tolist()


def cases(quick: bool):
    g = torch.Generator().manual_seed(0)
    out = [("64 seqs 20-100, D384 H6", _lens(g, 64, 20, 100), 6, 64)]
    if quick:
        return out + [("context B8 75-600, D384 H6", _lens(g, 8, 75, 600), 6, 64)]
    ctx16 = _lens(g, 16, 75, 600)
    out += [
        ("64 seqs 20-100, D192 H3", _lens(g, 64, 20, 100), 3, 64),
        ("context B16 75-600, D384 H6", ctx16, 6, 64),
        ("context B24 75-600, D192 H3", _lens(g, 24, 75, 600), 3, 64),
        ("targets B8 750-1400, D384 H6", _lens(g, 8, 750, 1400), 6, 64),
        # predictor: each sequence = its sample's context tokens + mask tokens at the target positions
        ("predictor B16 ctx+tgt, D384 H12", [c + t for c, t in zip(ctx16, _lens(g, 16, 150, 800))], 12, 32),
        # the tiny CPU step's (configs/tiny_cpu.yaml, bench_e2e): two mask configs' contexts of 8 clips of
        # 256 tokens, and its predictor's sequences (every token of a clip, width 96)
        ("tiny context B8x2 15-120, D192 H3", _lens(g, 8, 70, 120) + _lens(g, 8, 15, 60), 3, 64),
        ("tiny predictor B8x2 256, D96 H3", [256] * 16, 3, 32),
    ]
    return out


def make_ways(lens, H, Dh, dtype):
    g = torch.Generator().manual_seed(1)
    cu = torch.tensor([0] + lens).cumsum(0)
    T, S, Lmax = int(cu[-1]), len(lens), max(lens)
    q, k, v = (torch.randn(T, H, Dh, generator=g).to(dtype).requires_grad_(True) for _ in range(3))
    dout = torch.randn(T, H, Dh, generator=g).to(dtype)
    seq_T = torch.repeat_interleave(torch.arange(S), torch.tensor(lens))
    pos_T = torch.arange(T) - cu[:-1].repeat_interleave(torch.tensor(lens)) + seq_T * Lmax   # row in [S*Lmax]
    keymask = (torch.arange(Lmax)[None, :] < torch.tensor(lens)[:, None])[:, None, None, :]   # [S,1,1,L]

    def run(fn):
        def step():
            for t in (q, k, v):
                t.grad = None
            fn().backward(dout)
        return step

    def ours():
        return kernels.block_attention(q, k, v, cu, cu, max_seqlen_q=Lmax, max_seqlen_k=Lmax)

    def dense():
        mask = seq_T[:, None] == seq_T[None, :]   # built per call, as a model would
        o = F.scaled_dot_product_attention(*(t.transpose(0, 1)[None] for t in (q, k, v)), attn_mask=mask)
        return o[0].transpose(0, 1)

    def pad():
        def to_pad(t):   # [T,H,D] -> [S,H,Lmax,D], zeros in padding
            return t.new_zeros(S * Lmax, H, Dh).index_copy(0, pos_T, t).view(S, Lmax, H, Dh).transpose(1, 2)
        o = F.scaled_dot_product_attention(to_pad(q), to_pad(k), to_pad(v), attn_mask=keymask)
        return o.transpose(1, 2).reshape(S * Lmax, H, Dh).index_select(0, pos_T)

    def loop():
        c = cu.tolist()
        outs = [F.scaled_dot_product_attention(*(t[c[s]:c[s + 1]].transpose(0, 1) for t in (q, k, v))).transpose(0, 1)
                for s in range(S)]
        return torch.cat(outs)

    ways = {"ours": run(ours), "pad": run(pad), "loop": run(loop)}
    if T <= DENSE_MAX_T:
        ways["dense"] = run(dense)
    return ways, T


def bench_case(name, lens, H, Dh, dtype, reps):
    ways, T = make_ways(lens, H, Dh, dtype)
    times = {w: [] for w in ways}
    for w in ways:   # warm-up (plans, lazy init)
        ways[w]()
    for _ in range(reps):
        for w, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[w].append(time.perf_counter() - t0)
    best = {w: statistics.median(ts) for w, ts in times.items()}
    flops = 3.5 * sum(4 * L * L * H * Dh for L in lens)
    pad_ratio = len(lens) * max(lens) ** 2 / sum(L * L for L in lens)
    rows = []
    for w in ("ours", "dense", "pad", "loop"):
        t = best.get(w)
        rows.append({"case": name, "dtype": str(dtype).split(".")[-1], "seqs": len(lens), "tokens": T,
                     "min_len": min(lens), "max_len": max(lens), "H": H, "Dh": Dh, "method": w,
                     "ms": round(t * 1e3, 2) if t else "skipped (T too large)",
                     "ms_min": round(min(times[w]) * 1e3, 2) if t else "", "ms_max": round(max(times[w]) * 1e3, 2) if t else "",
                     "rounds": reps,
                     "TFLOPs_real": round(flops / t / 1e12, 4) if t else "",
                     "ours_speedup": round(t / best["ours"], 2) if t else "",
                     "attn_pad_ratio": round(pad_ratio, 2)})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two small cases, few reps")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--csv", default=None, help="write the table here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps = args.reps or (3 if args.quick else 5)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fwd+bwd, median of {reps} rounds; "
          f"speedup = method time / ours; attn_pad_ratio = S*Lmax^2 / sum L^2")
    hdr = f"{'case':<34}{'dtype':<9}{'tokens':>7}{'method':>7}{'ms':>10}{'TFLOP/s':>9}{'x ours':>8}{'padR':>6}"
    print(hdr)
    rows = []
    for dtype in [getattr(torch, d) for d in args.dtypes.split(",")]:
        for name, lens, H, Dh in cases(args.quick):
            for r in bench_case(name, lens, H, Dh, dtype, reps):
                rows.append(r)
                print(f"{r['case']:<34}{r['dtype']:<9}{r['tokens']:>7}{r['method']:>7}{str(r['ms']):>10}"
                      f"{str(r['TFLOPs_real']):>9}{str(r['ours_speedup']):>8}{r['attn_pad_ratio']:>6}", flush=True)
    if args.csv:
        atomic_write_csv(args.csv, rows)
        print(f"\nwrote {args.csv}")


if __name__ == "__main__":
    main()
