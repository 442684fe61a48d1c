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
// Bound as a plain pybind11 function on buffers (PyAV planes, numpy arrays): a call costs ~1 us,
// where wrapping three planes as tensors cost more than converting a 64x64 crop. No threads: the
// data loader's workers are the parallelism.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace py = pybind11;

// The row conversion is compiled twice, for AVX2 and for the baseline, and picked when the library
// loads (GCC function multiversioning): 8 floats a step and native integer min/max, 224 px rows 2.2x
// faster than the SSE2 build that runs everywhere. Only on x86-64 GCC builds; elsewhere one version.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define JEPA_AVX2_CLONE __attribute__((target_clones("avx2", "default")))
#else
#define JEPA_AVX2_CLONE
#endif

namespace {

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

// Two rows of one plane resized to the output width, kept while the output walks down the source.
struct RowCache {
  const Plane& plane;
  const std::vector<int64_t>& x0;  // source column per output column (already flipped when asked)
  const std::vector<int64_t>& x1;
  const std::vector<float>& wx;
  std::vector<float> buf;
  int64_t held[2] = {-1, -1};

  RowCache(const Plane& p, const std::vector<int64_t>& a, const std::vector<int64_t>& b, const std::vector<float>& w)
      : plane(p), x0(a), x1(b), wx(w), buf(2 * a.size()) {}

