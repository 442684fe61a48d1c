// The Python module `kernels._C`. Ops register themselves with TORCH_LIBRARY_FRAGMENT(jepa_cpp, ...)
// in their own .cpp files (gather.cpp, ema.cpp, block_attention.cpp, ...): importing this module
// loads the shared library and so every torch.ops.jepa_cpp.* op. Functions on raw buffers, where a
// torch op's tensor wrapping would cost more than the work (yuv_resize.cpp), are bound here.
#include <torch/extension.h>

void bind_yuv_resize(pybind11::module& m);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "JEPA engine CPU ops: see torch.ops.jepa_cpp; plus yuv_resized_crop and normalize_u8 (kernels/yuv_resize.py)";
  bind_yuv_resize(m);
}
