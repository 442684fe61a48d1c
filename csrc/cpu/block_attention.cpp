// Block attention over packed sequences on CPU: one parallel region over the sequences.
//
//   out [Tq,H,Dh], lse [Tq,H] = torch.ops.jepa_cpp.block_attention_fwd(q, k, v, cu_q, cu_k, scale, fq, fk)
//   dq, dk, dv = torch.ops.jepa_cpp.block_attention_bwd(dout, q, k, v, out, lse, cu_q, cu_k, scale, fq, fk)
//
// Sequences (or, when there are few, (sequence, head) pairs) are spread over the threads by an OpenMP
// dynamic schedule, longest first, so each runs single-threaded and the whole op opens one parallel
// region: with many short sequences the per-call fork/join of ATen's own parallelism (and its stalls when
// the cores are shared) is what dominates otherwise. Each one runs
// - in fp32, up to kShortLen (256) queries and keys: the short-sequence kernel below (the whole score
//   matrix of a head in L2, GEMMs straight on the packed rows);
// - else ATen's fused CPU flash-attention kernel (online softmax, fp32 accumulation, lse saved) on
//   zero-copy [1, H, L, Dh] views of the packed rows.
// `fq`/`fk` (frame ids: a key is seen when its frame <= the query's) in time order split a sequence's
// queries into one group per frame, each computed against the prefix of keys it sees (query_groups);
// in any other order the short kernel sets unseen scores to -inf and the flash kernel takes an additive
// mask.
// A packing of equal-length sequences that takes the flash kernel is one [S, H, L, Dh] batch: one call on
// views, no per-sequence copies. Outputs every row of which is written start uninitialised.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include "cpu_isa.h"
#include "gemm_avx512.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <numeric>
#include <optional>
#include <vector>

namespace {

using at::Tensor;

std::vector<int64_t> to_vec(const Tensor& cu) {
  auto c = cu.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// Sequences with queries and keys, longest (q x k work) first.
std::vector<int64_t> live_order(const std::vector<int64_t>& cq, const std::vector<int64_t>& ck) {
  std::vector<int64_t> ids;
  for (size_t s = 0; s + 1 < cq.size(); ++s)
    if (cq[s + 1] > cq[s] && ck[s + 1] > ck[s]) ids.push_back((int64_t)s);
  std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) {
    return (cq[a + 1] - cq[a]) * (ck[a + 1] - ck[a]) > (cq[b + 1] - cq[b]) * (ck[b + 1] - ck[b]);
  });
  return ids;
}

// rows [a, b) and heads [h0, h1) of [T, H, D] -> a [1, h1 - h0, L, D] view
Tensor bhld(const Tensor& x, int64_t a, int64_t b, int64_t h0, int64_t h1) {
  return x.slice(0, a, b).slice(1, h0, h1).unsqueeze(0).transpose(1, 2);
}

std::optional<Tensor> frame_mask(const std::optional<Tensor>& fq, const std::optional<Tensor>& fk,
                                 int64_t q0, int64_t q1, int64_t k0, int64_t k1, at::ScalarType dt) {
  if (!fq.has_value()) return std::nullopt;
  auto keep = fq->slice(0, q0, q1).unsqueeze(1).ge(fk->slice(0, k0, k1).unsqueeze(0));
  auto m = at::zeros({1, 1, q1 - q0, k1 - k0}, at::TensorOptions().dtype(dt));
  return m.masked_fill_(keep.logical_not().view({1, 1, q1 - q0, k1 - k0}),
                        -std::numeric_limits<double>::infinity());
}

// Work items: (sequence, first head, end head). Many sequences: one item per sequence. Fewer than
// 4 per thread: one item per (sequence, head), so a few long sequences still fill every thread.
struct Item {
  int64_t s, h0, h1;
};

std::vector<Item> items(const std::vector<int64_t>& ids, int64_t H) {
  std::vector<Item> it;
  int64_t nt = at::get_num_threads();
  bool split = (int64_t)ids.size() < 4 * nt && nt > 1;
  for (int64_t s : ids) {
    if (split) {
      for (int64_t h = 0; h < H; ++h) it.push_back({s, h, h + 1});
    } else {
      it.push_back({s, 0, H});
    }
  }
  return it;
}

