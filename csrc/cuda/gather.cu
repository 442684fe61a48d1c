// Masked-token gather / scatter / gather+layer_norm on CUDA. Pure CUDA (raw pointers + a stream, no
// torch headers: the CPU torch wheel cannot be compiled by nvcc); bound in bindings_cuda.cpp.
// One block per row; rows are copied with 16-byte vector loads when the row size and pointers allow.
// Rows outside [0, M) are skipped (the gather writes zeros), so a bad index never touches memory.
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

namespace {

template <typename V>
__global__ void gather_rows_kernel(const V* __restrict__ x, const int64_t* __restrict__ rows, V* __restrict__ y,
                                   int64_t M, int64_t row_vecs) {
  const int64_t t = blockIdx.x;
  const int64_t r = rows[t];
  V* out = y + t * row_vecs;
  if (r < 0 || r >= M) {
    for (int64_t i = threadIdx.x; i < row_vecs; i += blockDim.x) out[i] = V{};
    return;
  }
  const V* in = x + r * row_vecs;
  for (int64_t i = threadIdx.x; i < row_vecs; i += blockDim.x) out[i] = in[i];
}

// Unique rows (mask guarantee): every target row is written by one block, no atomics.
template <typename V>
__global__ void scatter_rows_kernel(const V* __restrict__ y, const int64_t* __restrict__ rows, V* __restrict__ out,
                                    int64_t M, int64_t row_vecs) {
  const int64_t t = blockIdx.x;
  const int64_t r = rows[t];
  if (r < 0 || r >= M) return;
  for (int64_t i = threadIdx.x; i < row_vecs; i += blockDim.x) out[r * row_vecs + i] = y[t * row_vecs + i];
}

template <typename V>
void launch_copy(bool scatter, const void* src, const int64_t* rows, void* dst, int64_t M, int64_t T,
                 int64_t row_bytes, cudaStream_t stream) {
  const int64_t row_vecs = row_bytes / sizeof(V);
  const int threads = row_vecs >= 256 ? 256 : (row_vecs >= 64 ? 64 : 32);
  if (scatter)
    scatter_rows_kernel<V><<<(unsigned)T, threads, 0, stream>>>((const V*)src, rows, (V*)dst, M, row_vecs);
  else
    gather_rows_kernel<V><<<(unsigned)T, threads, 0, stream>>>((const V*)src, rows, (V*)dst, M, row_vecs);
}

void copy_rows(bool scatter, const void* src, const int64_t* rows, void* dst, int64_t M, int64_t T,
               int64_t row_bytes, cudaStream_t stream) {
  if (T == 0 || row_bytes == 0) return;
  const uintptr_t a = (uintptr_t)src | (uintptr_t)dst | (uintptr_t)row_bytes;
  if (a % 16 == 0) launch_copy<int4>(scatter, src, rows, dst, M, T, row_bytes, stream);        // 16-byte vectors
  else if (a % 8 == 0) launch_copy<int2>(scatter, src, rows, dst, M, T, row_bytes, stream);
  else if (a % 4 == 0) launch_copy<int>(scatter, src, rows, dst, M, T, row_bytes, stream);
  else launch_copy<short>(scatter, src, rows, dst, M, T, row_bytes, stream);
}

__device__ inline float to_f(float v) { return v; }
__device__ inline float to_f(__half v) { return __half2float(v); }
__device__ inline float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ inline T from_f(float v);
template <> __device__ inline float from_f<float>(float v) { return v; }
template <> __device__ inline __half from_f<__half>(float v) { return __float2half(v); }
template <> __device__ inline __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

__device__ inline float block_sum(float v, float* sh) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  float s = 0.f;
  for (int w = 0; w < (int)(blockDim.x / 32); ++w) s += sh[w];
  __syncthreads();
  return s;
}

// y[t] = layer_norm(x[rows[t]]), no affine, fp32 statistics (two passes over the row in L1/L2).
template <typename T>
__global__ void gather_ln_kernel(const T* __restrict__ x, const int64_t* __restrict__ rows, T* __restrict__ y,
                                 int64_t M, int64_t D, float eps) {
  __shared__ float sh[32];
  const int64_t t = blockIdx.x;
  const int64_t r = rows[t];
  T* out = y + t * D;
  if (r < 0 || r >= M) {
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) out[i] = from_f<T>(0.f);
    return;
  }
  const T* in = x + r * D;
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += to_f(in[i]);
  const float mean = block_sum(s, sh) / D;
  float v = 0.f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) { float c = to_f(in[i]) - mean; v += c * c; }
  const float rstd = rsqrtf(block_sum(v, sh) / D + eps);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) out[i] = from_f<T>((to_f(in[i]) - mean) * rstd);
}

}  // namespace

// dtype codes shared with bindings_cuda.cpp: 0 fp32, 1 fp16, 2 bf16.
cudaError_t jepa_gather_rows_cuda(const void* x, const int64_t* rows, void* y, int64_t M, int64_t T,
                                  int64_t row_bytes, cudaStream_t stream) {
  copy_rows(false, x, rows, y, M, T, row_bytes, stream);
  return cudaGetLastError();
}

// `out` must be zeroed by the caller (cudaMemsetAsync): only the gathered rows are written here.
cudaError_t jepa_scatter_rows_cuda(const void* y, const int64_t* rows, void* out, int64_t M, int64_t T,
                                   int64_t row_bytes, cudaStream_t stream) {
  copy_rows(true, y, rows, out, M, T, row_bytes, stream);
  return cudaGetLastError();
}

cudaError_t jepa_gather_layer_norm_cuda(const void* x, const int64_t* rows, void* y, int64_t M, int64_t T,
                                        int64_t D, float eps, int dtype, cudaStream_t stream) {
  if (T == 0 || D == 0) return cudaSuccess;
  const int threads = D >= 1024 ? 256 : 128;
  switch (dtype) {
    case 0: gather_ln_kernel<float><<<(unsigned)T, threads, 0, stream>>>((const float*)x, rows, (float*)y, M, D, eps); break;
    case 1: gather_ln_kernel<__half><<<(unsigned)T, threads, 0, stream>>>((const __half*)x, rows, (__half*)y, M, D, eps); break;
    case 2: gather_ln_kernel<__nv_bfloat16><<<(unsigned)T, threads, 0, stream>>>(
                (const __nv_bfloat16*)x, rows, (__nv_bfloat16*)y, M, D, eps); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}
