"""Block attention fwd+bwd on packed variable-length sequences: kernels.block_attention vs plain-torch ways.

    python bench/bench_attention.py [--quick] [--threads N] [--csv bench/results/attention_cpu.csv]
    python bench/bench_attention.py --causal --dtypes float32 --csv bench/results/attention_causal_cpu.csv

Per case (V-JEPA-like length mixes, many short sequences, and the world models' frame-causal calls:
`block_causal`, every way masking keys of later frames) it times forward+backward of
  ours:  kernels.block_attention (auto backend: the CPU bucket path on CPU),
  dense: one SDPA over the whole packed T with a dense block-diagonal bool mask [T, T],
  pad:   every sequence padded to the longest, one batched SDPA with a key-padding mask
         (pad and unpad copies included, as a model would do them),
  loop:  a Python loop of SDPA per sequence, outputs joined with torch.cat,
and prints ms, TFLOP/s counting only real tokens (FlashAttention's count: fwd 4*L^2*H*Dh per
sequence, fwd+bwd 3.5x that; frame-causal: only the pairs that attend) and each baseline's time / ours.
The methods run interleaved, round after round (A B C D A B C D ...), and each reports its median over
the rounds with the spread (min, max), so a slow outlier round (other work shares this machine's cores)
moves no ratio. Ratios are from one run.
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


def causal_cases(quick: bool):
    """The world models' frame-causal calls (block_causal; configs/hjepa_tiny_cpu.yaml, ac_arm_tiny_cpu.yaml):
    8 trajectories of F frames, each frame its tokens (and the action / state tokens before them)."""
    out = [("H-JEPA level 1 B8 198 tok 9 frames, H3", [198] * 8, 3, 32, 9)]
    if quick:
        return out
    return out + [("AC arm B8 54 tok 3 frames, H3", [54] * 8, 3, 32, 3),
                  ("H-JEPA level 2 B8 36 tok 4 frames, H3", [36] * 8, 3, 32, 4),
                  ("AC ViT-L-like B8 1040 tok 4 frames, H16", [1040] * 8, 16, 64, 4)]


def make_ways(lens, H, Dh, dtype, frames=None):
    """frames: F frames per sequence (token j of a length-L sequence in frame j * F // L), attended
    frame-causally by every way; None: plain block-diagonal attention."""
    g = torch.Generator().manual_seed(1)
    cu = torch.tensor([0] + lens).cumsum(0)
    T, S, Lmax = int(cu[-1]), len(lens), max(lens)
    frame_T = None if frames is None else torch.cat([torch.arange(L) * frames // L for L in lens])
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
        return kernels.block_attention(q, k, v, cu, cu, max_seqlen_q=Lmax, max_seqlen_k=Lmax, block_causal=frame_T)

    def causal(fq, fk):   # a [Lq, Lk] keep-mask: key frame <= query frame
        return fq[:, None] >= fk[None, :]

    def dense():
        mask = seq_T[:, None] == seq_T[None, :]   # built per call, as a model would
        if frame_T is not None:
            mask = mask & causal(frame_T, frame_T)
        o = F.scaled_dot_product_attention(*(t.transpose(0, 1)[None] for t in (q, k, v)), attn_mask=mask)
        return o[0].transpose(0, 1)

    def pad():
        def to_pad(t):   # [T,H,D] -> [S,H,Lmax,D], zeros in padding
            return t.new_zeros(S * Lmax, H, Dh).index_copy(0, pos_T, t).view(S, Lmax, H, Dh).transpose(1, 2)
        mask = keymask
        if frame_T is not None:   # padded rows get frame -1 as keys (never seen) and as queries
            f = torch.full((S * Lmax,), -1).index_copy(0, pos_T, frame_T).view(S, Lmax)
            mask = keymask & (f[:, :, None] >= f[:, None, :])[:, None]
            mask = mask | ~mask.any(-1, keepdim=True)   # a padded query row: all keys, dropped after
        o = F.scaled_dot_product_attention(to_pad(q), to_pad(k), to_pad(v), attn_mask=mask)
        return o.transpose(1, 2).reshape(S * Lmax, H, Dh).index_select(0, pos_T)

    def loop():
        c = cu.tolist()
        outs = []
        for s in range(S):
            qs, ks, vs = (t[c[s]:c[s + 1]].transpose(0, 1) for t in (q, k, v))
            fs = None if frame_T is None else frame_T[c[s]:c[s + 1]]
            outs.append(F.scaled_dot_product_attention(
                qs, ks, vs, attn_mask=None if fs is None else causal(fs, fs)).transpose(0, 1))
        return torch.cat(outs)

    forwards = {"ours": ours, "pad": pad, "loop": loop}
    if T <= DENSE_MAX_T:
        forwards["dense"] = dense
    return {w: run(f) for w, f in forwards.items()}, T, forwards


def bench_case(name, lens, H, Dh, dtype, reps, frames=None):
    ways, T, _ = make_ways(lens, H, Dh, dtype, frames)
    times = {w: [] for w in ways}
    for w in ways:   # warm-up (plans, lazy init)
        ways[w]()
    for _ in range(reps):
        for w, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[w].append(time.perf_counter() - t0)
    best = {w: statistics.median(ts) for w, ts in times.items()}
    # FLOPs of the (query, key) pairs that attend: a frame-causal sequence of L tokens in F equal frames has
    # sum over frames f of (tokens in f) x (tokens in frames <= f)
    pairs = [L * L if frames is None else
             int(((torch.arange(L) * frames // L)[:, None] >= (torch.arange(L) * frames // L)[None, :]).sum())
             for L in lens]
    flops = 3.5 * sum(4 * p * H * Dh for p in pairs)
    pad_ratio = len(lens) * max(lens) ** 2 / sum(L * L for L in lens)
    rows = []
    for w in ("ours", "dense", "pad", "loop"):
        t = best.get(w)
        rows.append({"case": name, "dtype": str(dtype).split(".")[-1], "frames": frames or "", "seqs": len(lens), "tokens": T,
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
    ap.add_argument("--causal", action="store_true", help="the frame-causal cases only")
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
        for name, lens, H, Dh, *frames in ([] if args.causal else cases(args.quick)) + causal_cases(args.quick):
            for r in bench_case(name, lens, H, Dh, dtype, reps, *frames):
                rows.append(r)
                print(f"{r['case']:<34}{r['dtype']:<9}{r['tokens']:>7}{r['method']:>7}{str(r['ms']):>10}"
                      f"{str(r['TFLOPs_real']):>9}{str(r['ours_speedup']):>8}{r['attn_pad_ratio']:>6}", flush=True)
    if args.csv:
        atomic_write_csv(args.csv, rows)
        print(f"\nwrote {args.csv}")


if __name__ == "__main__":
    main()
