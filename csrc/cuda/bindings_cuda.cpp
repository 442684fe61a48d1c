// `kernels._C_cuda`: binds the pure-CUDA launchers (gather.cu, ema.cu) as torch.ops.jepa_cuda.* ops.
// Compiled only in CUDA builds (setup.py), by the host compiler, so torch's CUDA headers are fine here.
#include <torch/extension.h>
#include <torch/library.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <vector>

cudaError_t jepa_gather_rows_cuda(const void*, const int64_t*, void*, int64_t, int64_t, int64_t, cudaStream_t);
cudaError_t jepa_scatter_rows_cuda(const void*, const int64_t*, void*, int64_t, int64_t, int64_t, cudaStream_t);
cudaError_t jepa_gather_layer_norm_cuda(const void*, const int64_t*, void*, int64_t, int64_t, int64_t, float, int,
                                        cudaStream_t);
cudaError_t jepa_ema_cuda(float* const*, const void* const*, const int64_t*, int, int, const float*, cudaStream_t);

namespace {

void check(const at::Tensor& x, const at::Tensor& rows, const char* op) {
  TORCH_CHECK(x.is_cuda() && rows.is_cuda(), op, ": tensors must be on CUDA");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), op, ": input must be a contiguous [M, D] tensor");
  TORCH_CHECK(rows.scalar_type() == at::kLong && rows.dim() == 1, op, ": rows must be int64 [T]");
}

int code(at::ScalarType t, const char* op) {
  switch (t) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", t);
  }
  return -1;
}

at::Tensor gather_rows(const at::Tensor& x, const at::Tensor& rows_in) {
  check(x, rows_in, "jepa_cuda gather_rows");
  c10::cuda::CUDAGuard g(x.device());
  auto rows = rows_in.contiguous();
  auto y = at::empty({rows.numel(), x.size(1)}, x.options());
  C10_CUDA_CHECK(jepa_gather_rows_cuda(x.data_ptr(), rows.data_ptr<int64_t>(), y.data_ptr(), x.size(0), rows.numel(),
                                       x.size(1) * x.element_size(), at::cuda::getCurrentCUDAStream()));
  return y;
}

at::Tensor scatter_rows(const at::Tensor& y, const at::Tensor& rows_in, int64_t M) {
  check(y, rows_in, "jepa_cuda scatter_rows");
  c10::cuda::CUDAGuard g(y.device());
  auto rows = rows_in.contiguous();
  auto out = at::zeros({M, y.size(1)}, y.options());
  C10_CUDA_CHECK(jepa_scatter_rows_cuda(y.data_ptr(), rows.data_ptr<int64_t>(), out.data_ptr(), M, rows.numel(),
                                        y.size(1) * y.element_size(), at::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor gather_layer_norm(const at::Tensor& x, const at::Tensor& rows_in, double eps) {
  check(x, rows_in, "jepa_cuda gather_layer_norm");
  c10::cuda::CUDAGuard g(x.device());
  auto rows = rows_in.contiguous();
  auto y = at::empty({rows.numel(), x.size(1)}, x.options());
  C10_CUDA_CHECK(jepa_gather_layer_norm_cuda(x.data_ptr(), rows.data_ptr<int64_t>(), y.data_ptr(), x.size(0),
                                             rows.numel(), x.size(1), (float)eps,
                                             code(x.scalar_type(), "jepa_cuda gather_layer_norm"),
                                             at::cuda::getCurrentCUDAStream()));
  return y;
}

// One launch per source dtype (usually one): the list goes to the multi-tensor kernel as pointers.
void ema_(at::TensorList targets, at::TensorList sources, const at::Tensor& momentum) {
  TORCH_CHECK(targets.size() == sources.size(), "jepa_cuda ema_: list lengths differ");
  if (targets.empty()) return;
  c10::cuda::CUDAGuard g(targets[0].device());
  auto m = momentum.to(targets[0].device(), at::kFloat).reshape({1});
  for (int dt = 0; dt < 3; ++dt) {
    std::vector<float*> t;
    std::vector<const void*> s;
    std::vector<int64_t> n;
    for (size_t i = 0; i < targets.size(); ++i) {
      TORCH_CHECK(targets[i].is_cuda() && targets[i].scalar_type() == at::kFloat && targets[i].is_contiguous(),
                  "jepa_cuda ema_: target ", i, " must be a contiguous fp32 CUDA tensor");
      TORCH_CHECK(sources[i].is_contiguous() && sources[i].numel() == targets[i].numel(),
                  "jepa_cuda ema_: source ", i, " must be contiguous with the target's size");
      if (code(sources[i].scalar_type(), "jepa_cuda ema_") != dt) continue;
      t.push_back(targets[i].data_ptr<float>());
      s.push_back(sources[i].data_ptr());
      n.push_back(targets[i].numel());
    }
    if (!t.empty())
      C10_CUDA_CHECK(jepa_ema_cuda(t.data(), s.data(), n.data(), (int)t.size(), dt, m.data_ptr<float>(),
                                   at::cuda::getCurrentCUDAStream()));
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(jepa_cuda, m) {
  m.def("gather_rows(Tensor x, Tensor rows) -> Tensor", &gather_rows);
  m.def("scatter_rows(Tensor y, Tensor rows, int M) -> Tensor", &scatter_rows);
  m.def("gather_layer_norm(Tensor x, Tensor rows, float eps) -> Tensor", &gather_layer_norm);
  m.def("ema_(Tensor(a!)[] targets, Tensor[] sources, Tensor momentum) -> ()", &ema_);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.doc() = "JEPA engine CUDA ops: see torch.ops.jepa_cuda"; }