  const float* row(int64_t r) {
    const int64_t n = static_cast<int64_t>(x0.size());
    if (held[0] == r) return buf.data();
    if (held[1] == r) return buf.data() + n;
    const int slot = held[0] < held[1] ? 0 : 1;  // rows only move down: replace the upper one
    const uint8_t* s = plane.data + r * plane.stride;
    float* d = buf.data() + slot * n;
    for (int64_t j = 0; j < n; ++j) {
      const float a = static_cast<float>(s[x0[j]]);
      d[j] = a + wx[j] * (static_cast<float>(s[x1[j]]) - a);
    }
    held[slot] = r;
    return d;
  }
};

struct Coeffs {
  float yo, ys, rv, gu, gv, bu;
};

// One output row: blend two resized rows of each plane, convert, round, clamp. The pointers do not
// alias (restrict): without that the uint8 stores could alias the float rows and the loop stays scalar.
JEPA_AVX2_CLONE
void convert_row(const float* __restrict__ y0, const float* __restrict__ y1, const float* __restrict__ u0,
                 const float* __restrict__ u1, const float* __restrict__ v0, const float* __restrict__ v1, float w1,
                 const Coeffs c, uint8_t* __restrict__ dR, uint8_t* __restrict__ dG, uint8_t* __restrict__ dB,
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

}  // namespace

// coeffs: (y_offset, y_scale, r_v, g_u, g_v, b_u): R = s(Y-o) + r_v(V-128), G = s(Y-o) - g_u(U-128)
// - g_v(V-128), B = s(Y-o) + b_u(U-128). box: (top, left, h, w) in luma pixels. out: uint8 [3, T, H, W]
// (any strides); frame t of it is written, columns reversed when flip.
void yuv_resized_crop(const py::buffer& y_buf, const py::buffer& u_buf, const py::buffer& v_buf,
                      std::vector<int64_t> geometry, int64_t shift_x, int64_t shift_y, std::vector<double> coeffs,
                      std::vector<int64_t> box, at::Tensor out, int64_t t, bool flip) {
  TORCH_CHECK(geometry.size() == 6, "yuv_resized_crop: geometry is (rows, cols, stride) of Y then of U/V, got ",
              geometry.size(), " values");
  TORCH_CHECK(coeffs.size() == 6, "yuv_resized_crop: coeffs needs 6 values, got ", coeffs.size());
  for (double c : coeffs) {  // keeps every converted value far inside int range
    TORCH_CHECK(std::abs(c) <= 1024.0, "yuv_resized_crop: colour coefficient ", c, " is out of range (|c| <= 1024)");
  }
  TORCH_CHECK(box.size() == 4, "yuv_resized_crop: box is (top, left, h, w), got ", box.size(), " values");
  TORCH_CHECK((shift_x == 0 || shift_x == 1) && (shift_y == 0 || shift_y == 1),
              "yuv_resized_crop: chroma shifts must be 0 or 1, got ", shift_x, ", ", shift_y);
  const Plane Y = plane_of(y_buf, geometry[0], geometry[1], geometry[2], "Y");
  const Plane U = plane_of(u_buf, geometry[3], geometry[4], geometry[5], "U");
  const Plane V = plane_of(v_buf, geometry[3], geometry[4], geometry[5], "V");
  TORCH_CHECK(U.rows == V.rows && U.cols == V.cols, "yuv_resized_crop: U is ", U.rows, "x", U.cols, " but V is ",
              V.rows, "x", V.cols);
  TORCH_CHECK(U.rows == (Y.rows + shift_y) >> shift_y && U.cols == (Y.cols + shift_x) >> shift_x,
              "yuv_resized_crop: chroma planes ", U.rows, "x", U.cols, " do not match luma ", Y.rows, "x", Y.cols,
              " subsampled by (", shift_y, ", ", shift_x, ")");
  const int64_t top = box[0], left = box[1], h = box[2], w = box[3];
  TORCH_CHECK(h > 0 && w > 0 && top >= 0 && left >= 0 && top + h <= Y.rows && left + w <= Y.cols,
              "yuv_resized_crop: box (top=", top, ", left=", left, ", h=", h, ", w=", w, ") is not inside the ",
              Y.rows, "x", Y.cols, " frame");
  TORCH_CHECK(out.scalar_type() == at::kByte && out.dim() == 4 && out.size(0) == 3 && out.device().is_cpu(),
              "yuv_resized_crop: out must be a CPU uint8 tensor [3, T, H, W], got ", out.scalar_type(), " ",
              out.sizes());
  TORCH_CHECK(t >= 0 && t < out.size(1), "yuv_resized_crop: frame ", t, " is outside out's ", out.size(1), " frames");
  const int64_t OH = out.size(2), OW = out.size(3);
  TORCH_CHECK(OH > 0 && OW > 0, "yuv_resized_crop: empty output size ", OH, "x", OW);

  // column tables, flipped here so that the output rows are written in order
  const std::vector<Axis> rows = axis_table(h, OH, top), cols = axis_table(w, OW, left);
  std::vector<int64_t> lx0(OW), lx1(OW), cx0(OW), cx1(OW);
  std::vector<float> wx(OW);
  for (int64_t j = 0; j < OW; ++j) {
    const Axis& a = cols[flip ? OW - 1 - j : j];
    lx0[j] = a.i0, lx1[j] = a.i1, cx0[j] = a.i0 >> shift_x, cx1[j] = a.i1 >> shift_x, wx[j] = a.w1;
  }
  RowCache yr(Y, lx0, lx1, wx), ur(U, cx0, cx1, wx), vr(V, cx0, cx1, wx);

  const Coeffs c{static_cast<float>(coeffs[0]), static_cast<float>(coeffs[1]), static_cast<float>(coeffs[2]),
                 static_cast<float>(coeffs[3]), static_cast<float>(coeffs[4]), static_cast<float>(coeffs[5])};
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

void bind_yuv_resize(py::module& m) {
  m.def("yuv_resized_crop", &yuv_resized_crop, py::arg("y"), py::arg("u"), py::arg("v"), py::arg("geometry"),
        py::arg("shift_x"), py::arg("shift_y"), py::arg("coeffs"), py::arg("box"), py::arg("out"), py::arg("t"),
        py::arg("flip"),
        "Planar YUV frame -> bilinear-resized RGB crop written into out[:, t] (uint8 [3, T, H, W]); "
        "see kernels/yuv_resize.py");
}
