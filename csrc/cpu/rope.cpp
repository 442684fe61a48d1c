// Rotary position embedding of q and k in one pass (kernels/rope.py has the definition and the reference):
//
//   (qo, ko) = torch.ops.jepa_cpp.rope_qk(q, k, cos, sin, transpose)
//
// q, k: [M, H, Dh], fp32 or bf16 alike, unit last stride (row and head strides free: views of the fused
// qkv projection); cos, sin: fp32 [Mc, R] contiguous, M a multiple of Mc (row m takes table row m % Mc).
// The first R dims of each head turn as pairs (e, o) = (2i, 2i+1):
//   forward    y_e = x_e c_e - x_o s_e     y_o = x_o c_o + x_e s_o
//   transpose  y_e = x_e c_e + x_o s_o     y_o = x_o c_o - x_e s_e     (the forward's backward)
// and the rest of the head is copied. fp32 math, rounded once (bf16 as c10::BFloat16 rounds); outputs
// are new contiguous [M, H, Dh]. Rows run in parallel; the loop is compiled for AVX-512 and AVX2 and
// picked by the CPU at run time (JEPA_CPU_BASELINE=1 picks the baseline build, cpu_isa.h).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "cpu_isa.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>

namespace {

using jepa_cpu::load;
using jepa_cpu::store;

struct Layout {
  int64_t H, Dh, R, Mc;
  int64_t q_row, q_head, k_row, k_head;   // element strides
};

// One head vector x (Dh elements) -> y; kTranspose is a template constant, so the loop has no branch.
template <typename T, bool kTranspose>
__attribute__((always_inline)) inline void turn(const T* __restrict x, T* __restrict y, const float* __restrict c,
                                                const float* __restrict s, int64_t R, int64_t Dh) {
  for (int64_t i = 0; i < R; i += 2) {
    const float xe = load(x[i]), xo = load(x[i + 1]);
    if (kTranspose) {
      store(y + i, xe * c[i] + xo * s[i + 1]);
      store(y + i + 1, xo * c[i + 1] - xe * s[i]);
    } else {
      store(y + i, xe * c[i] - xo * s[i]);
      store(y + i + 1, xo * c[i + 1] + xe * s[i + 1]);
    }
  }
  for (int64_t d = R; d < Dh; ++d) y[d] = x[d];
}

template <typename T, bool kTranspose>
__attribute__((always_inline)) inline void rows_loop(const T* q, const T* k, T* qo, T* ko, const float* cos,
                                                     const float* sin, const Layout& L, int64_t b, int64_t e) {
  for (int64_t m = b; m < e; ++m) {
    const float* c = cos + (m % L.Mc) * L.R;
    const float* s = sin + (m % L.Mc) * L.R;
    for (int64_t h = 0; h < L.H; ++h) {
      const int64_t out = (m * L.H + h) * L.Dh;
      turn<T, kTranspose>(q + m * L.q_row + h * L.q_head, qo + out, c, s, L.R, L.Dh);
      turn<T, kTranspose>(k + m * L.k_row + h * L.k_head, ko + out, c, s, L.R, L.Dh);
    }
  }
}

template <typename T, bool kTranspose>
using RowsFn = void (*)(const T*, const T*, T*, T*, const float*, const float*, const Layout&, int64_t, int64_t);

template <typename T, bool kTranspose>
void rows_base(const T* q, const T* k, T* qo, T* ko, const float* c, const float* s, const Layout& L, int64_t b,
               int64_t e) {
  rows_loop<T, kTranspose>(q, k, qo, ko, c, s, L, b, e);
}

#if defined(__x86_64__) && defined(__GNUC__)
template <typename T, bool kTranspose>
__attribute__((target("avx2,fma"))) void rows_avx2(const T* q, const T* k, T* qo, T* ko, const float* c,
                                                   const float* s, const Layout& L, int64_t b, int64_t e) {
  rows_loop<T, kTranspose>(q, k, qo, ko, c, s, L, b, e);
}

template <typename T, bool kTranspose>
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma"))) void rows_avx512(
    const T* q, const T* k, T* qo, T* ko, const float* c, const float* s, const Layout& L, int64_t b, int64_t e) {
  rows_loop<T, kTranspose>(q, k, qo, ko, c, s, L, b, e);
}
#endif

