// Planar YUV frame -> RGB crop resized to the output size, in one pass at the output's resolution.
//
// The decode path used to convert every decoded frame to full-size RGB (swscale), stack the frames,
// then cut the crop and resize it (torch): three passes over full-size frames for a 64x64 output.
// Here Y, U and V are each resized bilinearly straight from the decoder's planes (only the source
// pixels the output samples are read) and converted to RGB at the output's resolution; nothing
// full-size is written. Semantics (kernels/yuv_resize.py holds the torch reference):
//   - chroma: each luma position takes its nearest chroma sample (swscale's unscaled conversion), so U
//     and V are sampled at the same source positions and weights as Y;
//   - resize: bilinear, align_corners=False, no antialias (torch's F.interpolate), per plane;
//   - colour: a 3x3 YUV->RGB matrix with offsets on the resized planes, rounded to nearest, clamped to
//     [0, 255]; optional horizontal flip.
// The matrix is affine, so converting before or after the (linear) resize gives the same value except
// where a neighbour is out of gamut and the clamp would have cut it first, and for rounding.
// Bound as a plain pybind11 function on buffers (PyAV planes, numpy arrays), one call per clip:
// wrapping three planes as tensors cost more than converting a 64x64 crop. No threads: the data
// loader's workers are the parallelism.
// normalize_u8 is the last step of the same path: a batch of uint8 clips to normalised float32 in one
// pass, where the consumer of the batch needs floats.
#include <torch/extension.h>

#include "cpu_isa.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <vector>

namespace py = pybind11;

// The row loops are compiled twice, for AVX2 and for the baseline (SSE2, what every x86-64 has), and
// one is picked per call by use_avx2(): 8 floats a step and native integer min/max, 224 px rows 2.2x
// faster than the baseline. JEPA_CPU_BASELINE=1 in the environment picks the baseline on any CPU, so
// that the path CPUs without AVX2 run is tested on those that have it. Elsewhere (not x86-64 GCC/clang)
// one version.
#if defined(__GNUC__) && defined(__x86_64__)
#define JEPA_X86_ISA 1
#endif

