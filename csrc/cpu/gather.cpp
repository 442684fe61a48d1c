// Masked-token gather / scatter / gather+layer_norm on CPU (registered as jepa_cpp::* ops).
// Rows are whole D-vectors, so the inner loop is a memcpy (vectorised by libc) or a tight float loop.
// Every index is bounds-checked before any write: a bad index raises, it never corrupts memory.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

void check_rows(const at::Tensor& rows, const char* op) {
  TORCH_CHECK(rows.device().is_cpu(), op, ": rows must be on CPU, got ", rows.device());
  TORCH_CHECK(rows.scalar_type() == at::kLong || rows.scalar_type() == at::kInt,
              op, ": rows must be int64 or int32, got ", rows.scalar_type());
  TORCH_CHECK(rows.dim() == 1, op, ": rows must be 1-D [T], got ", rows.sizes());
}

void check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.device().is_cpu(), op, ": input must be on CPU, got ", x.device());
  TORCH_CHECK(x.dim() == 2, op, ": input must be 2-D [M, D], got ", x.sizes());
  TORCH_CHECK(x.is_floating_point(), op, ": input must be floating point, got ", x.scalar_type());
}

// int64 copy of rows with every id checked against [0, M).
std::vector<int64_t> checked_rows(const at::Tensor& rows_in, int64_t M, const char* op) {
  auto rows = rows_in.contiguous();
  const int64_t T = rows.numel();
  std::vector<int64_t> out(T);
  int64_t bad = -1;
  if (rows.scalar_type() == at::kLong) {
    const int64_t* r = rows.data_ptr<int64_t>();
    for (int64_t t = 0; t < T; ++t) { out[t] = r[t]; if (r[t] < 0 || r[t] >= M) { bad = t; break; } }
  } else {
    const int32_t* r = rows.data_ptr<int32_t>();
    for (int64_t t = 0; t < T; ++t) { out[t] = r[t]; if (r[t] < 0 || r[t] >= M) { bad = t; break; } }
  }
  TORCH_CHECK_INDEX(bad < 0, op, ": index out of range: rows[", bad, "] = ", bad >= 0 ? out[bad] : 0,
              " but the input has ", M, " rows (B*N)");
  return out;
}

at::Tensor gather_rows(const at::Tensor& x_in, const at::Tensor& rows) {
  check_x(x_in, "jepa gather_rows");
  check_rows(rows, "jepa gather_rows");
  auto x = x_in.contiguous();
  const int64_t M = x.size(0), D = x.size(1);
  auto r = checked_rows(rows, M, "jepa gather_rows");
  const int64_t T = r.size();
  auto y = at::empty({T, D}, x.options());
  const size_t row_bytes = D * x.element_size();
  const char* src = static_cast<const char*>(x.data_ptr());
  char* dst = static_cast<char*>(y.data_ptr());
  // ~64 KiB of rows per task keeps scheduling overhead small against the copy.
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / std::max<size_t>(row_bytes, 1));
  at::parallel_for(0, T, grain, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) std::memcpy(dst + t * row_bytes, src + r[t] * row_bytes, row_bytes);
  });
  return y;
}

// Inverse of gather_rows: out[rows[t]] = y[t], every other row 0. Builds the inverse map first so
// every output row is written exactly once (no zero-fill pass, no atomics); duplicates raise.
at::Tensor scatter_rows(const at::Tensor& y_in, const at::Tensor& rows, int64_t M) {
  check_x(y_in, "jepa scatter_rows");
  check_rows(rows, "jepa scatter_rows");
  TORCH_CHECK(rows.numel() == y_in.size(0), "jepa scatter_rows: ", rows.numel(), " rows for ",
              y_in.size(0), " input rows");
  TORCH_CHECK(M >= 0, "jepa scatter_rows: negative output row count ", M);
  auto y = y_in.contiguous();
  const int64_t D = y.size(1);
  auto r = checked_rows(rows, M, "jepa scatter_rows");
  const int64_t T = r.size();
  std::vector<int64_t> inv(M, -1);
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(inv[r[t]] < 0, "jepa scatter_rows: row ", r[t], " appears twice (rows[", inv[r[t]],
                "] and rows[", t, "]); indices must be unique per sample");
    inv[r[t]] = t;
  }
  auto out = at::empty({M, D}, y.options());
  const size_t row_bytes = D * y.element_size();
  const char* src = static_cast<const char*>(y.data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const int64_t grain = std::max<int64_t>(1, (64 << 10) / std::max<size_t>(row_bytes, 1));
  at::parallel_for(0, M, grain, [&](int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) {
      if (inv[m] >= 0) std::memcpy(dst + m * row_bytes, src + inv[m] * row_bytes, row_bytes);
      else std::memset(dst + m * row_bytes, 0, row_bytes);
    }
  });
  return out;
}

