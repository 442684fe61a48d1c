// Multi-tensor EMA on CPU: t = m*t + (1-m)*s over a list of tensors in one parallel pass.
// The lists are cut into fixed-size chunks and the chunks are spread over threads, so many small
// parameters cost one parallel region, not one per tensor (the overhead of the reference loop).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cstring>
#include <vector>

namespace {

struct Chunk { int64_t tensor, begin, end; };
constexpr int64_t kChunk = 1 << 15;  // 32K elements: 384 KiB of traffic per task at fp32

inline float bf16_to_f32(uint16_t v) { uint32_t u = uint32_t(v) << 16; float f; std::memcpy(&f, &u, 4); return f; }

template <typename S>
inline void ema_span(float* t, const S* s, int64_t n, float m, float a);

template <> inline void ema_span<float>(float* t, const float* s, int64_t n, float m, float a) {
  for (int64_t i = 0; i < n; ++i) t[i] = m * t[i] + a * s[i];
}
template <> inline void ema_span<uint16_t>(float* t, const uint16_t* s, int64_t n, float m, float a) {
  for (int64_t i = 0; i < n; ++i) t[i] = m * t[i] + a * bf16_to_f32(s[i]);
}
template <> inline void ema_span<at::Half>(float* t, const at::Half* s, int64_t n, float m, float a) {
  for (int64_t i = 0; i < n; ++i) t[i] = m * t[i] + a * static_cast<float>(s[i]);
}
inline void ema_span_f64(double* t, const double* s, int64_t n, double m, double a) {
  for (int64_t i = 0; i < n; ++i) t[i] = m * t[i] + a * s[i];
}

void ema_(at::TensorList targets, at::TensorList sources, const at::Tensor& momentum) {
  TORCH_CHECK(targets.size() == sources.size(), "jepa ema_: ", targets.size(), " targets but ",
              sources.size(), " sources");
  TORCH_CHECK(momentum.numel() == 1, "jepa ema_: momentum must be a scalar, got shape ", momentum.sizes());
  const double m = momentum.item<double>();
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < targets.size(); ++i) {
    const auto& t = targets[i];
    const auto& s = sources[i];
    TORCH_CHECK(t.device().is_cpu() && s.device().is_cpu(), "jepa ema_: tensor ", i, " is not on CPU (",
                t.device(), ", ", s.device(), ")");
    TORCH_CHECK(t.sizes() == s.sizes(), "jepa ema_: target ", i, " has shape ", t.sizes(), ", source ", s.sizes());
    TORCH_CHECK(t.is_contiguous() && s.is_contiguous(), "jepa ema_: tensor ", i, " is not contiguous");
    const bool ok = (t.scalar_type() == at::kFloat &&
                     (s.scalar_type() == at::kFloat || s.scalar_type() == at::kBFloat16 || s.scalar_type() == at::kHalf)) ||
                    (t.scalar_type() == at::kDouble && s.scalar_type() == at::kDouble);
    TORCH_CHECK(ok, "jepa ema_: tensor ", i, ": target ", t.scalar_type(), " with source ", s.scalar_type(),
                " is not supported (targets are fp32 with fp32/bf16/fp16 sources, or fp64 with fp64)");
    const int64_t n = t.numel();
    for (int64_t b = 0; b < n; b += kChunk) chunks.push_back({(int64_t)i, b, std::min(n, b + kChunk)});
  }
  const float mf = static_cast<float>(m), af = static_cast<float>(1.0 - m);
  at::parallel_for(0, (int64_t)chunks.size(), 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const Chunk& ch = chunks[c];
      const auto& t = targets[ch.tensor];
      const auto& s = sources[ch.tensor];
      const int64_t n = ch.end - ch.begin;
      if (t.scalar_type() == at::kDouble) {
        ema_span_f64(t.data_ptr<double>() + ch.begin, s.data_ptr<double>() + ch.begin, n, m, 1.0 - m);
      } else if (s.scalar_type() == at::kFloat) {
        ema_span<float>(t.data_ptr<float>() + ch.begin, s.data_ptr<float>() + ch.begin, n, mf, af);
      } else if (s.scalar_type() == at::kBFloat16) {
        ema_span<uint16_t>(t.data_ptr<float>() + ch.begin,
                           reinterpret_cast<const uint16_t*>(s.data_ptr()) + ch.begin, n, mf, af);
      } else {
        ema_span<at::Half>(t.data_ptr<float>() + ch.begin, s.data_ptr<at::Half>() + ch.begin, n, mf, af);
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(jepa_cpp, m) {
  m.def("ema_(Tensor(a!)[] targets, Tensor[] sources, Tensor momentum) -> ()", &ema_);
}