namespace {

#ifdef JEPA_X86_ISA
bool use_avx2() {
  static const bool avx2 = __builtin_cpu_supports("avx2") && !jepa_cpu::baseline_forced();
  return avx2;
}
// name(params): name##_body compiled for AVX2 and for the baseline, dispatched by use_avx2(). The body is
// always inlined, so each copy is vectorised for its own instruction set.
#define JEPA_ISA_DISPATCH(name, params, args)                              \
  __attribute__((target("avx2"))) void name##_avx2 params { name##_body args; } \
  void name##_base params { name##_body args; }                            \
  void name params {                                                       \
    if (use_avx2()) return name##_avx2 args;                               \
    name##_base args;                                                      \
  }
#else
bool use_avx2() { return false; }
#define JEPA_ISA_DISPATCH(name, params, args) \
  void name params { name##_body args; }
#endif
#define JEPA_BODY inline __attribute__((always_inline))

struct Plane {
  const uint8_t* data;
  int64_t rows, cols, stride;
};

// A plane from a buffer: a 2-D array (rows, cols and the row stride come from it; columns must be
// contiguous) or a flat buffer with the given rows/cols/stride (a PyAV plane), checked to hold them.
Plane plane_of(const py::buffer& b, int64_t rows, int64_t cols, int64_t stride, const char* name) {
  py::buffer_info info = b.request();
  TORCH_CHECK(info.itemsize == 1, "yuv_resized_crop: plane ", name, " must hold bytes (uint8), got item size ",
              info.itemsize);
  Plane p{static_cast<const uint8_t*>(info.ptr), rows, cols, stride};
  if (info.ndim == 2) {
    TORCH_CHECK(info.strides[1] == 1, "yuv_resized_crop: plane ", name, " columns are not contiguous (stride ",
                info.strides[1], ")");
    p.rows = info.shape[0];
    p.cols = info.shape[1];
    p.stride = info.strides[0];
  } else {
    TORCH_CHECK(info.ndim == 1, "yuv_resized_crop: plane ", name, " must be 1-D or 2-D, got ", info.ndim, "-D");
    TORCH_CHECK(rows > 0 && cols > 0 && stride >= cols, "yuv_resized_crop: plane ", name, " has bad geometry rows=",
                rows, " cols=", cols, " stride=", stride);
    TORCH_CHECK(info.size >= (rows - 1) * stride + cols, "yuv_resized_crop: plane ", name, " holds ", info.size,
                " bytes, fewer than ", rows, " rows of ", cols, " at stride ", stride);
  }
  return p;
}

struct Axis {  // one output coordinate's two source samples (absolute) and the weight of the second
  int64_t i0, i1;
  float w1;
};

// torch's bilinear source index, align_corners=False: src = (dst + 0.5) * in/out - 0.5, clamped at 0.
std::vector<Axis> axis_table(int64_t in, int64_t out, int64_t offset) {
  std::vector<Axis> t(out);
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  for (int64_t o = 0; o < out; ++o) {
    float src = std::max((static_cast<float>(o) + 0.5f) * scale - 0.5f, 0.0f);
    int64_t i0 = std::min(static_cast<int64_t>(src), in - 1);
    int64_t i1 = i0 + (i0 < in - 1 ? 1 : 0);
    t[o] = {i0 + offset, i1 + offset, src - static_cast<float>(i0)};
  }
  return t;
}

// round to nearest, clamp to [0, 255]; integer min/max so that the loop vectorises (float min/max with
// IEEE semantics compiles to branches here, 5x slower on real pixels)
inline uint8_t to_level(float v) { return static_cast<uint8_t>(std::min(std::max(static_cast<int>(v + 0.5f), 0), 255)); }

// d[j] = a + w[j] * (b - a), a = f[x0[j]], b = f[x1[j]]: the horizontal half of the bilinear resize.
// Eight columns a step with AVX2's float gathers where the CPU has them (the compiler does not
// vectorise these gathers itself); the same multiply and add either way, so the same floats.
void lerp_gather_scalar(const float* f, const int32_t* x0, const int32_t* x1, const float* w, float* d, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const float a = f[x0[j]];
    d[j] = a + w[j] * (f[x1[j]] - a);
  }
}

#ifdef JEPA_X86_ISA
__attribute__((target("avx2"))) void lerp_gather_avx2(const float* f, const int32_t* x0, const int32_t* x1,
                                                      const float* w, float* d, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 a = _mm256_i32gather_ps(f, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x0 + j)), 4);
    const __m256 b = _mm256_i32gather_ps(f, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x1 + j)), 4);
    _mm256_storeu_ps(d + j, _mm256_add_ps(a, _mm256_mul_ps(_mm256_loadu_ps(w + j), _mm256_sub_ps(b, a))));
  }
  lerp_gather_scalar(f, x0 + j, x1 + j, w + j, d + j, n - j);
}
#endif

void lerp_gather(const float* f, const int32_t* x0, const int32_t* x1, const float* w, float* d, int64_t n) {
#ifdef JEPA_X86_ISA
  if (use_avx2()) return lerp_gather_avx2(f, x0, x1, w, d, n);
#endif
  lerp_gather_scalar(f, x0, x1, w, d, n);
}

// Two rows of one plane resized to the output width, kept while the output walks down the source.
// A new row's columns [lo, hi) (all the output samples) become floats first, then are gathered.
struct RowCache {
  const Plane& plane;
  std::vector<int32_t> x0, x1;  // source column - lo per output column (already flipped when asked)
  const std::vector<float>& wx;
  int64_t lo;
  std::vector<float> src, buf;
  int64_t held[2] = {-1, -1};

  RowCache(const Plane& p, const std::vector<int64_t>& a, const std::vector<int64_t>& b, const std::vector<float>& w)
      : plane(p), x0(a.size()), x1(b.size()), wx(w) {
    lo = *std::min_element(a.begin(), a.end());
    const int64_t hi = *std::max_element(b.begin(), b.end()) + 1;
    for (size_t j = 0; j < a.size(); ++j) x0[j] = static_cast<int32_t>(a[j] - lo), x1[j] = static_cast<int32_t>(b[j] - lo);
    src.resize(hi - lo);
    buf.resize(2 * a.size());
  }

  const float* row(int64_t r) {
    const int64_t n = static_cast<int64_t>(x0.size());
    if (held[0] == r) return buf.data();
    if (held[1] == r) return buf.data() + n;
    const int slot = held[0] < held[1] ? 0 : 1;  // rows only move down: replace the upper one
    const uint8_t* s = plane.data + r * plane.stride + lo;
    const int64_t m = static_cast<int64_t>(src.size());
    for (int64_t k = 0; k < m; ++k) src[k] = static_cast<float>(s[k]);
    float* d = buf.data() + slot * n;
    lerp_gather(src.data(), x0.data(), x1.data(), wx.data(), d, n);
    held[slot] = r;
    return d;
  }
};

