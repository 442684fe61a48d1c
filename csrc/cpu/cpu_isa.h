// What the CPU kernels with several instruction-set builds (yuv_resize.cpp, gelu.cpp, rope.cpp,
// block_attention.cpp) share when they pick one at run time, the vectorisable exponential two of them
// use, and the bf16 loads and stores of those templated on the element type.
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

// bf16 <-> fp32 as c10::BFloat16 converts: widen by bits, narrow rounding to nearest even (NaN kept).
// Kernels templated on the element type take float, or uint16_t holding bf16 bits, and compute in fp32.
__attribute__((always_inline)) inline float load(float v) { return v; }
__attribute__((always_inline)) inline float load(uint16_t v) {
  const uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
__attribute__((always_inline)) inline void store(float* p, float f) { *p = f; }
__attribute__((always_inline)) inline void store(uint16_t* p, float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  *p = static_cast<uint16_t>(f != f ? 0x7FC0u : rounded);
}

}  // namespace jepa_cpu
