"""Ragged token-index sets packed into one flat sequence batch (cu_seqlens), the form every
packed pass in the engine uses.

    packed = pack_index_sets([ctx_b0, ctx_b1, ...], samples=[0, 1, ...], tokens_per_sample=N)
    z_TD = kernels.gather_tokens(x_BND, packed.rows_T)

Sequence s holds the token ids `idx_sets[s]` (unique, within [0, N)) of sample `samples[s]`.
Several sequences may come from one sample (one per mask config): that is how one pass serves
all mask configs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels._ops import compute_dtype


@dataclass
class Packed:
    rows_T: torch.Tensor        # int64 [T]: flat row ids into a [B*N, D] view of the token grid
    pos_T: torch.Tensor         # int64 [T]: token position inside its sample (rows_T % N)
    cu_seqlens: torch.Tensor    # int32 [S+1]: sequence s is rows cu_seqlens[s]:cu_seqlens[s+1]
    max_seqlen: int
    sample_S: torch.Tensor      # int64 [S]: the sample each sequence comes from
    tokens_per_sample: int      # N
    one_seq_per_sample: bool = True   # no sample has two sequences, so no row repeats (set on the host)

    @property
    def num_seqs(self) -> int:
        return self.sample_S.numel()

    @property
    def seqlens_S(self) -> torch.Tensor:
        return self.cu_seqlens[1:] - self.cu_seqlens[:-1]

    def to(self, device) -> "Packed":
        return Packed(self.rows_T.to(device), self.pos_T.to(device), self.cu_seqlens.to(device),
                      self.max_seqlen, self.sample_S.to(device), self.tokens_per_sample, self.one_seq_per_sample)

    def rows_unique(self) -> bool:
        """True when no row repeats (the fused gather's backward needs that; several mask configs of
        one sample share rows). Decided when packing, on the host: no device sync here."""
        return self.one_seq_per_sample

    def seq_id_T(self) -> torch.Tensor:
        """int64 [T]: the sequence each packed row belongs to."""
        return torch.repeat_interleave(torch.arange(self.num_seqs, device=self.rows_T.device),
                                       self.seqlens_S.long())


def pack_index_sets(idx_sets, samples, tokens_per_sample: int) -> Packed:
    """Pack per-sequence token-id tensors (1-D int64, unique within [0, N)) into a Packed."""
    if len(idx_sets) != len(samples):
        raise ValueError(f"pack_index_sets: {len(idx_sets)} index sets but {len(samples)} sample ids")
    N = int(tokens_per_sample)
    lens = [int(i.numel()) for i in idx_sets]
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    if lens:
        cu[1:] = torch.cumsum(torch.tensor(lens, dtype=torch.int64), 0).to(torch.int32)
    if lens and sum(lens):
        pos = torch.cat([i.reshape(-1).to(torch.int64) for i in idx_sets])
    else:
        pos = torch.zeros(0, dtype=torch.int64)
    sample_S = torch.as_tensor(list(samples), dtype=torch.int64)
    if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= N):
        raise ValueError(f"pack_index_sets: token ids must lie in [0, {N}), got {int(pos.min())}..{int(pos.max())}")
    rows = pos + torch.repeat_interleave(sample_S, torch.tensor(lens, dtype=torch.int64)) * N
    return Packed(rows, pos, cu, max(lens, default=0), sample_S, N, len(set(samples)) == len(samples))


# oneDNN builds (JIT-compiles) and caches a kernel for every GEMM shape it meets in bf16, so a packed
# length that changes every step grows a CPU process by MBs per step (1.8 GB after 200 tiny-V-JEPA steps,
# against 0.59 GB with the lengths fixed); rounding the rows up to a multiple keeps the shapes few.
CPU_BF16_ROW_MULTIPLE = 64


def row_multiple(x) -> int:
    """The multiple packed row counts are padded to for the blocks x runs through (1: no padding)."""
    if x.device.type == "cpu" and compute_dtype(x) == torch.bfloat16:
        return CPU_BF16_ROW_MULTIPLE
    return 1


def per_row(fn, x_TD):
    """fn (a per-row op, e.g. a Linear) on x's rows rounded up to row_multiple(x) with zero rows; the
    real rows' outputs. For the per-row layers outside the padded blocks whose row count still changes
    every step (the predictor's embedding and projection)."""
    T = x_TD.shape[0]
    return fn(_zero_rows_to_multiple(x_TD))[:T]


def _zero_rows_to_multiple(x_TD):
    pad = -x_TD.shape[0] % row_multiple(x_TD)
    return torch.cat([x_TD, x_TD.new_zeros(pad, x_TD.shape[1])]) if pad else x_TD


def pad_rows(x_TD, ids_T, cu_seqlens, max_seqlen: int):
    """Round T rows up to row_multiple(x_TD) with one extra sequence of zero rows (position 0): block
    attention keeps it to itself and every other op is per row, so the real rows' outputs are those of
    the unpadded pass; the caller keeps the first T rows. Returns (x, ids, cu_seqlens, max_seqlen)."""
    T = x_TD.shape[0]
    x_TD = _zero_rows_to_multiple(x_TD)
    pad = x_TD.shape[0] - T
    if pad == 0:
        return x_TD, ids_T, cu_seqlens, max_seqlen
    ids_T = torch.cat([ids_T, ids_T.new_zeros(pad)])
    cu_seqlens = torch.cat([cu_seqlens, cu_seqlens.new_full((1,), T + pad)])
    return x_TD, ids_T, cu_seqlens, max(max_seqlen, pad)