struct Coeffs {
  float yo, ys, rv, gu, gv, bu;
};

// One output row: blend two resized rows of each plane, convert, round, clamp. The pointers do not
// alias (restrict): without that the uint8 stores could alias the float rows and the loop stays scalar.
JEPA_BODY void convert_row_body(const float* __restrict__ y0, const float* __restrict__ y1,
                                const float* __restrict__ u0, const float* __restrict__ u1,
                                const float* __restrict__ v0, const float* __restrict__ v1, float w1, const Coeffs c,
                                uint8_t* __restrict__ dR, uint8_t* __restrict__ dG, uint8_t* __restrict__ dB,
                                int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const float l = c.ys * (y0[j] + w1 * (y1[j] - y0[j]) - c.yo);
    const float cu = u0[j] + w1 * (u1[j] - u0[j]) - 128.0f;
    const float cv = v0[j] + w1 * (v1[j] - v0[j]) - 128.0f;
    dR[j] = to_level(l + c.rv * cv);
    dG[j] = to_level(l - c.gu * cu - c.gv * cv);
    dB[j] = to_level(l + c.bu * cu);
  }
}
JEPA_ISA_DISPATCH(convert_row,
                  (const float* __restrict__ y0, const float* __restrict__ y1, const float* __restrict__ u0,
                   const float* __restrict__ u1, const float* __restrict__ v0, const float* __restrict__ v1, float w1,
                   const Coeffs c, uint8_t* __restrict__ dR, uint8_t* __restrict__ dG, uint8_t* __restrict__ dB,
                   int64_t n),
                  (y0, y1, u0, u1, v0, v1, w1, c, dR, dG, dB, n))

// One frame: its box of Y, U, V resized to out's size, converted, written into out[:, t].
void convert_frame(const Plane& Y, const Plane& U, const Plane& V, int64_t shift_x, int64_t shift_y, const Coeffs& c,
                   const int64_t* box, bool flip, at::Tensor& out, int64_t t) {
  TORCH_CHECK(U.rows == V.rows && U.cols == V.cols, "yuv_resized_crop: U is ", U.rows, "x", U.cols, " but V is ",
              V.rows, "x", V.cols);
  TORCH_CHECK(U.rows == (Y.rows + shift_y) >> shift_y && U.cols == (Y.cols + shift_x) >> shift_x,
              "yuv_resized_crop: chroma planes ", U.rows, "x", U.cols, " do not match luma ", Y.rows, "x", Y.cols,
              " subsampled by (", shift_y, ", ", shift_x, ")");
  const int64_t top = box[0], left = box[1], h = box[2], w = box[3];
  TORCH_CHECK(h > 0 && w > 0 && top >= 0 && left >= 0 && top + h <= Y.rows && left + w <= Y.cols,
              "yuv_resized_crop: box (top=", top, ", left=", left, ", h=", h, ", w=", w, ") is not inside the ",
              Y.rows, "x", Y.cols, " frame");
  const int64_t OH = out.size(2), OW = out.size(3);

  // column tables, flipped here so that the output rows are written in order
  const std::vector<Axis> rows = axis_table(h, OH, top), cols = axis_table(w, OW, left);
  std::vector<int64_t> lx0(OW), lx1(OW), cx0(OW), cx1(OW);
  std::vector<float> wx(OW);
  for (int64_t j = 0; j < OW; ++j) {
    const Axis& a = cols[flip ? OW - 1 - j : j];
    lx0[j] = a.i0, lx1[j] = a.i1, cx0[j] = a.i0 >> shift_x, cx1[j] = a.i1 >> shift_x, wx[j] = a.w1;
  }
  RowCache yr(Y, lx0, lx1, wx), ur(U, cx0, cx1, wx), vr(V, cx0, cx1, wx);

  const int64_t sc = out.stride(0), sy = out.stride(2), sx = out.stride(3);
  uint8_t* base = out.data_ptr<uint8_t>() + t * out.stride(1);
  std::vector<uint8_t> tmp(sx == 1 ? 0 : 3 * OW);  // staging only when out's columns are strided
  for (int64_t i = 0; i < OH; ++i) {
    const Axis& a = rows[i];
    const float w1 = a.w1;
    const float *y0 = yr.row(a.i0), *y1 = yr.row(a.i1);
    const float *u0 = ur.row(a.i0 >> shift_y), *u1 = ur.row(a.i1 >> shift_y);
    const float *v0 = vr.row(a.i0 >> shift_y), *v1 = vr.row(a.i1 >> shift_y);
    uint8_t *dR, *dG, *dB;
    if (sx == 1) {
      dR = base + i * sy, dG = dR + sc, dB = dG + sc;
    } else {
      dR = tmp.data(), dG = dR + OW, dB = dG + OW;
    }
    convert_row(y0, y1, u0, u1, v0, v1, w1, c, dR, dG, dB, OW);
    if (sx != 1) {
      for (int ch = 0; ch < 3; ++ch) {
        uint8_t* d = base + ch * sc + i * sy;
        for (int64_t j = 0; j < OW; ++j) d[j * sx] = tmp[ch * OW + j];
      }
    }
  }
}

