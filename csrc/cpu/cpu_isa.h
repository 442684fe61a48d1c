// What the CPU kernels with several instruction-set builds (yuv_resize.cpp, gelu.cpp) share when they
// pick one at run time.
#pragma once

#include <cstdlib>

namespace jepa_cpu {

// JEPA_CPU_BASELINE=1 in the environment picks the baseline build (SSE2, what every x86-64 has) on any
// CPU, so that the path of CPUs without AVX2 is tested on those that have it.
inline bool baseline_forced() { return std::getenv("JEPA_CPU_BASELINE") != nullptr; }

}  // namespace jepa_cpu