// Run f(item) for every item in one OpenMP region (dynamic schedule, longest first); each kernel
// inside runs single-threaded. One item, one thread, or a caller already in a parallel region: a plain
// loop whose kernels use the threads themselves.
template <class F>
void for_each_item(const std::vector<Item>& its, const F& f) {
  int nt = at::get_num_threads();
  if (its.size() < 2 || nt < 2 || at::in_parallel_region()) {
    for (const auto& it : its) f(it);
    return;
  }
  std::exception_ptr err = nullptr;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t i = 0; i < (int64_t)its.size(); ++i) {
    try {
      at::NoGradGuard no_grad;  // worker threads: no autograd bookkeeping for the per-item ops
      f(its[i]);
    } catch (...) {
#pragma omp critical
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
}

void check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_q, const Tensor& cu_k) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "block_attention: q/k/v must be [T, H, Dh]");
  TORCH_CHECK(k.sizes() == v.sizes() && q.size(1) == k.size(1) && q.size(2) == k.size(2),
              "block_attention: q, k, v shapes disagree");
  TORCH_CHECK(cu_q.numel() == cu_k.numel() && cu_q.numel() >= 1,
              "block_attention: cu_seqlens_q and cu_seqlens_k must both be [S+1]");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "block_attention: q, k, v must share a dtype");
}

Tensor inner_contig(const Tensor& x) { return x.stride(-1) == 1 ? x : x.contiguous(); }

// S sequences of one length each for queries and keys, back to back from row 0, none empty: the whole
// packing is a [S, H, L, Dh] batch, run as one kernel call on views (no per-sequence calls, copies or
// zero fills). The predictor's sequences (context + targets = every token of a clip) are such a batch.
bool uniform(const std::vector<int64_t>& cq, const std::vector<int64_t>& ck) {
  int64_t S = (int64_t)cq.size() - 1;
  if (S < 1 || cq[0] != 0 || ck[0] != 0) return false;
  int64_t lq = cq[1] - cq[0], lk = ck[1] - ck[0];
  if (lq < 1 || lk < 1) return false;
  for (int64_t s = 1; s < S; ++s)
    if (cq[s + 1] - cq[s] != lq || ck[s + 1] - ck[s] != lk) return false;
  return true;
}

// [S * L, H, D] rows -> the [S, H, L, D] view the flash kernel takes
Tensor batch_view(const Tensor& x, int64_t S) {
  return x.view({S, x.size(0) / S, x.size(1), x.size(2)}).transpose(1, 2);
}

// [S, H, L, D] kernel output (memory [S, L, H, D]) -> [S * L, H, D] rows (a view for that memory)
Tensor rows_of(const Tensor& x_SHLD) {
  return x_SHLD.transpose(1, 2).reshape({-1, x_SHLD.size(1), x_SHLD.size(3)});
}

// every row of a side belongs to a sequence that runs: its output rows are all written
bool all_live(const std::vector<int64_t>& cq, const std::vector<int64_t>& ck, bool keys) {
  for (size_t s = 0; s + 1 < cq.size(); ++s) {
    bool has_q = cq[s + 1] > cq[s], has_k = ck[s + 1] > ck[s];
    if ((keys ? has_k : has_q) && !(has_q && has_k)) return false;
  }
  return true;
}

Tensor out_like(const Tensor& x, bool written) {
  return written ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::zeros_like(x, at::MemoryFormat::Contiguous);
}

// (dq, dk, dv) as out_like. Where q, k and v have one shape (a self-attention's, from one qkv projection)
// they are the three slices of one [T, 3, H, Dh] buffer, the layout of that projection's output: its
// gradient is then the buffer as it stands, not a stack of three copies (engine.models.layers.split_qkv).
std::tuple<Tensor, Tensor, Tensor> grads_like(const Tensor& q, const Tensor& k, const Tensor& v, bool q_written,
                                              bool k_written) {
  if (q.dim() != 3 || !q.sizes().equals(k.sizes()) || !q.sizes().equals(v.sizes()))
    return {out_like(q, q_written), out_like(k, k_written), out_like(v, k_written)};
  const auto shape = std::vector<int64_t>{q.size(0), 3, q.size(1), q.size(2)};
  Tensor d = q_written && k_written ? at::empty(shape, q.options()) : at::zeros(shape, q.options());
  return {d.select(1, 0), d.select(1, 1), d.select(1, 2)};
}

