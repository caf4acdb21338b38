// src/ops/attention.cpp — validated entry points of the indexer scores, top-k selection and sparse attention.
#include "dsv4/ops/attention.hpp"

#include <cmath>

#include "common.hpp"
#include "dsv4/cpu/attention.hpp"
#include "dsv4/ref/attention.hpp"

namespace dsv4::ops {

namespace {

bool inner_contiguous(std::initializer_list<const tensor_view*> ts) {
  for (const tensor_view* t : ts)
    if (t->rank() > 0 && t->stride(-1) != 1 && t->shape(-1) > 1) return false;
  return true;
}

// count/visible [T] i32|i64 with every value in [0, E]; calls f with its typed view.
template <class F>
void with_counts(const char* op, const char* name, const tensor_view& c, std::int64_t T, std::int64_t E, F&& f) {
  DSV4_CHECK(c.rank() == 1 && c.shape(0) == T, op, name, " is ", c.describe(), ", expected i32|i64[", T, "]");
  visit_dtype<std::int32_t, std::int64_t>(c.dt(), op, [&]<class TC>(std::type_identity<TC>) {
    const auto v = c.as<const TC, 1>();
    for (std::int64_t t = 0; t < T; ++t)
      DSV4_CHECK(v(t) >= 0 && static_cast<std::int64_t>(v(t)) <= E, op, name, "[", t, "] = ", v(t),
                 " outside [0, ", E, "]");
    f(v);
  });
}

}  // namespace

void indexer_scores(const tensor_view& q, const tensor_view& k, const tensor_view& w, const tensor_view& visible,
                    const tensor_view& scores, const exec& ex) {
  constexpr const char* op = "indexer_scores";
  DSV4_CHECK(q.rank() == 3 && q.dt() == dtype::f32, op, "q is ", q.describe(), ", expected f32[T, h, c]");
  const std::int64_t T = q.shape(0), H = q.shape(1), C = q.shape(2);
  DSV4_CHECK(k.rank() == 2 && k.dt() == dtype::f32 && k.shape(1) == C, op, "k is ", k.describe(),
             ", expected f32[E, ", C, "]");
  const std::int64_t E = k.shape(0);
  detail::check_tensor(op, "w", w, dtype::f32, {T, H});
  detail::check_tensor(op, "scores", scores, dtype::f32, {T, E});
  detail::check_same_device(op, {&q, &k, &w, &visible, &scores});
  detail::check_host_only(op, "attention", {&q});
  for (const tensor_view* in : {&q, &k, &w}) detail::check_aliasing(op, *in, scores, false);
  const backend be = detail::choose_backend(op, ex, q.dev(),
                                            inner_contiguous({&q, &k, &w, &scores}) ? nullptr
                                                                                    : "innermost stride is not 1");
  with_counts(op, "visible", visible, T, E, [&]<class TV>(view<const TV, 1> v) {
    const auto qv = q.as<const float, 3>();
    const auto kv = k.as<const float, 2>();
    const auto wv = w.as<const float, 2>();
    const auto sv = scores.as<float, 2>();
    if (be == backend::ref) ref::indexer_scores(qv, kv, wv, v, sv);
    else cpu::indexer_scores(qv, kv, wv, v, sv, ex);
  });
}

void topk_select(const tensor_view& scores, const tensor_view& count, const tensor_view& idx, const exec& ex) {
  constexpr const char* op = "topk_select";
  DSV4_CHECK(scores.rank() == 2 && scores.dt() == dtype::f32, op, "scores is ", scores.describe(),
             ", expected f32[T, E]");
  const std::int64_t T = scores.shape(0), E = scores.shape(1);
  DSV4_CHECK(idx.rank() == 2 && idx.dt() == dtype::i32 && idx.shape(0) == T, op, "idx is ", idx.describe(),
             ", expected i32[", T, ", k]");
  detail::check_same_device(op, {&scores, &count, &idx});
  detail::check_host_only(op, "attention", {&scores});
  const backend be = detail::choose_backend(op, ex, scores.dev(),
                                            inner_contiguous({&scores, &idx}) ? nullptr : "innermost stride is not 1");
  with_counts(op, "count", count, T, E, [&]<class TC>(view<const TC, 1> c) {
    const auto sv = scores.as<const float, 2>();
    std::int64_t nan = 0;
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t s = 0; s < static_cast<std::int64_t>(c(t)); ++s) nan += std::isnan(sv(t, s)) ? 1 : 0;
    DSV4_CHECK(nan == 0, op, nan, " NaN scores in the counted range");
    const auto iv = idx.as<std::int32_t, 2>();
    if (be == backend::ref) ref::topk_select(sv, c, iv);
    else cpu::topk_select(sv, c, iv, ex);
  });
}

