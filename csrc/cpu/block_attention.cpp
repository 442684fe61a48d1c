// Block attention over packed sequences on CPU: one parallel region over the sequences.
//
//   out [Tq,H,Dh], lse [Tq,H] = torch.ops.jepa_cpp.block_attention_fwd(q, k, v, cu_q, cu_k, scale, fq, fk)
//   dq, dk, dv = torch.ops.jepa_cpp.block_attention_bwd(dout, q, k, v, out, lse, cu_q, cu_k, scale, fq, fk)
//
// Each sequence runs ATen's fused CPU flash-attention kernel (online softmax, fp32 accumulation, lse
// saved) on zero-copy [1, H, L, Dh] views of the packed rows. Sequences (or, when there are few,
// (sequence, head) pairs) are spread over the threads by an OpenMP dynamic schedule, longest first, so
// each call is a single-threaded kernel and the whole op opens one parallel region: with many short
// sequences the per-call fork/join of ATen's own parallelism (and its stalls when the cores are
// shared) is what dominates otherwise.
// `fq`/`fk` (frame ids) add a per-sequence additive mask: key frame <= query frame.
// A packing of equal-length sequences (no frame mask) is one [S, H, L, Dh] batch: one kernel call on
// views, no per-sequence copies. Outputs every row of which is written start uninitialised.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <exception>
#include <limits>
#include <numeric>
#include <optional>
#include <vector>

namespace {

using at::Tensor;

std::vector<int64_t> to_vec(const Tensor& cu) {
  auto c = cu.to(at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// Sequences with queries and keys, longest (q x k work) first.
std::vector<int64_t> live_order(const std::vector<int64_t>& cq, const std::vector<int64_t>& ck) {
  std::vector<int64_t> ids;
  for (size_t s = 0; s + 1 < cq.size(); ++s)
    if (cq[s + 1] > cq[s] && ck[s + 1] > ck[s]) ids.push_back((int64_t)s);
  std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) {
    return (cq[a + 1] - cq[a]) * (ck[a + 1] - ck[a]) > (cq[b + 1] - cq[b]) * (ck[b + 1] - ck[b]);
  });
  return ids;
}

// rows [a, b) and heads [h0, h1) of [T, H, D] -> a [1, h1 - h0, L, D] view
Tensor bhld(const Tensor& x, int64_t a, int64_t b, int64_t h0, int64_t h1) {
  return x.slice(0, a, b).slice(1, h0, h1).unsqueeze(0).transpose(1, 2);
}

std::optional<Tensor> frame_mask(const std::optional<Tensor>& fq, const std::optional<Tensor>& fk,
                                 int64_t q0, int64_t q1, int64_t k0, int64_t k1, at::ScalarType dt) {
  if (!fq.has_value()) return std::nullopt;
  auto keep = fq->slice(0, q0, q1).unsqueeze(1).ge(fk->slice(0, k0, k1).unsqueeze(0));
  auto m = at::zeros({1, 1, q1 - q0, k1 - k0}, at::TensorOptions().dtype(dt));
  return m.masked_fill_(keep.logical_not().view({1, 1, q1 - q0, k1 - k0}),
                        -std::numeric_limits<double>::infinity());
}

// Work items: (sequence, first head, end head). Many sequences: one item per sequence. Fewer than
// 4 per thread: one item per (sequence, head), so a few long sequences still fill every thread.
struct Item {
  int64_t s, h0, h1;
};

std::vector<Item> items(const std::vector<int64_t>& ids, int64_t H) {
  std::vector<Item> it;
  int64_t nt = at::get_num_threads();
  bool split = (int64_t)ids.size() < 4 * nt && nt > 1;
  for (int64_t s : ids) {
    if (split) {
      for (int64_t h = 0; h < H; ++h) it.push_back({s, h, h + 1});
    } else {
      it.push_back({s, 0, H});
    }
  }
  return it;
}

// Run f(item) for every item in one OpenMP region (dynamic schedule, longest first); each kernel
// inside runs single-threaded. One item, one thread, or a caller already in a parallel region: a plain
// loop whose kernels use the threads themselves.
template <class F>
void for_each_item(const std::vector<Item>& its, const F& f) {
  int nt = at::get_num_threads();
  if (its.size() < 2 || nt < 2 || at::in_parallel_region()) {
    for (const auto& it : its) f(it);
    return;
  }
  std::exception_ptr err = nullptr;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t i = 0; i < (int64_t)its.size(); ++i) {
    try {
      at::NoGradGuard no_grad;  // worker threads: no autograd bookkeeping for the per-item ops
      f(its[i]);
    } catch (...) {
#pragma omp critical
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
}

void check(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_q, const Tensor& cu_k) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "block_attention: q/k/v must be [T, H, Dh]");
  TORCH_CHECK(k.sizes() == v.sizes() && q.size(1) == k.size(1) && q.size(2) == k.size(2),
              "block_attention: q, k, v shapes disagree");
  TORCH_CHECK(cu_q.numel() == cu_k.numel() && cu_q.numel() >= 1,
              "block_attention: cu_seqlens_q and cu_seqlens_k must both be [S+1]");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "block_attention: q, k, v must share a dtype");
}