template <typename T, bool kTranspose>
RowsFn<T, kTranspose> rows_for(int64_t isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (isa == 2) return rows_avx512<T, kTranspose>;
  if (isa == 1) return rows_avx2<T, kTranspose>;
#endif
  return rows_base<T, kTranspose>;
}

template <typename T, bool kTranspose>
void run(const at::Tensor& q, const at::Tensor& k, at::Tensor& qo, at::Tensor& ko, const at::Tensor& cos,
         const at::Tensor& sin, const Layout& L, int64_t isa) {
  const RowsFn<T, kTranspose> rows = rows_for<T, kTranspose>(isa);
  const T* qp = reinterpret_cast<const T*>(q.data_ptr());
  const T* kp = reinterpret_cast<const T*>(k.data_ptr());
  T* qop = reinterpret_cast<T*>(qo.data_ptr());
  T* kop = reinterpret_cast<T*>(ko.data_ptr());
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(1, L.H * L.Dh));
  at::parallel_for(0, q.size(0), grain,
                   [&](int64_t b, int64_t e) { rows(qp, kp, qop, kop, cp, sp, L, b, e); });
}

// isa: -1 the automatic pick, else 0 / 1 / 2 (tests run each loop the CPU has).
std::tuple<at::Tensor, at::Tensor> rope_qk(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                           const at::Tensor& sin, bool transpose, int64_t isa) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && cos.device().is_cpu() && sin.device().is_cpu(),
              "jepa rope_qk: CPU tensors only");
  TORCH_CHECK(q.dim() == 3 && q.sizes() == k.sizes(), "jepa rope_qk: q and k must be [M, H, Dh] alike, got ",
              q.sizes(), " and ", k.sizes());
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && (q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16),
              "jepa rope_qk: fp32 or bf16 (both alike), got ", q.scalar_type(), " and ", k.scalar_type());
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1, "jepa rope_qk: q and k need a unit last stride");
  TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.scalar_type() == at::kFloat &&
              sin.scalar_type() == at::kFloat && cos.is_contiguous() && sin.is_contiguous(),
              "jepa rope_qk: cos and sin must be contiguous fp32 [Mc, R] alike, got ", cos.sizes(), " and ", sin.sizes());
  const int64_t M = q.size(0), H = q.size(1), Dh = q.size(2), Mc = cos.size(0), R = cos.size(1);
  TORCH_CHECK(R % 2 == 0 && R <= Dh, "jepa rope_qk: R ", R, " must be even and at most the head dim ", Dh);
  TORCH_CHECK(M == 0 || (Mc > 0 && M % Mc == 0), "jepa rope_qk: ", M, " rows are not a multiple of ", Mc, " table rows");
  static const int64_t best = jepa_cpu::best_isa();
  TORCH_CHECK(isa >= -1 && isa <= best, "jepa rope_qk: isa ", isa, " is not run by this CPU (0..", best, ")");
  if (isa < 0) isa = jepa_cpu::auto_isa();
  auto qo = at::empty({M, H, Dh}, q.options());
  auto ko = at::empty({M, H, Dh}, k.options());
  if (M == 0 || H == 0 || Dh == 0) return {qo, ko};
  const Layout L{H, Dh, R, Mc, q.stride(0), q.stride(1), k.stride(0), k.stride(1)};
  const bool f32 = q.scalar_type() == at::kFloat;
  if (transpose) {
    f32 ? run<float, true>(q, k, qo, ko, cos, sin, L, isa) : run<uint16_t, true>(q, k, qo, ko, cos, sin, L, isa);
  } else {
    f32 ? run<float, false>(q, k, qo, ko, cos, sin, L, isa) : run<uint16_t, false>(q, k, qo, ko, cos, sin, L, isa);
  }
  return {qo, ko};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(jepa_cpp, m) {
  m.def("rope_qk(Tensor q, Tensor k, Tensor cos, Tensor sin, bool transpose, int isa=-1) -> (Tensor, Tensor)", &rope_qk);
}