void sparse_attention(const tensor_view& q, const tensor_view& kv_window, const tensor_view& kv_compressed,
                      const tensor_view& idx, const tensor_view& sink, float scale, const tensor_view& out,
                      const exec& ex) {
  constexpr const char* op = "sparse_attention";
  DSV4_CHECK(q.rank() == 3 && q.dt() == dtype::f32, op, "q is ", q.describe(), ", expected f32[T, H, D]");
  const std::int64_t T = q.shape(0), H = q.shape(1), D = q.shape(2);
  DSV4_CHECK(kv_window.rank() == 2 && kv_window.dt() == dtype::f32 && kv_window.shape(1) == D, op, "kv_window is ",
             kv_window.describe(), ", expected f32[n_w, ", D, "]");
  const bool no_comp = detail::is_absent(kv_compressed);
  DSV4_CHECK(no_comp || (kv_compressed.rank() == 2 && kv_compressed.dt() == dtype::f32 &&
                         kv_compressed.shape(1) == D),
             op, "kv_compressed is ", kv_compressed.describe(), ", expected f32[n_c, ", D, "]");
  DSV4_CHECK(idx.rank() == 2 && idx.dt() == dtype::i32 && idx.shape(0) == T, op, "idx is ", idx.describe(),
             ", expected i32[", T, ", K]");
  detail::check_tensor(op, "sink", sink, dtype::f32, {H});
  detail::check_tensor(op, "out", out, dtype::f32, {T, H, D});
  DSV4_CHECK(std::isfinite(scale), op, "scale ", scale, " is not finite");
  detail::check_same_device(op, {&q, &kv_window, &idx, &sink, &out});
  detail::check_host_only(op, "attention", {&q});
  detail::check_aliasing(op, q, out, false);
  detail::check_aliasing(op, kv_window, out, false);
  if (!no_comp) detail::check_aliasing(op, kv_compressed, out, false);
  const std::int64_t n = kv_window.shape(0) + (no_comp ? 0 : kv_compressed.shape(0)), K = idx.shape(1);
  const auto iv = idx.as<const std::int32_t, 2>();
  for (std::int64_t t = 0; t < T; ++t) {
    std::int64_t valid = 0;
    for (std::int64_t i = 0; i < K; ++i) {
      const std::int32_t e = iv(t, i);
      DSV4_CHECK(e >= -1 && e < n, op, "idx[", t, ", ", i, "] = ", e, " outside [-1, ", n, ")");
      valid += e >= 0;
    }
    DSV4_CHECK(valid > 0, op, "row ", t, " of idx has no valid entry (the window always holds the token itself)");
  }
  const bool contiguous = inner_contiguous({&q, &kv_window, &idx, &out}) && (no_comp || inner_contiguous({&kv_compressed}));
  const backend be = detail::choose_backend(op, ex, q.dev(), contiguous ? nullptr : "innermost stride is not 1");
  const auto qv = q.as<const float, 3>();
  const auto kw = kv_window.as<const float, 2>();
  view<const float, 2> kc;  // empty: no compressed rows
  kc.stride[0] = D;
  kc.stride[1] = 1;
  if (!no_comp) kc = kv_compressed.as<const float, 2>();
  const auto sv = sink.as<const float, 1>();
  const auto ov = out.as<float, 3>();
  if (be == backend::ref) ref::sparse_attention(qv, kw, kc, iv, sv, scale, ov);
  else cpu::sparse_attention(qv, kw, kc, iv, sv, scale, ov, ex);
}

}  // namespace dsv4::ops
