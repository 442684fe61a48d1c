// Multi-tensor EMA on CUDA: t = m*t + (1-m)*s over a list of tensors in ONE launch (multi-tensor-apply
// style: the host cuts the list into 64K-element chunks; each block finds its chunk in a small table
// passed by value in the kernel arguments; tables larger than one launch's argument space are split).
// Pure CUDA (raw pointers + stream); fp32 targets, fp32/fp16/bf16 sources (all with vector loads);
// momentum read on device.
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

namespace {

constexpr int kMaxTensors = 48;
constexpr int kMaxChunks = 320;
constexpr int64_t kChunk = 1 << 16;

struct Table {
  float* t[kMaxTensors];
  const void* s[kMaxTensors];
  int64_t n[kMaxTensors];
  unsigned char tensor_of_chunk[kMaxChunks];
  int chunk_in_tensor[kMaxChunks];
};

__device__ inline float ld(const float* p, int64_t i) { return p[i]; }
__device__ inline float ld(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ inline float ld(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }

// Four source elements as one vector load: float4 for fp32 (16 B), 8 bytes for fp16/bf16.
template <typename S> struct Vec4;
template <> struct Vec4<float> {
  using type = float4;
  __device__ static float4 load(const float4* p) { return *p; }
};
template <> struct Vec4<__half> {
  using type = uint2;
  __device__ static float4 load(const uint2* p) {
    const uint2 raw = *p;
    const float2 a = __half22float2(*reinterpret_cast<const __half2*>(&raw.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2*>(&raw.y));
    return make_float4(a.x, a.y, b.x, b.y);
  }
};
template <> struct Vec4<__nv_bfloat16> {
  using type = uint2;
  __device__ static float4 load(const uint2* p) {
    const uint2 raw = *p;
    const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
    const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
    return make_float4(a.x, a.y, b.x, b.y);
  }
};

template <typename S>
__global__ void ema_kernel(Table tab, const float* __restrict__ momentum) {
  const int ti = tab.tensor_of_chunk[blockIdx.x];
  const int64_t begin = (int64_t)tab.chunk_in_tensor[blockIdx.x] * kChunk;
  const int64_t n = tab.n[ti];
  const int64_t end = begin + kChunk < n ? begin + kChunk : n;
  float* __restrict__ t = tab.t[ti];
  const S* __restrict__ s = (const S*)tab.s[ti];
  const float m = *momentum, a = 1.f - m;
  using V = typename Vec4<S>::type;
  // Vector path for every source dtype: 4 elements per thread per step when both chunk starts are
  // aligned to their vector size (chunks are 64K elements, so only the tensor base decides).
  if ((uintptr_t)(t + begin) % 16 == 0 && (uintptr_t)(s + begin) % sizeof(V) == 0) {
    float4* t4 = (float4*)(t + begin);
    const V* s4 = (const V*)(s + begin);
    const int64_t n4 = (end - begin) / 4;
    for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
      float4 x = t4[i];
      const float4 y = Vec4<S>::load(s4 + i);
      x.x = m * x.x + a * y.x; x.y = m * x.y + a * y.y; x.z = m * x.z + a * y.z; x.w = m * x.w + a * y.w;
      t4[i] = x;
    }
    for (int64_t i = begin + n4 * 4 + threadIdx.x; i < end; i += blockDim.x) t[i] = m * t[i] + a * ld(s, i);
    return;
  }
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) t[i] = m * t[i] + a * ld(s, i);
}

template <typename S>
cudaError_t run(float* const* targets, const void* const* sources, const int64_t* numels, int count,
                const float* momentum, cudaStream_t stream) {
  Table tab;
  int nt = 0, nc = 0;
  for (int i = 0; i < count; ++i) {
    if (numels[i] == 0) continue;
    tab.t[nt] = targets[i]; tab.s[nt] = sources[i]; tab.n[nt] = numels[i];
    const int64_t chunks = (numels[i] + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      tab.tensor_of_chunk[nc] = (unsigned char)nt; tab.chunk_in_tensor[nc] = (int)c; ++nc;
      const bool last_chunk_of_tensor = c == chunks - 1;
      if (nc == kMaxChunks || (last_chunk_of_tensor && nt + 1 == kMaxTensors)) {   // table full: launch
        ema_kernel<S><<<nc, 256, 0, stream>>>(tab, momentum);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
        nc = 0;
        if (!last_chunk_of_tensor) {   // the rest of this tensor continues in slot 0
          tab.t[0] = tab.t[nt]; tab.s[0] = tab.s[nt]; tab.n[0] = tab.n[nt]; nt = 0;
          continue;
        }
        nt = -1;
      }
    }
    ++nt;
  }
  if (nc > 0) ema_kernel<S><<<nc, 256, 0, stream>>>(tab, momentum);
  return cudaGetLastError();
}

}  // namespace

// source_dtype: 0 fp32, 1 fp16, 2 bf16. `momentum` is a device pointer to one float.
cudaError_t jepa_ema_cuda(float* const* targets, const void* const* sources, const int64_t* numels, int count,
                          int source_dtype, const float* momentum, cudaStream_t stream) {
  switch (source_dtype) {
    case 0: return run<float>(targets, sources, numels, count, momentum, stream);
    case 1: return run<__half>(targets, sources, numels, count, momentum, stream);
    case 2: return run<__nv_bfloat16>(targets, sources, numels, count, momentum, stream);
    default: return cudaErrorInvalidValue;
  }
}