// out[j] = in[j] * s + b: the product rounded, then the sum (torch's mul_ then add_, the same floats)
JEPA_BODY void affine_u8_row_body(const uint8_t* __restrict__ in, float* __restrict__ out, int64_t n, float s,
                                  float b) {
  for (int64_t j = 0; j < n; ++j) {
    const float p = static_cast<float>(in[j]) * s;
    out[j] = p + b;
  }
}
JEPA_ISA_DISPATCH(affine_u8_row,
                  (const uint8_t* __restrict__ in, float* __restrict__ out, int64_t n, float s, float b),
                  (in, out, n, s, b))

}  // namespace

// out = x * scale[c] + bias[c], c the index along dim `channel_dim` (negative, from the end), for a
// contiguous uint8 x and a contiguous float32 out of its shape: one pass over the batch (a conversion,
// then a multiply, then an add are three over the float one). Parallel over (leading index, channel)
// slabs with torch's intra-op threads.
void normalize_u8(const at::Tensor& x, at::Tensor out, const std::vector<double>& scale,
                  const std::vector<double>& bias, int64_t channel_dim) {
  TORCH_CHECK(x.scalar_type() == at::kByte && x.device().is_cpu() && x.is_contiguous(),
              "normalize_u8: x must be a contiguous CPU uint8 tensor, got ", x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(out.scalar_type() == at::kFloat && out.device().is_cpu() && out.is_contiguous() &&
              out.sizes() == x.sizes(), "normalize_u8: out must be a contiguous CPU float32 tensor of x's shape ",
              x.sizes(), ", got ", out.scalar_type(), " ", out.sizes());
  TORCH_CHECK(channel_dim < 0 && -channel_dim <= x.dim(), "normalize_u8: channel_dim ", channel_dim,
              " is not a dim of a ", x.dim(), "-D tensor counted from the end");
  const int64_t cd = x.dim() + channel_dim, C = x.size(cd);
  TORCH_CHECK(static_cast<int64_t>(scale.size()) == C && static_cast<int64_t>(bias.size()) == C, "normalize_u8: ",
              C, " channels but ", scale.size(), " scales and ", bias.size(), " biases");
  int64_t inner = 1;
  for (int64_t d = cd + 1; d < x.dim(); ++d) inner *= x.size(d);
  const int64_t slabs = x.numel() / std::max<int64_t>(inner, 1);
  const uint8_t* src = x.data_ptr<uint8_t>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, slabs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t c = k % C;
      affine_u8_row(src + k * inner, dst + k * inner, inner, static_cast<float>(scale[c]),
                    static_cast<float>(bias[c]));
    }
  });
}