// -- short sequences in fp32: the whole score matrix of one (sequence, head) at once ---------------------
// ATen's flash kernel cuts a sequence into query blocks of 32-64 rows and pays a call, output and
// buffer allocations and small GEMMs for each, and this op then copies its outputs into the packed rows.
// Up to kShortLen queries and keys the scores of one (sequence, head) fit in L2, so they are computed
// whole, straight on the packed rows (the row stride is the GEMM's leading dimension: no views, no
// copies): S = scale Q K^T, P = exp(S - rowmax), O = (P V) / rowsum(P), lse = rowmax + log(rowsum); the
// backward recomputes P = exp(S - lse) and takes dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dO O)),
// dQ = scale dS K, dK = scale dS^T Q. The flash kernel's math and outputs (lse included), fp32
// throughout. Frame ids (block_causal) in time order (query_groups) restrict each query frame's scores to
// the keys it sees; in any other order they set the scores of later-frame keys to -inf before the softmax. A
// query that sees no key gets a zero output (lse -inf) and no gradient. The GEMMs are BLAS's sgemm in
// torch's own library, bound at load time; where torch has none (a build without MKL), and for longer
// sequences or other dtypes, ATen's kernel runs (per query group too: frames in time order need no mask).
constexpr int64_t kShortLen = 256;

extern "C" void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
                       const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc) __attribute__((weak));

// Column-major C[m, n] = alpha op(A) op(B) + beta C (BLAS's convention: a row-major matrix is its transpose).
inline void sgemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                  const float* b, int64_t ldb, float* c, int64_t ldc, float beta = 0.0f) {
  const int mi = (int)m, ni = (int)n, ki = (int)k, la = (int)lda, lb = (int)ldb, lc = (int)ldc;
  sgemm_(&ta, &tb, &mi, &ni, &ki, &alpha, a, &la, b, &lb, &beta, c, &lc);
}

// Every product of the short kernel, whose K or N is a head's width (32 or 64): on AVX-512 the register-blocked
// loop of gemm_avx512.h (BLAS's sgemm packs both operands on every call, which at these sizes costs as much as
// the products: 45-80 GFLOP/s a core against 100+ for large GEMMs), B read in place (a transposed B, the keys
// of S = Q K^T or the values of dP = dO V^T, is copied to rows once per head: `transposed`). Elsewhere BLAS
// runs them.
// Whether the products take the register-blocked loop (AVX-512, not JEPA_CPU_BASELINE=1, not JEPA_ATTN_BLAS=1).
inline bool own_products() {
  static const bool use = mk::avx512() && std::getenv("JEPA_ATTN_BLAS") == nullptr;
  return use;
}

// BLAS's column-major view of the same product, for CPUs without AVX-512.
inline void gemm_blas(int64_t M, int64_t N, int64_t K, float alpha, const float* a, int64_t sa, int64_t sk,
                      const float* b, int64_t sbk, int64_t sbn, float* c, int64_t ldc, bool accumulate) {
  // C^T [N, M] = B^T A^T, each operand column-major as BLAS reads it.
  // (A with sk == sa == 1 is one row, M == 1: its leading dimension is unused but must be >= K.)
  const char tb = sbn == 1 ? 'N' : 'T';
  const char ta = sk == 1 ? 'N' : 'T';
  const int64_t lda = sk == 1 ? (M == 1 ? std::max<int64_t>(K, 1) : sa) : sk;
  sgemm(tb, ta, N, M, K, alpha, b, sbn == 1 ? sbk : sbn, a, lda, c, ldc, accumulate ? 1.0f : 0.0f);
}

// B of a product as its pointer and strides (B(k, j) = b[k * sbk + j * sbn]).
struct Operand {
  const float* b;
  int64_t sbk, sbn;
};

// The transposed rows X^T [Dh, n] of the n x Dh rows x (row stride ldx) as the products read them: on
// AVX-512 copied once into `pack` (Dh x n floats, row stride n), so every query group of a head reads a
// prefix of the same rows in place; BLAS reads the transpose itself.
inline Operand transposed(const float* x, int64_t ldx, int64_t n, int64_t Dh, float* pack) {
  if (!own_products()) return {x, 1, ldx};
  for (int64_t d = 0; d < Dh; ++d)
    for (int64_t j = 0; j < n; ++j) pack[d * n + j] = x[j * ldx + d];
  return {pack, n, 1};
}

// The product of the comment above, B read in place (sbn == 1) or, by BLAS only, transposed.
inline void gemm_rm(int64_t M, int64_t N, int64_t K, float alpha, const float* a, int64_t sa, int64_t sk,
                    const Operand& B, float* c, int64_t ldc, bool accumulate) {
  if (M == 0 || N == 0) return;
#if defined(__x86_64__) && defined(__GNUC__)
  if (own_products()) {
    TORCH_CHECK(B.sbn == 1, "block_attention: a transposed operand reached the AVX-512 products unpacked");
    mk::gemm_avx512(M, N, K, alpha, a, sa, sk, B.b, B.sbk, c, ldc, accumulate);
    return;
  }
#endif
  gemm_blas(M, N, K, alpha, a, sa, sk, B.b, B.sbk, B.sbn, c, ldc, accumulate);
}