// Sum with 8 independent accumulators: without -ffast-math the compiler will not reorder a single
// running sum, so this is what lets the reductions vectorise (3-4x on the LN kernel here).
template <typename acc_t>
inline acc_t sum8(const acc_t* v, int64_t D, acc_t shift) {
  acc_t p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8)
    for (int j = 0; j < 8; ++j) p[j] += v[d + j] - shift;
  acc_t s = 0;
  for (; d < D; ++d) s += v[d] - shift;
  return s + ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

template <typename acc_t>
inline acc_t sqsum8(const acc_t* v, int64_t D, acc_t mean) {
  acc_t p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8)
    for (int j = 0; j < 8; ++j) { acc_t c = v[d + j] - mean; p[j] += c * c; }
  acc_t s = 0;
  for (; d < D; ++d) { acc_t c = v[d] - mean; s += c * c; }
  return s + ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
}

template <typename scalar_t, typename acc_t>
void ln_rows(const scalar_t* x, scalar_t* y, const std::vector<int64_t>& r, int64_t D, double eps) {
  const int64_t T = r.size();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1));
  at::parallel_for(0, T, grain, [&](int64_t b, int64_t e) {
    std::vector<acc_t> buf(D);
    for (int64_t t = b; t < e; ++t) {
      const scalar_t* xr = x + r[t] * D;
      for (int64_t d = 0; d < D; ++d) buf[d] = static_cast<acc_t>(xr[d]);
      const acc_t mean = sum8<acc_t>(buf.data(), D, acc_t(0)) / D;
      // two-pass variance over the cached row: as accurate as torch's Welford
      const acc_t var = sqsum8<acc_t>(buf.data(), D, mean) / D;
      const acc_t rstd = acc_t(1) / std::sqrt(var + static_cast<acc_t>(eps));
      scalar_t* yr = y + t * D;
      for (int64_t d = 0; d < D; ++d) yr[d] = static_cast<scalar_t>((buf[d] - mean) * rstd);
    }
  });
}

// y[t] = layer_norm(x[rows[t]]) without affine params: normalises only the gathered rows.
at::Tensor gather_layer_norm(const at::Tensor& x_in, const at::Tensor& rows, double eps) {
  check_x(x_in, "jepa gather_layer_norm");
  check_rows(rows, "jepa gather_layer_norm");
  auto x = x_in.contiguous();
  const int64_t M = x.size(0), D = x.size(1);
  auto r = checked_rows(rows, M, "jepa gather_layer_norm");
  auto y = at::empty({(int64_t)r.size(), D}, x.options());
  if (r.empty() || D == 0) return y;
  switch (x.scalar_type()) {
    case at::kFloat: ln_rows<float, float>(x.data_ptr<float>(), y.data_ptr<float>(), r, D, eps); break;
    case at::kDouble: ln_rows<double, double>(x.data_ptr<double>(), y.data_ptr<double>(), r, D, eps); break;
    case at::kHalf: ln_rows<at::Half, float>(x.data_ptr<at::Half>(), y.data_ptr<at::Half>(), r, D, eps); break;
    case at::kBFloat16:
      ln_rows<at::BFloat16, float>(x.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(), r, D, eps); break;
    default: TORCH_CHECK(false, "jepa gather_layer_norm: unsupported dtype ", x.scalar_type());
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(jepa_cpp, m) {
  m.def("gather_rows(Tensor x, Tensor rows) -> Tensor", &gather_rows);
  m.def("scatter_rows(Tensor y, Tensor rows, int M) -> Tensor", &scatter_rows);
  m.def("gather_layer_norm(Tensor x, Tensor rows, float eps) -> Tensor", &gather_layer_norm);
}