// Frames i = 0..T-1 (T = len(ys)): planes ys[i], us[i], vs[i] with geometry[6i:6i+6] = (rows, cols,
// stride) of Y then of U/V (all 0 for 2-D arrays, which carry their own), box boxes[4i:4i+4] = (top,
// left, h, w) in luma pixels, written into out[:, t0 + i] (out: uint8 [3, T', H, W], any strides), columns
// reversed where flips[i]. coeffs: (y_offset, y_scale, r_v, g_u, g_v, b_u): R = s(Y-o) + r_v(V-128),
// G = s(Y-o) - g_u(U-128) - g_v(V-128), B = s(Y-o) + b_u(U-128). One call per clip: the per-frame
// Python work of a call per frame cost about as much as converting a 224 px frame.
void yuv_resized_crop(const std::vector<py::buffer>& ys, const std::vector<py::buffer>& us,
                      const std::vector<py::buffer>& vs, const std::vector<int64_t>& geometry, int64_t shift_x,
                      int64_t shift_y, const std::vector<double>& coeffs, const std::vector<int64_t>& boxes,
                      const std::vector<bool>& flips, at::Tensor out, int64_t t0) {
  const int64_t T = static_cast<int64_t>(ys.size());
  TORCH_CHECK(static_cast<int64_t>(us.size()) == T && static_cast<int64_t>(vs.size()) == T,
              "yuv_resized_crop: ", T, " Y planes but ", us.size(), " U and ", vs.size(), " V planes");
  TORCH_CHECK(static_cast<int64_t>(geometry.size()) == 6 * T, "yuv_resized_crop: geometry is (rows, cols, stride) "
              "of Y then of U/V per frame: ", 6 * T, " values for ", T, " frames, got ", geometry.size());
  TORCH_CHECK(static_cast<int64_t>(boxes.size()) == 4 * T, "yuv_resized_crop: boxes are (top, left, h, w) per "
              "frame: ", 4 * T, " values for ", T, " frames, got ", boxes.size());
  TORCH_CHECK(static_cast<int64_t>(flips.size()) == T, "yuv_resized_crop: ", flips.size(), " flips for ", T,
              " frames");
  TORCH_CHECK(coeffs.size() == 6, "yuv_resized_crop: coeffs needs 6 values, got ", coeffs.size());
  for (double c : coeffs) {  // keeps every converted value far inside int range
    TORCH_CHECK(std::abs(c) <= 1024.0, "yuv_resized_crop: colour coefficient ", c, " is out of range (|c| <= 1024)");
  }
  TORCH_CHECK((shift_x == 0 || shift_x == 1) && (shift_y == 0 || shift_y == 1),
              "yuv_resized_crop: chroma shifts must be 0 or 1, got ", shift_x, ", ", shift_y);
  TORCH_CHECK(out.scalar_type() == at::kByte && out.dim() == 4 && out.size(0) == 3 && out.device().is_cpu(),
              "yuv_resized_crop: out must be a CPU uint8 tensor [3, T, H, W], got ", out.scalar_type(), " ",
              out.sizes());
  TORCH_CHECK(t0 >= 0 && t0 + T <= out.size(1), "yuv_resized_crop: frames ", t0, "..", t0 + T - 1,
              " are outside out's ", out.size(1), " frames");
  TORCH_CHECK(out.size(2) > 0 && out.size(3) > 0, "yuv_resized_crop: empty output size ", out.size(2), "x",
              out.size(3));
  const Coeffs c{static_cast<float>(coeffs[0]), static_cast<float>(coeffs[1]), static_cast<float>(coeffs[2]),
                 static_cast<float>(coeffs[3]), static_cast<float>(coeffs[4]), static_cast<float>(coeffs[5])};
  for (int64_t i = 0; i < T; ++i) {
    const int64_t* g = geometry.data() + 6 * i;
    const Plane Y = plane_of(ys[i], g[0], g[1], g[2], "Y");
    const Plane U = plane_of(us[i], g[3], g[4], g[5], "U");
    const Plane V = plane_of(vs[i], g[3], g[4], g[5], "V");
    convert_frame(Y, U, V, shift_x, shift_y, c, boxes.data() + 4 * i, flips[i], out, t0 + i);
  }
}

void bind_yuv_resize(py::module& m) {
  m.def("yuv_resized_crop", &yuv_resized_crop, py::arg("ys"), py::arg("us"), py::arg("vs"), py::arg("geometry"),
        py::arg("shift_x"), py::arg("shift_y"), py::arg("coeffs"), py::arg("boxes"), py::arg("flips"), py::arg("out"),
        py::arg("t0"),
        "Planar YUV frames -> bilinear-resized RGB crops written into out[:, t0 + i] (uint8 [3, T, H, W]); "
        "see kernels/yuv_resize.py");
  m.def("normalize_u8", &normalize_u8, py::arg("x"), py::arg("out"), py::arg("scale"), py::arg("bias"),
        py::arg("channel_dim"), "out = x * scale[c] + bias[c] (uint8 -> float32, one pass); see kernels/yuv_resize.py");
  m.def("yuv_resize_isa", [] { return use_avx2() ? "avx2" : "baseline"; },
        "The instruction set the row loops above run with here: avx2 or baseline (JEPA_CPU_BASELINE=1 forces it)");
}