// W partial maxima / sums, so the compiler vectorises without reordering a float reduction; a row's tail
// goes into the first lanes, and the partials fold pairwise (a fixed order: every ISA's loop sums alike, and
// a row costs a four-step fold instead of a W-long dependent chain, which dominated rows of 32-256).
constexpr int W = 16;

__attribute__((always_inline)) inline float fold_sum(float* acc) {
  for (int w = W / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

__attribute__((always_inline)) inline float fold_max(float* acc) {
  for (int w = W / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) acc[l] = acc[l + w] > acc[l] ? acc[l + w] : acc[l];
  return acc[0];
}

__attribute__((always_inline)) inline float row_max(const float* __restrict x, int64_t n) {
  float acc[W];
  for (int l = 0; l < W; ++l) acc[l] = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + W <= n; j += W) {
#pragma omp simd   // one vector max per W floats: without it GCC unrolls the lanes into scalar maxes
    for (int l = 0; l < W; ++l) acc[l] = x[j + l] > acc[l] ? x[j + l] : acc[l];
  }
  for (int64_t l = 0; j + l < n; ++l) acc[l] = x[j + l] > acc[l] ? x[j + l] : acc[l];
  return fold_max(acc);
}

// x <- exp(x - shift) in place; returns the sum of the new x.
__attribute__((always_inline)) inline float exp_shift_sum(float* __restrict x, int64_t n, float shift) {
  float acc[W] = {};
  int64_t j = 0;
  for (; j + W <= n; j += W)
    for (int l = 0; l < W; ++l) {
      const float e = jepa_cpu::exp_nonpos(x[j + l] - shift);
      x[j + l] = e;
      acc[l] += e;
    }
  for (int64_t l = 0; j + l < n; ++l) {
    const float e = jepa_cpu::exp_nonpos(x[j + l] - shift);
    x[j + l] = e;
    acc[l] += e;
  }
  return fold_sum(acc);
}

// sum_j a[j] b[j] over n
__attribute__((always_inline)) inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float acc[W] = {};
  int64_t j = 0;
  for (; j + W <= n; j += W)
    for (int l = 0; l < W; ++l) acc[l] += a[j + l] * b[j + l];
  for (int64_t l = 0; j + l < n; ++l) acc[l] += a[j + l] * b[j + l];
  return fold_sum(acc);
}

// The rows of one head's [rows, n] score matrix S; lse[r * lse_stride] is row r's log-sum-exp.
// Forward: S -> unnormalised P = exp(S - rowmax) in place, sum[r] = its row sums, lse written.
// Backward: D[r] = dO[r] . O[r] (rows of length Dh, strides ld_do / ld_o), then S -> P = exp(S - lse),
// dP -> dS = P (dP - D[r]) in place.
struct Rows {
  float* S;
  float* dP;
  int64_t rows, n;
  float* sum;
  float* lse;
  int64_t lse_stride;
  const float* dO = nullptr;
  int64_t ld_do = 0;
  const float* O = nullptr;
  int64_t ld_o = 0, Dh = 0;
};

template <bool Backward>
__attribute__((always_inline)) inline void rows_body(const Rows& j) {
  for (int64_t r = 0; r < j.rows; ++r) {
    float* __restrict p = j.S + r * j.n;
    if (!Backward) {
      const float m = row_max(p, j.n);
      if (m == -std::numeric_limits<float>::infinity()) {   // every key masked: no weight, zero output
        std::fill(p, p + j.n, 0.0f);
        j.sum[r] = 0.0f;
        j.lse[r * j.lse_stride] = m;
        continue;
      }
      j.sum[r] = exp_shift_sum(p, j.n, m);
      j.lse[r * j.lse_stride] = m + std::log(j.sum[r]);
      continue;
    }
    float* __restrict dp = j.dP + r * j.n;
    const float shift = j.lse[r * j.lse_stride];
    if (shift == -std::numeric_limits<float>::infinity()) {   // a row that saw no key: no gradient
      std::fill(p, p + j.n, 0.0f);
      std::fill(dp, dp + j.n, 0.0f);
      continue;
    }
    const float d = dot(j.dO + r * j.ld_do, j.O + r * j.ld_o, j.Dh);
    for (int64_t c = 0; c < j.n; ++c) {
      const float e = jepa_cpu::exp_nonpos(p[c] - shift);
      p[c] = e;
      dp[c] = e * (dp[c] - d);
    }
  }
}

using RowsFn = void (*)(const Rows&, bool);

