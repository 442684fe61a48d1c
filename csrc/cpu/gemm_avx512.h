// The register-blocked AVX-512 product shared by the short attention kernel (block_attention.cpp) and the
// linear layers (linear.cpp).
//
// Row-major C[M, N] = alpha A B (+ bias[j]) (+ R[i, j] = res[i * ldr + j] where res is given) (+ C where
// accumulate), A(i, k) = a[i * sa + k * sk], B(k, j) = b[k * ldb + j]: 8 rows x 32 columns of C in 16 registers, one broadcast of A and two loads of B
// per k; A and B read in place, nothing packed. At the sizes these callers have (K or N a head's width, or a
// layer's width up to 768; B up to ~600 KB, in L2) BLAS's packing of both operands on every call costs
// more than it saves: this loop ran 1.02-1.24x MKL's sgemm's rate on the tiny V-JEPA step's linear-layer
// products (one thread, forward, input and weight gradients; one of 27 at 0.99x; bench/bench_linear.py).
#pragma once

#include <cstdint>

#include "cpu_isa.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace mk {
constexpr int kRows = 8;

#if defined(__x86_64__) && defined(__GNUC__)
#define JEPA_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,avx2,fma")))

template <int R>
JEPA_AVX512 inline void block(int64_t K, int64_t N, float alpha, const float* a, int64_t sa, int64_t sk,
                              const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate,
                              const float* bias, const float* res, int64_t ldr) {
  const __m512 al = _mm512_set1_ps(alpha);
  const bool scaled = alpha != 1.0f;
  for (int64_t j0 = 0; j0 < N; j0 += 32) {
    const int64_t w = N - j0;
    const __mmask16 m0 = w >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << w) - 1u);
    const __mmask16 m1 = w >= 32 ? (__mmask16)0xFFFF : w <= 16 ? (__mmask16)0 : (__mmask16)((1u << (w - 16)) - 1u);
    __m512 acc[R][2];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const float* bk = b + j0;
    const float* ak = a;
    for (int64_t k = 0; k < K; ++k, bk += ldb, ak += sk) {
      const __m512 b0 = _mm512_maskz_loadu_ps(m0, bk);
      const __m512 b1 = _mm512_maskz_loadu_ps(m1, bk + 16);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m512 av = _mm512_set1_ps(ak[r * sa]);
        acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
      }
    }
    __m512 bias0 = _mm512_setzero_ps(), bias1 = _mm512_setzero_ps();
    if (bias != nullptr) {
      bias0 = _mm512_maskz_loadu_ps(m0, bias + j0);
      bias1 = _mm512_maskz_loadu_ps(m1, bias + j0 + 16);
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      float* cr = c + r * ldc + j0;
      __m512 v0 = acc[r][0], v1 = acc[r][1];
      if (scaled) {   // the linear layers' products have alpha = 1: no multiply per stored vector
        v0 = _mm512_mul_ps(v0, al);
        v1 = _mm512_mul_ps(v1, al);
      }
      if (bias != nullptr) {
        v0 = _mm512_add_ps(v0, bias0);
        v1 = _mm512_add_ps(v1, bias1);
      }
      if (res != nullptr) {   // a residual stream added as the rows are stored: no pass of its own
        v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, res + r * ldr + j0));
        v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, res + r * ldr + j0 + 16));
      }
      if (accumulate) {
        v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cr));
        v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cr + 16));
      }
      _mm512_mask_storeu_ps(cr, m0, v0);
      _mm512_mask_storeu_ps(cr + 16, m1, v1);
    }
  }
}

JEPA_AVX512 inline void gemm_avx512(int64_t M, int64_t N, int64_t K, float alpha, const float* a, int64_t sa,
                                    int64_t sk, const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate,
                                    const float* bias = nullptr, const float* res = nullptr, int64_t ldr = 0) {
  int64_t i = 0;
  for (; i + kRows <= M; i += kRows)
    block<kRows>(K, N, alpha, a + i * sa, sa, sk, b, ldb, c + i * ldc, ldc, accumulate, bias,
                 res != nullptr ? res + i * ldr : nullptr, ldr);
  const float* ai = a + i * sa;
  float* ci = c + i * ldc;
  const float* ri = res != nullptr ? res + i * ldr : nullptr;
  switch (M - i) {
    case 7: block<7>(K, N, alpha, ai, sa, sk, b, ldb, ci, ldc, accumulate, bias, ri, ldr); break;
    case 6: block<6>(K, N, alpha, ai, sa, sk, b, ldb, ci, ldc, accumulate, bias, ri, ldr); break;
    case 5: block<5>(K, N, alpha, ai, sa, sk, b, ldb, ci, ldc, accumulate, bias, ri, ldr); break;
    case 4: block<4>(K, N, alpha, ai, sa, sk, b, ldb, ci, ldc, accumulate, bias, ri, ldr); break;
    case 3: block<3>(K, N, alpha, ai, sa, sk, b, ldb, ci, ldc, accumulate, bias, ri, ldr); break;
    case 2: block<2>(K, N, alpha, ai, sa, sk, b, ldb, ci, ldc, accumulate, bias, ri, ldr); break;
    case 1: block<1>(K, N, alpha, ai, sa, sk, b, ldb, ci, ldc, accumulate, bias, ri, ldr); break;
    default: break;
  }
}
#undef JEPA_AVX512
#endif

// Whether this CPU runs the loop (AVX-512, and not JEPA_CPU_BASELINE=1).
inline bool avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  return jepa_cpu::auto_isa() == 2;
#else
  return false;
#endif
}
}  // namespace mk
