// A linear layer's three products in fp32 on AVX-512, on the register-blocked loop of gemm_avx512.h:
//
//   y  = torch.ops.jepa_cpp.linear_fwd(x, w, b, r)   y [T, O] = x [T, I] w^T + b (+ r [T, O])  (b, r: or None)
//   dx = torch.ops.jepa_cpp.linear_dx(g, w)       dx [T, I] = g [T, O] w        (the input's gradient)
//   dw, db = torch.ops.jepa_cpp.linear_dw(g, x, bias)   dw [O, I] = g^T x  (the weight's gradient), and
//                                                  db [O] = g's column sums (the bias's) when bias, else empty
//
// BLAS's sgemm packs both operands into panels on every call; at a ViT block's widths (I, O <= 768, the
// weight in L2) that packing is not repaid, and the loop that reads them in place ran 1.02-1.24x MKL's
// sgemm's rate on the tiny V-JEPA step's shapes (bench/bench_linear.py; the context fc2's weight gradient
// 0.99x). Only the forward's w^T is copied (one
// pass over w, not over x), so that its rows are the loop's B; the gradients read g, w and x where they
// are (dw reads g by columns: 8 consecutive floats of a row per k). The bias is added as the rows are
// stored, not copied into the output first, and so is a residual stream r (a block's x + proj(a): no add of
// its own, no product tensor in between). Rows of y and dx are spread over ATen's intra-op threads; dw
// sums over T in row groups (each into its own partial, added in a fixed order: see linear_dw), each group
// in chunks of kChunk rows, so that x's chunk stays in L2 while every row block of dw reads it. No sum's
// order depends on the thread count.
//
// x, g: 2-D with unit inner stride (any row stride); w: contiguous [O, I]; b: contiguous [O]; all fp32 on
// the CPU. linear_ok() says whether this CPU runs the loop (AVX-512, not JEPA_CPU_BASELINE=1);
// kernels/linear.py calls these ops only then.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "cpu_isa.h"
#include "gemm_avx512.h"

#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

namespace {

using at::Tensor;

constexpr int64_t kChunk = 256;       // rows of T summed at once by dw
constexpr int64_t kRowGrain = 64;     // rows per task of y and dx
constexpr int64_t kFeatureGrain = 32; // output features per task of dw
constexpr int64_t kTransposeGrain = 4; // 8-row blocks of w per task of its transpose
constexpr int64_t kFeatureBlock = 64;  // columns of g summed at once for the bias gradient
constexpr int64_t kGroupRows = 384;    // rows of T at least per row group of dw
constexpr int64_t kMaxGroups = 8;      // row groups of dw at most
constexpr int64_t kMaxPartials = int64_t{1} << 22;   // floats of dw's partial sums at most (16 MB)

void check_2d(const Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "jepa ", op, ": ", name,
              " must be a CPU float32 tensor, got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.dim() == 2 && (t.stride(1) == 1 || t.size(1) <= 1 || t.numel() == 0), "jepa ", op, ": ", name,
              " must be 2-D with unit inner stride, got shape ", t.sizes(), " strides ", t.strides());
}

void check_ready(const char* op) {
  TORCH_CHECK(mk::avx512(), "jepa ", op, ": this CPU does not run the AVX-512 loop (see linear_ok())");
}

// C [T, N] = A B (+ bias) (+ R) for A [T, K] (a: unit inner stride, any row stride), B [K, N] row-major and
// R [T, N] (row stride ldr) or null: the forward (B = w^T) and the input gradient (B = w), rows spread over
// ATen's threads.
Tensor row_product(const Tensor& a, const float* b, int64_t N, const float* bias, const float* res = nullptr,
                   int64_t ldr = 0) {
  const int64_t T = a.size(0), K = a.size(1), lda = a.stride(0);
  Tensor c = at::empty({T, N}, a.options());
  if (T == 0 || N == 0) return c;
  const float* ap = a.data_ptr<float>();
  float* cp = c.data_ptr<float>();
  at::parallel_for(0, T, kRowGrain, [&](int64_t m0, int64_t m1) {
#if defined(__x86_64__) && defined(__GNUC__)
    mk::gemm_avx512(m1 - m0, N, K, 1.0f, ap + m0 * lda, lda, 1, b, N, cp + m0 * N, N, false, bias,
                    res != nullptr ? res + m0 * ldr : nullptr, ldr);
#endif
  });
  return c;
}

#if defined(__x86_64__) && defined(__GNUC__)
// dst [C, R] = src [R, C]^T for an 8 x 8 tile (row strides ls, ld): eight loads, three rounds of shuffles.
__attribute__((target("avx2,fma"))) inline void tile8(const float* src, int64_t ls, float* dst, int64_t ld) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ls);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ld, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#endif