void rows_base(const Rows& j, bool backward) { backward ? rows_body<true>(j) : rows_body<false>(j); }
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) void rows_avx2(const Rows& j, bool backward) {
  backward ? rows_body<true>(j) : rows_body<false>(j);
}
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma"))) void rows_avx512(const Rows& j, bool backward) {
  backward ? rows_body<true>(j) : rows_body<false>(j);
}
#endif

// The row loop this CPU runs (the widest, or the baseline under JEPA_CPU_BASELINE=1).
RowsFn rows_fn() {
#if defined(__x86_64__) && defined(__GNUC__)
  if (jepa_cpu::auto_isa() == 2) return rows_avx512;
  if (jepa_cpu::auto_isa() == 1) return rows_avx2;
#endif
  return rows_base;
}

// Whether a call may take the short-sequence kernel (fp32, sgemm bound); its sequences of at most
// kShortLen queries and keys then do, each longer one takes ATen's flash kernel.
bool short_kernel_ok(const Tensor& q) { return sgemm_ != nullptr && q.scalar_type() == at::kFloat; }

// Frame ids as int64 on the host, or none.
std::optional<Tensor> frames64(const std::optional<Tensor>& f) {
  if (!f.has_value()) return std::nullopt;
  return f->to(at::kLong).contiguous();
}

const int64_t* frames_at(const std::optional<Tensor>& f, int64_t row) {
  return f.has_value() ? f->data_ptr<int64_t>() + row : nullptr;
}

// S [Lq, Lk] row-major: a key of a later frame than its query scores -inf.
void mask_later_frames(float* S, int64_t Lq, int64_t Lk, const int64_t* fq, const int64_t* fk) {
  for (int64_t i = 0; i < Lq; ++i) {
    float* row = S + i * Lk;
    const int64_t f = fq[i];
    for (int64_t j = 0; j < Lk; ++j)
      if (fk[j] > f) row[j] = -std::numeric_limits<float>::infinity();
  }
}

// Query rows [r0, r1) of a sequence that see its keys [0, n) and no other.
struct Group {
  int64_t r0, r1, n;
};

// The query groups of one sequence. Without frame ids: every row sees every key. With frame ids that do
// not decrease along the queries nor along the keys (tokens in time order, as the world models pack
// them): one group per query frame, each seeing a prefix of the keys, so only those scores are computed
// (for F frames of equal size about (F + 1) / 2F of the square) and nothing is masked. Otherwise one
// group, and the caller masks later frames. Returns whether the caller must mask.
bool query_groups(const int64_t* fq, int64_t Lq, const int64_t* fk, int64_t Lk, std::vector<Group>& g) {
  g.clear();
  const bool sorted = fq == nullptr || (std::is_sorted(fq, fq + Lq) && std::is_sorted(fk, fk + Lk));
  if (!sorted || fq == nullptr) {
    g.push_back({0, Lq, Lk});
    return !sorted;
  }
  int64_t n = 0;
  for (int64_t r0 = 0; r0 < Lq;) {
    int64_t r1 = r0 + 1;
    while (r1 < Lq && fq[r1] == fq[r0]) ++r1;
    while (n < Lk && fk[n] <= fq[r0]) ++n;
    g.push_back({r0, r1, n});
    r0 = r1;
  }
  return false;
}

bool is_short(int64_t Lq, int64_t Lk) { return Lq <= kShortLen && Lk <= kShortLen; }

// This thread's buffer `which` of at least n floats (two [kShortLen, kShortLen] score matrices, row data, two
// transposed operands).
float* scratch(int which, int64_t n) {
  thread_local std::vector<float> buf[5];
  auto& b = buf[which];
  if ((int64_t)b.size() < n) b.resize(n);
  return b.data();
}

// Head h's row `row` of a [T, H, Dh] (or [T, H]) fp32 tensor; the row stride is stride(0).
float* at_row(const Tensor& t, int64_t row, int64_t h) {
  return t.data_ptr<float>() + row * t.stride(0) + h * t.stride(1);
}