Tensor inner_contig(const Tensor& x) { return x.stride(-1) == 1 ? x : x.contiguous(); }

// S sequences of one length each for queries and keys, back to back from row 0, none empty: the whole
// packing is a [S, H, L, Dh] batch, run as one kernel call on views (no per-sequence calls, copies or
// zero fills). The predictor's sequences (context + targets = every token of a clip) are such a batch.
bool uniform(const std::vector<int64_t>& cq, const std::vector<int64_t>& ck) {
  int64_t S = (int64_t)cq.size() - 1;
  if (S < 1 || cq[0] != 0 || ck[0] != 0) return false;
  int64_t lq = cq[1] - cq[0], lk = ck[1] - ck[0];
  if (lq < 1 || lk < 1) return false;
  for (int64_t s = 1; s < S; ++s)
    if (cq[s + 1] - cq[s] != lq || ck[s + 1] - ck[s] != lk) return false;
  return true;
}

// [S * L, H, D] rows -> the [S, H, L, D] view the flash kernel takes
Tensor batch_view(const Tensor& x, int64_t S) {
  return x.view({S, x.size(0) / S, x.size(1), x.size(2)}).transpose(1, 2);
}

// [S, H, L, D] kernel output (memory [S, L, H, D]) -> [S * L, H, D] rows (a view for that memory)
Tensor rows_of(const Tensor& x_SHLD) {
  return x_SHLD.transpose(1, 2).reshape({-1, x_SHLD.size(1), x_SHLD.size(3)});
}

// every row of a side belongs to a sequence that runs: its output rows are all written
bool all_live(const std::vector<int64_t>& cq, const std::vector<int64_t>& ck, bool keys) {
  for (size_t s = 0; s + 1 < cq.size(); ++s) {
    bool has_q = cq[s + 1] > cq[s], has_k = ck[s + 1] > ck[s];
    if ((keys ? has_k : has_q) && !(has_q && has_k)) return false;
  }
  return true;
}

Tensor out_like(const Tensor& x, bool written) {
  return written ? at::empty_like(x, at::MemoryFormat::Contiguous) : at::zeros_like(x, at::MemoryFormat::Contiguous);
}

std::tuple<Tensor, Tensor> block_attention_fwd(const Tensor& q_, const Tensor& k_, const Tensor& v_,
                                               const Tensor& cu_q, const Tensor& cu_k, double scale,
                                               const std::optional<Tensor>& fq, const std::optional<Tensor>& fk) {
  check(q_, k_, v_, cu_q, cu_k);
  Tensor q = inner_contig(q_), k = inner_contig(k_), v = inner_contig(v_);
  auto cq = to_vec(cu_q), ck = to_vec(cu_k);
  TORCH_CHECK(cq.back() == q.size(0) && ck.back() == k.size(0), "block_attention: cu_seqlens must end at T");
  auto lse_dt = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  if (!fq.has_value() && uniform(cq, ck)) {
    int64_t S = (int64_t)cq.size() - 1;
    auto r = at::_scaled_dot_product_flash_attention_for_cpu(batch_view(q, S), batch_view(k, S), batch_view(v, S),
                                                             0.0, false, std::nullopt, scale);
    // lse [S, H, L] -> [S * L, H]
    return {rows_of(std::get<0>(r)), std::get<1>(r).transpose(1, 2).reshape({q.size(0), q.size(1)}).to(lse_dt)};
  }
  bool written = all_live(cq, ck, false);
  Tensor out = out_like(q, written);
  Tensor lse = written ? at::empty({q.size(0), q.size(1)}, q.options().dtype(lse_dt))
                       : at::zeros({q.size(0), q.size(1)}, q.options().dtype(lse_dt));
  for_each_item(items(live_order(cq, ck), q.size(1)), [&](const Item& it) {
    int64_t s = it.s, h0 = it.h0, h1 = it.h1;
    int64_t q0 = cq[s], q1 = cq[s + 1], k0 = ck[s], k1 = ck[s + 1];
    auto r = at::_scaled_dot_product_flash_attention_for_cpu(
        bhld(q, q0, q1, h0, h1), bhld(k, k0, k1, h0, h1), bhld(v, k0, k1, h0, h1), 0.0, false,
        frame_mask(fq, fk, q0, q1, k0, k1, q.scalar_type()), scale);
    out.slice(0, q0, q1).slice(1, h0, h1).copy_(std::get<0>(r)[0].transpose(0, 1));
    lse.slice(0, q0, q1).slice(1, h0, h1).copy_(std::get<1>(r)[0].transpose(0, 1));
  });
  return {out, lse};
}