// dst [C, R] = src [R, C]^T, both contiguous: 8 x 8 tiles in registers, the edges element by element; source
// rows in blocks of 8 over ATen's threads (a one-thread copy would leave the other threads idle before the
// product).
void transpose(const float* src, int64_t R, int64_t C, float* dst) {
  at::parallel_for(0, (R + 7) / 8, kTransposeGrain, [&](int64_t b0, int64_t b1) {
    const int64_t r0 = b0 * 8, r1 = std::min(R, b1 * 8);
    int64_t r8 = r0, c8 = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    r8 = r0 + (r1 - r0) / 8 * 8;
    c8 = C / 8 * 8;
    for (int64_t r = r0; r < r8; r += 8)
      for (int64_t c = 0; c < c8; c += 8) tile8(src + r * C + c, C, dst + c * R + r, R);
#endif
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = (r < r8 ? c8 : 0); c < C; ++c) dst[c * R + r] = src[r * C + c];
  });
}

Tensor linear_fwd(const Tensor& x, const Tensor& w, const std::optional<Tensor>& b, const std::optional<Tensor>& r) {
  check_ready("linear_fwd");
  check_2d(x, "linear_fwd", "x");
  check_2d(w, "linear_fwd", "w");
  TORCH_CHECK(w.is_contiguous(), "jepa linear_fwd: w must be contiguous");
  const int64_t T = x.size(0), I = x.size(1), O = w.size(0);
  TORCH_CHECK(w.size(1) == I, "jepa linear_fwd: x has ", I, " features, w is ", w.sizes());
  const float* bias = nullptr;
  if (b.has_value()) {
    TORCH_CHECK(b->device().is_cpu() && b->scalar_type() == at::kFloat && b->is_contiguous() && b->dim() == 1 &&
                    b->size(0) == O,
                "jepa linear_fwd: b must be a contiguous CPU float32 [", O, "], got ", b->sizes());
    bias = b->data_ptr<float>();
  }
  if (r.has_value()) {
    check_2d(*r, "linear_fwd", "r");
    TORCH_CHECK(r->size(0) == T && r->size(1) == O, "jepa linear_fwd: r must be [", T, ", ", O, "], got ", r->sizes());
  }
  if (T == 0 || O == 0) return at::empty({T, O}, x.options());
  if (I == 0) {
    Tensor y = bias ? b->unsqueeze(0).expand({T, O}).clone() : at::zeros({T, O}, x.options());
    return r.has_value() ? y.add_(*r) : y;
  }
  // w^T [I, O], the loop's B: one pass over w
  thread_local std::vector<float> wt;
  wt.resize(I * O);
  transpose(w.data_ptr<float>(), O, I, wt.data());
  return r.has_value() ? row_product(x, wt.data(), O, bias, r->data_ptr<float>(), r->stride(0))
                       : row_product(x, wt.data(), O, bias);
}

Tensor linear_dx(const Tensor& g, const Tensor& w) {
  check_ready("linear_dx");
  check_2d(g, "linear_dx", "g");
  check_2d(w, "linear_dx", "w");
  TORCH_CHECK(w.is_contiguous(), "jepa linear_dx: w must be contiguous");
  const int64_t T = g.size(0), O = g.size(1), I = w.size(1);
  TORCH_CHECK(w.size(0) == O, "jepa linear_dx: g has ", O, " features, w is ", w.sizes());
  if (O == 0) return at::zeros({T, I}, g.options());
  return row_product(g, w.data_ptr<float>(), I, nullptr);
}

// dst[o] += sum over rows [0, rows) of g[t, o] for o in [0, n): the chunk of g the weight gradient just read
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f,avx2,fma")))
#endif
void add_column_sums(const float* g, int64_t ldg, int64_t rows, int64_t n, float* dst) {
  float acc[kFeatureBlock];
  for (int64_t c0 = 0; c0 < n; c0 += kFeatureBlock) {
    const int64_t w = std::min(kFeatureBlock, n - c0);
    std::fill(acc, acc + w, 0.0f);
    for (int64_t t = 0; t < rows; ++t)
      for (int64_t c = 0; c < w; ++c) acc[c] += g[t * ldg + c0 + c];
    for (int64_t c = 0; c < w; ++c) dst[c0 + c] += acc[c];
  }
}