// Rows [q0, q1) x heads [h0, h1) of out and lse, from q rows [q0, q1) and k, v rows [k0, k1); per query
// group (query_groups) its [rows, n] scores, packed with row stride n.
void short_fwd(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse, int64_t q0, int64_t q1,
               int64_t k0, int64_t k1, int64_t h0, int64_t h1, float scale, const int64_t* fq, const int64_t* fk) {
  const int64_t Lq = q1 - q0, Lk = k1 - k0, Dh = q.size(2), ldo = out.stride(0), ldq = q.stride(0);
  static const RowsFn softmax = rows_fn();
  thread_local std::vector<Group> groups;
  const bool mask = query_groups(fq, Lq, fk, Lk, groups);
  float* S = scratch(0, Lq * Lk);
  float* sum = scratch(2, Lq);
  float* pack = scratch(3, Lk * Dh);
  for (int64_t h = h0; h < h1; ++h) {
    const Operand kT = transposed(at_row(k, k0, h), k.stride(0), Lk, Dh, pack);   // every group: a prefix
    const Operand vh = {at_row(v, k0, h), v.stride(0), 1};
    for (const Group& g : groups) {
      const int64_t rows = g.r1 - g.r0, n = g.n;
      float* op = at_row(out, q0 + g.r0, h);
      float* lp = at_row(lse, q0 + g.r0, h);
      if (n == 0) {   // no key to see: zero output, lse -inf
        for (int64_t i = 0; i < rows; ++i) {
          std::fill(op + i * ldo, op + i * ldo + Dh, 0.0f);
          lp[i * lse.stride(0)] = -std::numeric_limits<float>::infinity();
        }
        continue;
      }
      // S [rows, n] = scale Q K^T
      gemm_rm(rows, n, Dh, scale, at_row(q, q0 + g.r0, h), ldq, 1, kT, S, n, false);
      if (mask) mask_later_frames(S, rows, n, fq + g.r0, fk);
      softmax({S, nullptr, rows, n, sum, lp, lse.stride(0)}, false);
      gemm_rm(rows, Dh, n, 1.0f, S, n, 1, vh, op, ldo, false);   // O = P V
      for (int64_t i = 0; i < rows; ++i) {   // normalised here: Dh per row, not n
        const float inv = sum[i] > 0.0f ? 1.0f / sum[i] : 0.0f;
        for (int64_t j = 0; j < Dh; ++j) op[i * ldo + j] *= inv;
      }
    }
  }
}

// The query groups' gradients: dQ per group; dK and dV of the keys [0, n) a group sees summed over the
// groups (zeroed first: keys no query sees get none).
void short_bwd(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
               const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv, int64_t q0, int64_t q1, int64_t k0, int64_t k1,
               int64_t h0, int64_t h1, float scale, const int64_t* fq, const int64_t* fk) {
  const int64_t Lq = q1 - q0, Lk = k1 - k0, Dh = q.size(2), ldq = q.stride(0), ldk = k.stride(0);
  const int64_t ldd = dout.stride(0), lddq = dq.stride(0), lddk = dk.stride(0), lddv = dv.stride(0);
  static const RowsFn softmax = rows_fn();
  thread_local std::vector<Group> groups;
  const bool mask = query_groups(fq, Lq, fk, Lk, groups);
  const bool one = groups.size() == 1 && groups[0].n == Lk;   // every key seen by the one group: no sum
  float* S = scratch(0, Lq * Lk);
  float* dP = scratch(1, Lq * Lk);
  float* pack_k = scratch(3, Lk * Dh);
  float* pack_v = scratch(4, Lk * Dh);
  for (int64_t h = h0; h < h1; ++h) {
    const float *kp = at_row(k, k0, h), *vp = at_row(v, k0, h);
    const Operand kT = transposed(kp, ldk, Lk, Dh, pack_k), vT = transposed(vp, v.stride(0), Lk, Dh, pack_v);
    const Operand kh = {kp, ldk, 1};
    float *dkp = at_row(dk, k0, h), *dvp = at_row(dv, k0, h);
    if (!one)
      for (int64_t j = 0; j < Lk; ++j) {
        std::fill(dkp + j * lddk, dkp + j * lddk + Dh, 0.0f);
        std::fill(dvp + j * lddv, dvp + j * lddv + Dh, 0.0f);
      }
    const bool sum_keys = !one;
    for (const Group& g : groups) {
      const int64_t rows = g.r1 - g.r0, n = g.n;
      const float *qp = at_row(q, q0 + g.r0, h), *gp = at_row(dout, q0 + g.r0, h);
      float* dqp = at_row(dq, q0 + g.r0, h);
      if (n == 0) {   // rows that saw no key: no gradient
        for (int64_t i = 0; i < rows; ++i) std::fill(dqp + i * lddq, dqp + i * lddq + Dh, 0.0f);
        continue;
      }
      gemm_rm(rows, n, Dh, scale, qp, ldq, 1, kT, S, n, false);                     // S = scale Q K^T
      if (mask) mask_later_frames(S, rows, n, fq + g.r0, fk);
      gemm_rm(rows, n, Dh, 1.0f, gp, ldd, 1, vT, dP, n, false);                      // dP = dO V^T
      softmax({S, dP, rows, n, nullptr, at_row(lse, q0 + g.r0, h), lse.stride(0), gp, ldd,
               at_row(out, q0 + g.r0, h), out.stride(0), Dh}, true);            // S <- P, dP <- dS
      gemm_rm(n, Dh, rows, 1.0f, S, 1, n, {gp, ldd, 1}, dvp, lddv, sum_keys);       // dV (+)= P^T dO
      gemm_rm(rows, Dh, n, scale, dP, n, 1, kh, dqp, lddq, false);                 // dQ = scale dS K
      gemm_rm(n, Dh, rows, scale, dP, 1, n, {qp, ldq, 1}, dkp, lddk, sum_keys);     // dK (+)= scale dS^T Q
    }
  }
}

