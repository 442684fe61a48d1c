// GELU's output and its backward in one pass, for a linear layer after a GELU that keeps only the
// GELU's input h for its backward (engine.models.layers.GeluLinear): the weight gradient needs gelu(h)
// again and the input gradient needs gelu'(h).
//
//   y = torch.ops.jepa_cpp.gelu_with_grad_(h, g)     y = gelu(h);  g <- g * gelu'(h)  (in place)
//
// gelu(h) = h Phi(h), gelu'(h) = Phi(h) + h phi(h). Phi is computed as ATen's vectorised GELU computes
// it (erf by Abramowitz-Stegun 7.1.26, |error| < 1.5e-7), whose exp(-z^2) at z = h / sqrt(2) is the
// normal density's exp(-h^2 / 2): one exponential per element serves both outputs, where ATen's gelu
// and gelu_backward take three, in two passes over h. fp32 or bf16 (fp32 math, as ATen's), contiguous;
// the loop is compiled for AVX-512 and AVX2 and picked by the CPU at run time (the baseline build is
// SSE2; JEPA_CPU_BASELINE=1 picks it on any CPU).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>

#include "cpu_isa.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

using jepa_cpu::load;
using jepa_cpu::store;

// T: float, or uint16_t holding bf16 bits; the math is fp32 either way (as ATen's bf16 GELU kernels).
template <typename T>
__attribute__((always_inline)) inline void gelu_with_grad_loop(const T* __restrict h, T* __restrict g,
                                                             T* __restrict y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float x = load(h[i]);
    const float z = x * 0.70710678118654752f;
    const float t = 1.0f / (0.3275911f * std::fabs(z) + 1.0f);
    const float poly = (((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f;
    const float e = jepa_cpu::exp_nonpos(-0.5f * x * x);
    const float erf_abs = 1.0f - poly * t * e;
    const float cdf = 0.5f * (1.0f + (z < 0.0f ? -erf_abs : erf_abs));
    store(y + i, x * cdf);
    store(g + i, load(g[i]) * (cdf + x * (0.39894228040143268f * e)));
  }
}

template <typename T>
using SpanFn = void (*)(const T*, T*, T*, int64_t);

template <typename T>
void span_base(const T* __restrict h, T* __restrict g, T* __restrict y, int64_t n) {
  gelu_with_grad_loop(h, g, y, n);
}

#if defined(__x86_64__) && defined(__GNUC__)
template <typename T>
__attribute__((target("avx2,fma"))) void span_avx2(const T* __restrict h, T* __restrict g, T* __restrict y, int64_t n) {
  gelu_with_grad_loop(h, g, y, n);
}

template <typename T>
__attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma"))) void span_avx512(
    const T* __restrict h, T* __restrict g, T* __restrict y, int64_t n) {
  gelu_with_grad_loop(h, g, y, n);
}
#endif

template <typename T>
SpanFn<T> span_for(int64_t isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (isa == 2) return span_avx512<T>;
  if (isa == 1) return span_avx2<T>;
#endif
  return span_base<T>;
}

template <typename T>
void run(const at::Tensor& h, at::Tensor& g, at::Tensor& y, int64_t isa) {
  const SpanFn<T> span = span_for<T>(isa);
  const T* hp = reinterpret_cast<const T*>(h.data_ptr());
  T* gp = reinterpret_cast<T*>(g.data_ptr());
  T* yp = reinterpret_cast<T*>(y.data_ptr());
  at::parallel_for(0, h.numel(), 1 << 14, [&](int64_t b, int64_t e) { span(hp + b, gp + b, yp + b, e - b); });
}

// isa: -1 the automatic pick, else 0 / 1 / 2 (tests run each loop the CPU has).
at::Tensor gelu_with_grad_(const at::Tensor& h, at::Tensor& g, int64_t isa) {
  TORCH_CHECK(h.device().is_cpu() && g.device().is_cpu(), "jepa gelu_with_grad_: CPU tensors only, got ",
              h.device(), " and ", g.device());
  TORCH_CHECK(h.scalar_type() == g.scalar_type() &&
              (h.scalar_type() == at::kFloat || h.scalar_type() == at::kBFloat16),
              "jepa gelu_with_grad_: fp32 or bf16 (both alike), got ", h.scalar_type(), " and ", g.scalar_type());
  TORCH_CHECK(h.sizes() == g.sizes(), "jepa gelu_with_grad_: h has shape ", h.sizes(), ", g ", g.sizes());
  TORCH_CHECK(h.is_contiguous() && g.is_contiguous(), "jepa gelu_with_grad_: h and g must be contiguous");
  at::assert_no_overlap(g, h);   // g is written while h is read
  auto y = at::empty_like(h);
  static const int64_t best = jepa_cpu::best_isa();
  TORCH_CHECK(isa >= -1 && isa <= best, "jepa gelu_with_grad_: isa ", isa, " is not run by this CPU (0..", best, ")");
  if (isa < 0) isa = jepa_cpu::auto_isa();
  if (h.scalar_type() == at::kFloat) {
    run<float>(h, g, y, isa);
  } else {
    run<uint16_t>(h, g, y, isa);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(jepa_cpp, m) {
  m.def("gelu_with_grad_(Tensor h, Tensor(a!) g, int isa=-1) -> Tensor", &gelu_with_grad_);
  m.def("gelu_best_isa() -> int", &jepa_cpu::best_isa);
  m.def("gelu_isa() -> int", &jepa_cpu::auto_isa);
}