// dst[i] += src[i] for i in [0, n)
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f,avx2,fma")))
#endif
void add_rows(const float* src, int64_t n, float* dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

// [start, end) of the i-th of n near-equal shares of [0, size), inner edges on multiples of `align`
std::pair<int64_t, int64_t> share(int64_t size, int64_t n, int64_t i, int64_t align) {
  const int64_t units = (size + align - 1) / align;
  return {std::min(size, units * i / n * align), std::min(size, units * (i + 1) / n * align)};
}

// Row groups of the weight gradient: a function of the shapes only (not of the thread count), so that dw's
// sums run in one order on any number of threads; a power of two, so that groups spread evenly over an even
// count of threads. Groups of at least kGroupRows rows, at most kMaxGroups, and partial sums of at most
// kMaxPartials floats.
int64_t row_groups(int64_t T, int64_t O, int64_t I) {
  const int64_t cap = std::min({T / kGroupRows, kMaxGroups, kMaxPartials / std::max<int64_t>(1, O * I) + 1});
  int64_t groups = 1;
  while (groups * 2 <= cap) groups *= 2;
  return groups;
}

// (dw, db): db = the column sums of g (the bias gradient, summed per chunk as dw is) when `bias`, else an
// empty tensor. T is cut into row groups (row_groups()), each summed into its own partial dw over the
// features' blocks, then the partials are added in group order: every thread reads only its rows of g and x.
// Split over features instead, each thread read all of x, and two threads ran 1.56-1.85x one thread's rate
// on the tiny V-JEPA step's shapes against 1.85-2.1x split over rows (x and g not in cache).
std::tuple<Tensor, Tensor> linear_dw(const Tensor& g, const Tensor& x, bool bias) {
  check_ready("linear_dw");
  check_2d(g, "linear_dw", "g");
  check_2d(x, "linear_dw", "x");
  const int64_t T = g.size(0), O = g.size(1), I = x.size(1);
  TORCH_CHECK(x.size(0) == T, "jepa linear_dw: g has ", T, " rows, x ", x.size(0));
  Tensor dw = at::empty({O, I}, g.options());
  Tensor db = bias ? at::zeros({O}, g.options()) : at::empty({0}, g.options());
  if (O == 0) return {dw, db};
  if (T == 0 || I == 0) {
    dw.zero_();
    if (T == 0 || !bias) return {dw, db};
  }
  const int64_t G = row_groups(T, O, I);
  // groups 1.. sum into partials (dw and db side by side per group); group 0 into dw and db
  Tensor partials = G > 1 ? at::zeros({G - 1, O * I + O}, g.options()) : Tensor();
  const float* gp = g.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  float* dwp = dw.data_ptr<float>();
  float* dbp = bias ? db.data_ptr<float>() : nullptr;
  float* pp = G > 1 ? partials.data_ptr<float>() : nullptr;
  const int64_t ldg = g.stride(0), ldx = x.stride(0);
  // feature blocks per group: enough tasks for every thread; they do not change any sum's order
  const int64_t F = std::max<int64_t>(1, std::min((at::get_num_threads() + G - 1) / G, O / kFeatureGrain));
  at::parallel_for(0, G * F, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const auto [r0, r1] = share(T, G, k / F, mk::kRows);
      const auto [o0, o1] = share(O, F, k % F, mk::kRows);
      float* out = k / F == 0 ? dwp : pp + (k / F - 1) * (O * I + O);
      float* out_b = k / F == 0 ? dbp : (dbp != nullptr ? out + O * I : nullptr);
      for (int64_t t0 = r0; t0 < r1; t0 += kChunk) {   // A(o, t) = g[t, o]: g^T read by columns
        const int64_t rows = std::min(kChunk, r1 - t0);
#if defined(__x86_64__) && defined(__GNUC__)
        if (I > 0)
          mk::gemm_avx512(o1 - o0, I, rows, 1.0f, gp + t0 * ldg + o0, 1, ldg, xp + t0 * ldx, ldx, out + o0 * I, I,
                          t0 > r0);
#endif
        if (out_b != nullptr) add_column_sums(gp + t0 * ldg + o0, ldg, rows, o1 - o0, out_b + o0);
      }
    }
  });
  if (G > 1)
    at::parallel_for(0, O, kFeatureGrain, [&](int64_t o0, int64_t o1) {
      for (int64_t p = 0; p < G - 1; ++p) {
        const float* part = pp + p * (O * I + O);
        add_rows(part + o0 * I, (o1 - o0) * I, dwp + o0 * I);
        if (dbp != nullptr) add_rows(part + O * I + o0, o1 - o0, dbp + o0);
      }
    });
  return {dw, db};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(jepa_cpp, m) {
  m.def("linear_fwd(Tensor x, Tensor w, Tensor? b, Tensor? r=None) -> Tensor", &linear_fwd);
  m.def("linear_dx(Tensor g, Tensor w) -> Tensor", &linear_dx);
  m.def("linear_dw(Tensor g, Tensor x, bool bias=False) -> (Tensor, Tensor)", &linear_dw);
  m.def("linear_ok() -> bool", []() { return mk::avx512(); });
}