std::tuple<Tensor, Tensor> block_attention_fwd(const Tensor& q_, const Tensor& k_, const Tensor& v_,
                                               const Tensor& cu_q, const Tensor& cu_k, double scale,
                                               const std::optional<Tensor>& fq, const std::optional<Tensor>& fk) {
  check(q_, k_, v_, cu_q, cu_k);
  Tensor q = inner_contig(q_), k = inner_contig(k_), v = inner_contig(v_);
  auto cq = to_vec(cu_q), ck = to_vec(cu_k);
  TORCH_CHECK(cq.back() == q.size(0) && ck.back() == k.size(0), "block_attention: cu_seqlens must end at T");
  auto lse_dt = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const bool short_ok = short_kernel_ok(q);
  const auto fq64 = frames64(fq), fk64 = frames64(fk);
  if (!fq.has_value() && uniform(cq, ck) && !(short_ok && is_short(cq[1] - cq[0], ck[1] - ck[0]))) {
    int64_t S = (int64_t)cq.size() - 1;
    auto r = at::_scaled_dot_product_flash_attention_for_cpu(batch_view(q, S), batch_view(k, S), batch_view(v, S),
                                                             0.0, false, std::nullopt, scale);
    // lse [S, H, L] -> [S * L, H]
    return {rows_of(std::get<0>(r)), std::get<1>(r).transpose(1, 2).reshape({q.size(0), q.size(1)}).to(lse_dt)};
  }
  bool written = all_live(cq, ck, false);
  Tensor out = out_like(q, written);
  Tensor lse = written ? at::empty({q.size(0), q.size(1)}, q.options().dtype(lse_dt))
                       : at::zeros({q.size(0), q.size(1)}, q.options().dtype(lse_dt));
  for_each_item(items(live_order(cq, ck), q.size(1)), [&](const Item& it) {
    int64_t s = it.s, h0 = it.h0, h1 = it.h1;
    int64_t q0 = cq[s], q1 = cq[s + 1], k0 = ck[s], k1 = ck[s + 1];
    if (short_ok && is_short(q1 - q0, k1 - k0))
      return short_fwd(q, k, v, out, lse, q0, q1, k0, k1, h0, h1, (float)scale, frames_at(fq64, q0),
                       frames_at(fk64, k0));
    // ATen's flash kernel per query group (query_groups): time-ordered frames need no mask, each group
    // attends to the keys it sees
    thread_local std::vector<Group> groups;
    const bool mask = query_groups(frames_at(fq64, q0), q1 - q0, frames_at(fk64, k0), k1 - k0, groups);
    for (const Group& g : groups) {
      const int64_t a = q0 + g.r0, b = q0 + g.r1, kn = k0 + g.n;
      if (g.n == 0) {   // no key to see: zero output, lse -inf
        out.slice(0, a, b).slice(1, h0, h1).zero_();
        lse.slice(0, a, b).slice(1, h0, h1).fill_(-std::numeric_limits<double>::infinity());
        continue;
      }
      auto r = at::_scaled_dot_product_flash_attention_for_cpu(
          bhld(q, a, b, h0, h1), bhld(k, k0, kn, h0, h1), bhld(v, k0, kn, h0, h1), 0.0, false,
          mask ? frame_mask(fq, fk, a, b, k0, kn, q.scalar_type()) : std::nullopt, scale);
      out.slice(0, a, b).slice(1, h0, h1).copy_(std::get<0>(r)[0].transpose(0, 1));
      lse.slice(0, a, b).slice(1, h0, h1).copy_(std::get<1>(r)[0].transpose(0, 1));
    }
  });
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor> block_attention_bwd(
    const Tensor& dout_, const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& out_,
    const Tensor& lse, const Tensor& cu_q, const Tensor& cu_k, double scale, const std::optional<Tensor>& fq,
    const std::optional<Tensor>& fk) {
  check(q_, k_, v_, cu_q, cu_k);
  Tensor q = inner_contig(q_), k = inner_contig(k_), v = inner_contig(v_);
  Tensor dout = inner_contig(dout_), out = inner_contig(out_);
  auto cq = to_vec(cu_q), ck = to_vec(cu_k);
  const bool short_ok = short_kernel_ok(q);
  const auto fq64 = frames64(fq), fk64 = frames64(fk);
  if (!fq.has_value() && uniform(cq, ck) && !(short_ok && is_short(cq[1] - cq[0], ck[1] - ck[0]))) {
    int64_t S = (int64_t)cq.size() - 1;
    auto g = at::_scaled_dot_product_flash_attention_for_cpu_backward(
        batch_view(dout, S), batch_view(q, S), batch_view(k, S), batch_view(v, S), batch_view(out, S),
        lse.view({S, q.size(0) / S, q.size(1)}).transpose(1, 2), 0.0, false, std::nullopt, scale);
    return {rows_of(std::get<0>(g)), rows_of(std::get<1>(g)), rows_of(std::get<2>(g))};
  }
  bool q_written = all_live(cq, ck, false), k_written = all_live(cq, ck, true);
  Tensor dq, dk, dv;
  std::tie(dq, dk, dv) = grads_like(q, k, v, q_written, k_written);
  for_each_item(items(live_order(cq, ck), q.size(1)), [&](const Item& it) {
    int64_t s = it.s, h0 = it.h0, h1 = it.h1;
    int64_t q0 = cq[s], q1 = cq[s + 1], k0 = ck[s], k1 = ck[s + 1];
    if (short_ok && is_short(q1 - q0, k1 - k0))
      return short_bwd(dout, q, k, v, out, lse, dq, dk, dv, q0, q1, k0, k1, h0, h1, (float)scale,
                       frames_at(fq64, q0), frames_at(fk64, k0));
    // per query group, as the forward; dK and dV of the keys a group sees summed over the groups
    thread_local std::vector<Group> groups;
    const bool mask = query_groups(frames_at(fq64, q0), q1 - q0, frames_at(fk64, k0), k1 - k0, groups);
    const bool one = groups.size() == 1 && groups[0].n == k1 - k0;
    if (!one) {
      dk.slice(0, k0, k1).slice(1, h0, h1).zero_();
      dv.slice(0, k0, k1).slice(1, h0, h1).zero_();
    }
    for (const Group& gr : groups) {
      const int64_t a = q0 + gr.r0, b = q0 + gr.r1, kn = k0 + gr.n;
      if (gr.n == 0) {   // rows that saw no key: no gradient
        dq.slice(0, a, b).slice(1, h0, h1).zero_();
        continue;
      }
      auto g = at::_scaled_dot_product_flash_attention_for_cpu_backward(
          bhld(dout, a, b, h0, h1), bhld(q, a, b, h0, h1), bhld(k, k0, kn, h0, h1), bhld(v, k0, kn, h0, h1),
          bhld(out, a, b, h0, h1), lse.slice(0, a, b).slice(1, h0, h1).transpose(0, 1).unsqueeze(0), 0.0, false,
          mask ? frame_mask(fq, fk, a, b, k0, kn, q.scalar_type()) : std::nullopt, scale);
      dq.slice(0, a, b).slice(1, h0, h1).copy_(std::get<0>(g)[0].transpose(0, 1));
      auto dk_s = dk.slice(0, k0, kn).slice(1, h0, h1), dv_s = dv.slice(0, k0, kn).slice(1, h0, h1);
      if (one) {
        dk_s.copy_(std::get<1>(g)[0].transpose(0, 1));
        dv_s.copy_(std::get<2>(g)[0].transpose(0, 1));
      } else {
        dk_s.add_(std::get<1>(g)[0].transpose(0, 1));
        dv_s.add_(std::get<2>(g)[0].transpose(0, 1));
      }
    }
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(jepa_cpp, m) {
  m.def("block_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor cu_q, Tensor cu_k, float scale, "
        "Tensor? fq, Tensor? fk) -> (Tensor, Tensor)",
        &block_attention_fwd);
  m.def("block_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor cu_q, "
        "Tensor cu_k, float scale, Tensor? fq, Tensor? fk) -> (Tensor, Tensor, Tensor)",
        &block_attention_bwd);
  // whether torch's library gave this op its BLAS (the short-sequence kernel's GEMMs)
  m.def("block_attention_has_blas() -> bool", []() { return sgemm_ != nullptr; });
  m.def("block_attention_products() -> str", []() { return std::string(own_products() ? "avx512" : "blas"); });
}
