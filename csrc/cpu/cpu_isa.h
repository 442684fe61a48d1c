// What the CPU kernels with several instruction-set builds (yuv_resize.cpp, gelu.cpp, block_attention.cpp)
// share when they pick one at run time, and the vectorisable exponential two of them use.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace jepa_cpu {

// JEPA_CPU_BASELINE=1 in the environment picks the baseline build (SSE2, what every x86-64 has) on any
// CPU, so that the path of CPUs without AVX2 is tested on those that have it.
inline bool baseline_forced() { return std::getenv("JEPA_CPU_BASELINE") != nullptr; }

// The widest loop this CPU runs: 2 AVX-512, 1 AVX2 + FMA, 0 the baseline build.
inline int64_t best_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw"))
    return 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 1;
#endif
  return 0;
}

// The loop an automatic call runs here: the widest, or the baseline under JEPA_CPU_BASELINE=1.
inline int64_t auto_isa() {
  static const int64_t isa = baseline_forced() ? 0 : best_isa();
  return isa;
}

// exp(x) for x <= 0, 0 below -87 (exp(-87) ~ 1.6e-38, the last normal floats): Cody-Waite range
// reduction x = n ln2 + r, a degree-6 polynomial for exp(r) on |r| <= ln2 / 2, then 2^n from its bits.
// Rounding by adding 1.5 * 2^23 (not floor) keeps the loop vectorisable without -ffast-math.
__attribute__((always_inline)) inline float exp_nonpos(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  const float fn = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fn) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return x < -87.0f ? 0.0f : p * scale;
}

}  // namespace jepa_cpu
