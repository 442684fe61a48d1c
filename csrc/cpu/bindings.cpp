// The Python module `kernels._C`. Ops register themselves with TORCH_LIBRARY_FRAGMENT(jepa_cpp, ...)
// in their own .cpp files (gather.cpp, ema.cpp, block_attention.cpp, ...): importing this module
// loads the shared library and so every torch.ops.jepa_cpp.* op. Nothing else lives here.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "JEPA engine CPU ops: see torch.ops.jepa_cpp";
}