std::tuple<Tensor, Tensor, Tensor> block_attention_bwd(
    const Tensor& dout_, const Tensor& q_, const Tensor& k_, const Tensor& v_, const Tensor& out_,
    const Tensor& lse, const Tensor& cu_q, const Tensor& cu_k, double scale, const std::optional<Tensor>& fq,
    const std::optional<Tensor>& fk) {
  check(q_, k_, v_, cu_q, cu_k);
  Tensor q = inner_contig(q_), k = inner_contig(k_), v = inner_contig(v_);
  Tensor dout = inner_contig(dout_), out = inner_contig(out_);
  auto cq = to_vec(cu_q), ck = to_vec(cu_k);
  if (!fq.has_value() && uniform(cq, ck)) {
    int64_t S = (int64_t)cq.size() - 1;
    auto g = at::_scaled_dot_product_flash_attention_for_cpu_backward(
        batch_view(dout, S), batch_view(q, S), batch_view(k, S), batch_view(v, S), batch_view(out, S),
        lse.view({S, q.size(0) / S, q.size(1)}).transpose(1, 2), 0.0, false, std::nullopt, scale);
    return {rows_of(std::get<0>(g)), rows_of(std::get<1>(g)), rows_of(std::get<2>(g))};
  }
  bool q_written = all_live(cq, ck, false), k_written = all_live(cq, ck, true);
  Tensor dq = out_like(q, q_written);
  Tensor dk = out_like(k, k_written);
  Tensor dv = out_like(v, k_written);
  for_each_item(items(live_order(cq, ck), q.size(1)), [&](const Item& it) {
    int64_t s = it.s, h0 = it.h0, h1 = it.h1;
    int64_t q0 = cq[s], q1 = cq[s + 1], k0 = ck[s], k1 = ck[s + 1];
    auto g = at::_scaled_dot_product_flash_attention_for_cpu_backward(
        bhld(dout, q0, q1, h0, h1), bhld(q, q0, q1, h0, h1), bhld(k, k0, k1, h0, h1), bhld(v, k0, k1, h0, h1),
        bhld(out, q0, q1, h0, h1), lse.slice(0, q0, q1).slice(1, h0, h1).transpose(0, 1).unsqueeze(0), 0.0, false,
        frame_mask(fq, fk, q0, q1, k0, k1, q.scalar_type()), scale);
    dq.slice(0, q0, q1).slice(1, h0, h1).copy_(std::get<0>(g)[0].transpose(0, 1));
    dk.slice(0, k0, k1).slice(1, h0, h1).copy_(std::get<1>(g)[0].transpose(0, 1));
    dv.slice(0, k0, k1).slice(1, h0, h1).copy_(std::get<2>(g)[0].transpose(0, 1));
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(jepa_cpp, m) {
  m.def("block_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor cu_q, Tensor cu_k, float scale, "
        "Tensor? fq, Tensor? fk) -> (Tensor, Tensor)",
        &block_attention_fwd);
  m.def("block_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor cu_q, "
        "Tensor cu_k, float scale, Tensor? fq, Tensor? fk) -> (Tensor, Tensor, Tensor)",
        &block_attention_bwd);
}
