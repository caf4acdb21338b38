// src/ops/moe.cpp — validated entry points of MoE routing and the expert FFN (spec §5).
#include "dsv4/ops/moe.hpp"

#include <cmath>
#include <numeric>

#include "common.hpp"
#include "dsv4/cpu/linear.hpp"
#include "dsv4/cpu/moe.hpp"
#include "dsv4/ref/moe.hpp"
#include "dsv4/ref/official.hpp"
#if DSV4_WITH_CUDA
#include "dsv4/cuda/moe.hpp"
#endif

namespace dsv4::ops {

namespace {

// Shape, dtype and aliasing checks of both routers on any device; returns E.
std::int64_t check_route_shapes(const char* op, const tensor_view& logits, const route_config& cfg,
                                const tensor_view& w, const tensor_view& idx) {
  DSV4_CHECK(logits.rank() == 2 && logits.dt() == dtype::f32, op, "logits ", logits.describe(),
             ": expected f32[T, E]");
  const std::int64_t T = logits.shape(0), E = logits.shape(1);
  DSV4_CHECK(cfg.topk >= 1 && cfg.topk <= E, op, "topk ", cfg.topk, " must be in [1, E = ", E, "]");
  DSV4_CHECK(std::isfinite(cfg.route_scale) && cfg.route_scale > 0.f, op, "route_scale ", cfg.route_scale,
             " must be finite and > 0");
  detail::check_tensor(op, "weights", w, dtype::f32, {T, cfg.topk});
  detail::check_tensor(op, "experts", idx, dtype::i32, {T, cfg.topk});
  detail::check_same_device(op, {&logits, &w, &idx});
  detail::check_aliasing(op, logits, w, false);
  detail::check_aliasing(op, logits, idx, false);
  detail::check_aliasing(op, w, idx, false);
  return E;
}

// The host routers' checks: the shapes, then every logit finite (read here).
std::int64_t check_route(const char* op, const tensor_view& logits, const route_config& cfg, const tensor_view& w,
                         const tensor_view& idx) {
  const std::int64_t E = check_route_shapes(op, logits, cfg, w, idx);
  detail::check_host_only(op, "MoE", {&logits, &w, &idx});
  const auto l = logits.as<const float, 2>();
  std::int64_t bad = 0;
  for (std::int64_t t = 0; t < logits.shape(0); ++t)
    for (std::int64_t e = 0; e < E; ++e) bad += !std::isfinite(l(t, e));
  DSV4_CHECK(bad == 0, op, "logits ", logits.describe(), " hold ", bad, " non-finite values");
  return E;
}

#if DSV4_WITH_CUDA
// The routers on CUDA tensors: shapes and devices checked here, values on the device (non-finite logits and ids
// out of range are reported through the status, dsv4/cuda/moe.hpp); a host backend asked for is an error.
std::int64_t check_route_cuda(const char* op, const tensor_view& logits, const route_config& cfg,
                              const tensor_view& w, const tensor_view& idx, const exec& ex) {
  const std::int64_t E = check_route_shapes(op, logits, cfg, w, idx);
  detail::choose_backend(op, ex, logits.dev(), nullptr);
  return E;
}
#endif

// token_ids i32|i64 [T], tid2eid i32|i64 [V, k].
void check_hash_inputs(const char* op, const tensor_view& logits, const route_config& cfg,
                       const tensor_view& token_ids, const tensor_view& tid2eid) {
  const std::int64_t T = logits.shape(0);
  DSV4_CHECK(token_ids.rank() == 1 && token_ids.shape(0) == T &&
                 (token_ids.dt() == dtype::i32 || token_ids.dt() == dtype::i64),
             op, "token_ids ", token_ids.describe(), ", expected i32|i64[", T, "]");
  DSV4_CHECK(tid2eid.rank() == 2 && tid2eid.shape(1) == cfg.topk &&
                 (tid2eid.dt() == dtype::i32 || tid2eid.dt() == dtype::i64),
             op, "tid2eid ", tid2eid.describe(), ", expected i32|i64[vocab, ", cfg.topk, "]");
}

std::int64_t read_index(const tensor_view& t, std::int64_t i, std::int64_t j) {
  if (t.dt() == dtype::i32) return t.rank() == 1 ? t.as<const std::int32_t, 1>()(i) : t.as<const std::int32_t, 2>()(i, j);
  return t.rank() == 1 ? t.as<const std::int64_t, 1>()(i) : t.as<const std::int64_t, 2>()(i, j);
}

}  // namespace

void moe_route(const tensor_view& logits, const route_config& cfg, const tensor_view& bias, const tensor_view& w,
               const tensor_view& idx, const exec& ex) {
  constexpr const char* op = "moe_route";
#if DSV4_WITH_CUDA
  if (logits.dev().is_cuda()) {
    const std::int64_t E = check_route_cuda(op, logits, cfg, w, idx, ex);
    const bool has_bias = !detail::is_absent(bias);
    if (has_bias) {
      DSV4_CHECK(bias.rank() == 1 && bias.dt() == dtype::f32 && bias.shape(0) == E && bias.stride(0) == 1, op,
                 "bias ", bias.describe(), ", expected contiguous f32[", E, "] or an empty view");
      detail::check_same_device(op, {&logits, &bias});
    }
    return cuda::moe_route(logits.as<const float, 2>(), cfg, has_bias ? static_cast<const float*>(bias.data()) : nullptr,
                           w.as<float, 2>(), idx.as<std::int32_t, 2>(), detail::on_device(op, ex, logits.dev()));
  }
#endif
  const std::int64_t E = check_route(op, logits, cfg, w, idx);
  std::vector<float> b;
  if (!detail::is_absent(bias)) {
    DSV4_CHECK(bias.rank() == 1 && bias.dt() == dtype::f32 && bias.shape(0) == E, op, "bias ", bias.describe(),
               ", expected f32[", E, "] or an empty view");
    DSV4_CHECK(bias.dev().is_cpu(), op, "bias ", bias.describe(), " must live on the host");
    const auto bv = bias.as<const float, 1>();
    for (std::int64_t e = 0; e < E; ++e) {
      DSV4_CHECK(std::isfinite(bv(e)), op, "bias[", e, "] = ", bv(e), " is not finite");
      b.push_back(bv(e));
    }
  }
  const char* declines = logits.shape(1) > 1 && logits.stride(1) != 1 ? "logits innermost stride is not 1" : nullptr;
  const backend be = detail::choose_backend(op, ex, logits.dev(), declines);
  const auto lv = logits.as<const float, 2>();
  if (be == backend::ref)
    ref::moe_route(lv, cfg, b.empty() ? nullptr : b.data(), w.as<float, 2>(), idx.as<std::int32_t, 2>());
  else
    cpu::moe_route(lv, cfg, b.empty() ? nullptr : b.data(), w.as<float, 2>(), idx.as<std::int32_t, 2>(), ex);
}

void moe_hash_route(const tensor_view& logits, const route_config& cfg, const tensor_view& token_ids,
                    const tensor_view& tid2eid, const tensor_view& w, const tensor_view& idx, const exec& ex) {
  constexpr const char* op = "moe_hash_route";
#if DSV4_WITH_CUDA
  if (logits.dev().is_cuda()) {
    check_route_cuda(op, logits, cfg, w, idx, ex);
    check_hash_inputs(op, logits, cfg, token_ids, tid2eid);
    detail::check_same_device(op, {&logits, &token_ids, &tid2eid});
    return cuda::moe_hash_route(logits.as<const float, 2>(), cfg, token_ids.data(), token_ids.stride(0),
                                token_ids.dt() == dtype::i32, tid2eid.data(), tid2eid.shape(0), tid2eid.stride(0),
                                tid2eid.stride(1), tid2eid.dt() == dtype::i32, w.as<float, 2>(),
                                idx.as<std::int32_t, 2>(), detail::on_device(op, ex, logits.dev()));
  }
#endif
  const std::int64_t E = check_route(op, logits, cfg, w, idx);
  const std::int64_t T = logits.shape(0);
  check_hash_inputs(op, logits, cfg, token_ids, tid2eid);
  DSV4_CHECK(token_ids.dev().is_cpu() && tid2eid.dev().is_cpu(), op, "token_ids and tid2eid must live on the host");
  const std::int64_t V = tid2eid.shape(0);
  auto wv = w.as<float, 2>();
  auto iv = idx.as<std::int32_t, 2>();
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t tok = read_index(token_ids, t, 0);
    DSV4_CHECK(tok >= 0 && tok < V, op, "token id ", tok, " at position ", t, " is outside [0, ", V,
               ") (tid2eid ", tid2eid.describe(), ")");
    for (int i = 0; i < cfg.topk; ++i) {
      const std::int64_t e = read_index(tid2eid, tok, i);
      DSV4_CHECK(e >= 0 && e < E, op, "tid2eid[", tok, "][", i, "] = ", e, " is not an expert id in [0, ", E, ")");
      iv(t, i) = static_cast<std::int32_t>(e);
    }
  }
  const char* declines = logits.shape(1) > 1 && logits.stride(1) != 1 ? "logits innermost stride is not 1" : nullptr;
  const backend be = detail::choose_backend(op, ex, logits.dev(), declines);
  // Scores of the whole row (the weights only need the chosen ones; softmax needs the row anyway).
  std::vector<float> s(static_cast<std::size_t>(T * E));
  const view<float, 2> sv{s.data(), {T, E}, {E, 1}};
  const auto lv = logits.as<const float, 2>();
  if (be == backend::ref) {
    std::vector<float> row(static_cast<std::size_t>(E));
    for (std::int64_t t = 0; t < T; ++t) {
      for (std::int64_t e = 0; e < E; ++e) row[e] = lv(t, e);
      ref::score_row(row.data(), E, cfg.score, sv.row(t));
    }
  } else
    cpu::moe_scores(lv, cfg.score, sv, ex);
  std::vector<std::int32_t> id(static_cast<std::size_t>(cfg.topk));
  std::vector<float> wt(id.size());
  for (std::int64_t t = 0; t < T; ++t) {
    for (int i = 0; i < cfg.topk; ++i) id[i] = iv(t, i);
    ref::route_weights(sv.row(t), id.data(), cfg.topk, cfg, wt.data());
    for (int i = 0; i < cfg.topk; ++i) wv(t, i) = wt[i];
  }
}

namespace {

// The official policy's MoE (official-numerics.md §1 X1-X5), the reference driver (the CPU backend schedules the same
// per-token arithmetic in parallel: cpu::moe_ffn_official). Per expert in ascending id, its tokens gathered through
// ref::official::expert with the reference's promoted linear; each token's output added to its fp32 accumulator in
// ascending expert id, then the shared expert's (no route weight), then y = bf16(acc). Every step is per token, so a
// token's output does not depend on the batch.
std::int64_t moe_official_ref(const float* x, std::int64_t T, std::int64_t D, view<const float, 2> wv,
                              view<const std::int32_t, 2> iv, const std::vector<ref::ffn_ref>& rr,
                              const std::vector<char>& bound, const ref::ffn_ref* shared, float limit, float* acc) {
  auto lin = [](const float* xr, std::int64_t rows, std::int64_t ldx, const ref::weight_ref& w, float* y,
                std::int64_t ldy) {
    return ref::official::linear(view<const float, 2>{xr, {rows, w.k}, {ldx, 1}}, w,
                                 view<float, 2>{y, {rows, w.n}, {ldy, 1}});
  };
  const std::int64_t k = iv.size(1), E = static_cast<std::int64_t>(rr.size());
  std::int64_t bad = 0;
  std::fill(acc, acc + T * D, 0.f);
  std::vector<float> xs, g, u, o;
  std::vector<std::int64_t> tok;
  std::vector<float> rw;
  auto run = [&](const ref::ffn_ref& f) {
    const std::int64_t n = static_cast<std::int64_t>(tok.size());
    xs.resize(static_cast<std::size_t>(n * D));
    for (std::int64_t i = 0; i < n; ++i) std::copy(x + tok[i] * D, x + (tok[i] + 1) * D, xs.begin() + i * D);
    o.resize(static_cast<std::size_t>(n * D));
    bad += ref::official::expert(lin, f, xs.data(), n, D, rw.data(), limit, o.data(), g, u);
    for (std::int64_t i = 0; i < n; ++i)
      for (std::int64_t d = 0; d < D; ++d) acc[tok[i] * D + d] += o[static_cast<std::size_t>(i * D + d)];
  };
  for (std::int64_t e = 0; e < E; ++e) {
    if (!bound[static_cast<std::size_t>(e)]) continue;
    tok.clear();
    rw.clear();
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t i = 0; i < k; ++i)
        if (iv(t, i) == e) {
          tok.push_back(t);
          rw.push_back(wv(t, i));
        }
    if (!tok.empty()) run(rr[static_cast<std::size_t>(e)]);
  }
  if (shared) {
    tok.resize(static_cast<std::size_t>(T));
    std::iota(tok.begin(), tok.end(), std::int64_t{0});
    rw.assign(static_cast<std::size_t>(T), 1.f);
    run(*shared);
  }
  round_bf16(acc, T * D);
  return bad;
}

}  // namespace

namespace {
// One expert's three weights validated as [I, D], [I, D] (w3 like w1) and [D, I]; names for messages.
ref::ffn_ref bind_ffn(const char* op, const ffn_weights& f, const char* n1, const char* n2, const char* n3,
                      std::int64_t e, std::int64_t D, bool allow_device = false) {
  ref::ffn_ref r;
  r.w1 = detail::bind_weight(op, n1, e, f.w1, -1, D, allow_device);
  r.w3 = detail::bind_weight(op, n3, e, f.w3, r.w1.n, D, allow_device);
  r.w2 = detail::bind_weight(op, n2, e, f.w2, D, r.w1.n, allow_device);
  return r;
}

#if DSV4_WITH_CUDA
// Every expert bound (the CUDA path cannot read the routing to bind only the used ones); all on x's device.
std::vector<ref::ffn_ref> bind_all(const char* op, std::span<const ffn_weights> routed, const ffn_weights* shared,
                                   std::int64_t D, ref::ffn_ref* sr, const tensor_view& x) {
  auto bind = [&](const ffn_weights& f, const char* n1, const char* n2, const char* n3, std::int64_t e) {
    const ref::ffn_ref r = bind_ffn(op, f, n1, n2, n3, e, D, true);
    for (const qweight* q : {&f.w1, &f.w2, &f.w3}) {
      DSV4_CHECK(q->weight.dev() == x.dev(), op, describe(*q), " lives on ", q->weight.dev(), ", x on ", x.dev());
      DSV4_CHECK(detail::weight_is_cpu_friendly(*q), op, describe(*q), ": innermost stride must be 1");
    }
    return r;
  };
  std::vector<ref::ffn_ref> rr;
  for (std::size_t e = 0; e < routed.size(); ++e)
    rr.push_back(bind(routed[e], "routed w1", "routed w2", "routed w3", static_cast<std::int64_t>(e)));
  if (shared) *sr = bind(*shared, "shared w1", "shared w2", "shared w3", -1);
  return rr;
}

void moe_ffn_cuda(const tensor_view& x, const tensor_view& w, const tensor_view& idx,
                  std::span<const ffn_weights> routed, const ffn_weights* shared, float swiglu_limit,
                  const tensor_view& y, const exec& ex, numerics nm) {
  constexpr const char* op = "moe_ffn";
  DSV4_CHECK(nm == numerics::fp32, op, "the CUDA backend implements numerics fp32 only so far");
  detail::check_same_device(op, {&x, &w, &idx, &y});
  detail::choose_backend(op, ex, x.dev(), nullptr);
  for (const tensor_view* t : {&x, &w, &idx}) detail::check_aliasing(op, *t, y, false);
  ref::ffn_ref sr;
  const std::vector<ref::ffn_ref> rr = bind_all(op, routed, shared, x.shape(1), &sr, x);
  std::int64_t bad = 0;
  visit_dtype<float, bf16>(x.dt(), op, [&]<class TX>(std::type_identity<TX>) {
    visit_dtype<float, bf16>(y.dt(), op, [&]<class TY>(std::type_identity<TY>) {
      bad = cuda::moe_ffn(x.as<const TX, 2>(), w.as<const float, 2>(), idx.as<const std::int32_t, 2>(), rr,
                          shared ? &sr : nullptr, swiglu_limit, y.as<TY, 2>(), detail::on_device(op, ex, x.dev()));
    });
  });
  DSV4_CHECK(bad == 0, op, bad, " expert weights decode to NaN (NaN codes, or codes under a 0xFF scale)");
}
#endif
}  // namespace

std::size_t moe_ffn_workspace_bytes(std::int64_t T, std::int64_t k, std::span<const ffn_weights> routed,
                                    const ffn_weights* shared) {
  constexpr const char* op = "moe_ffn_workspace_bytes";
  DSV4_CHECK(!routed.empty(), op, "no routed experts");
  DSV4_CHECK(T >= 0 && k >= 0, op, "T = ", T, " and k = ", k, " must be >= 0");
  const std::int64_t D = routed[0].w1.weight.shape(1), I = routed[0].w1.weight.shape(0);
#if DSV4_WITH_CUDA
  return cuda::moe_ffn_workspace_bytes(T, k, static_cast<std::int64_t>(routed.size()), D, I, shared != nullptr,
                                       shared ? shared->w1.weight.shape(0) : 0);
#else
  (void)D, (void)I, (void)shared;
  return 0;  // only the CUDA backend takes scratch
#endif
}

void moe_ffn(const tensor_view& x, const tensor_view& w, const tensor_view& idx, std::span<const ffn_weights> routed,
             const ffn_weights* shared, float swiglu_limit, const tensor_view& y, const exec& ex, numerics nm) {
  constexpr const char* op = "moe_ffn";
  DSV4_CHECK(x.rank() == 2, op, "x ", x.describe(), ": expected [T, D]");
  const std::int64_t T = x.shape(0), D = x.shape(1);
  DSV4_CHECK(y.rank() == 2 && y.shape(0) == T && y.shape(1) == D, op, "y ", y.describe(), ", expected [", T, ", ",
             D, "]");
  DSV4_CHECK(idx.rank() == 2 && idx.dt() == dtype::i32 && idx.shape(0) == T, op, "experts ", idx.describe(),
             ", expected i32[", T, ", k]");
  const std::int64_t k = idx.shape(1);
  detail::check_tensor(op, "weights", w, dtype::f32, {T, k});
  DSV4_CHECK(std::isfinite(swiglu_limit) && swiglu_limit >= 0.f, op, "swiglu_limit ", swiglu_limit,
             " must be finite and >= 0 (0 = no clamp)");
  DSV4_CHECK(k == 0 || !routed.empty(), op, "experts are selected (k = ", k, ") but no routed experts are given");
#if DSV4_WITH_CUDA
  if (x.dev().is_cuda()) return moe_ffn_cuda(x, w, idx, routed, shared, swiglu_limit, y, ex, nm);
#endif
  detail::check_host_only(op, "MoE", {&x, &w, &idx, &y});
  for (const tensor_view* t : {&x, &w, &idx}) detail::check_aliasing(op, *t, y, false);
  const std::int64_t E = static_cast<std::int64_t>(routed.size());
  const auto iv = idx.as<const std::int32_t, 2>();
  const auto wv = w.as<const float, 2>();
  // Bind (validate) only the experts this batch uses: E can be 384 and a decode step touches k of them.
  std::vector<ref::ffn_ref> rr(routed.size());
  std::vector<char> bound(routed.size(), 0);
  std::int64_t I = -1;
  auto bind = [&](const ffn_weights& f, const char* n1, const char* n2, const char* n3, std::int64_t e) {
    return bind_ffn(op, f, n1, n2, n3, e, D);
  };
  bool strided = false;
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t i = 0; i < k; ++i) {
      const std::int64_t e = iv(t, i);
      DSV4_CHECK(e >= 0 && e < E, op, "experts[", t, ", ", i, "] = ", e, " is not an expert id in [0, ", E, ")");
      DSV4_CHECK(std::isfinite(wv(t, i)), op, "weights[", t, ", ", i, "] = ", wv(t, i), " is not finite");
      if (!bound[e]) {
        rr[e] = bind(routed[e], "routed w1", "routed w2", "routed w3", e);
        bound[e] = 1;
        DSV4_CHECK(I < 0 || rr[e].w1.n == I, op, "routed expert ", e, " has inter size ", rr[e].w1.n, ", expected ",
                   I, " like the others");
        I = rr[e].w1.n;
        for (const qweight* q : {&routed[e].w1, &routed[e].w2, &routed[e].w3})
          strided = strided || !detail::weight_is_cpu_friendly(*q);
      }
    }
  ref::ffn_ref sr;
  if (shared) {
    sr = bind(*shared, "shared w1", "shared w2", "shared w3", -1);
    for (const qweight* q : {&shared->w1, &shared->w2, &shared->w3})
      strided = strided || !detail::weight_is_cpu_friendly(*q);
  }
  const backend be = detail::choose_backend(op, ex, x.dev(), strided ? "a weight's innermost stride is not 1" : nullptr);
  std::int64_t bad = 0;
  visit_dtype<float, bf16>(x.dt(), op, [&]<class TX>(std::type_identity<TX>) {
    visit_dtype<float, bf16>(y.dt(), op, [&]<class TY>(std::type_identity<TY>) {
      const auto xv = x.as<const TX, 2>();
      const auto yv = y.as<TY, 2>();
      if (nm == numerics::official) {
        std::vector<float> xf(static_cast<std::size_t>(T * D)), acc(xf.size());
        for (std::int64_t t = 0; t < T; ++t)
          for (std::int64_t d = 0; d < D; ++d) xf[static_cast<std::size_t>(t * D + d)] = to_f32(xv(t, d));
        bad = be == backend::ref ? moe_official_ref(xf.data(), T, D, wv, iv, rr, bound, shared ? &sr : nullptr,
                                                    swiglu_limit, acc.data())
                                 : cpu::moe_ffn_official(xf.data(), T, D, wv, iv, rr, shared ? &sr : nullptr,
                                                         swiglu_limit, acc.data(), ex);
        for (std::int64_t t = 0; t < T; ++t)
          for (std::int64_t d = 0; d < D; ++d) yv(t, d) = from_f32<TY>(acc[static_cast<std::size_t>(t * D + d)]);
        return;
      }
      bad = be == backend::ref ? ref::moe_ffn(xv, wv, iv, rr, shared ? &sr : nullptr, swiglu_limit, yv)
                               : cpu::moe_ffn(xv, wv, iv, rr, shared ? &sr : nullptr, swiglu_limit, yv, ex);
    });
  });
  if (bad == 0) return;
  // Name the first expert weight that holds a NaN (an error path only: decoding every used expert again is fine).
  std::vector<float> row;
  auto nan_in = [&](const qweight& q, const ref::weight_ref& r) -> std::string {
    row.resize(static_cast<std::size_t>(r.k));
    for (std::int64_t n = 0; n < r.n; ++n)
      if (ref::decode_row(r, n, 0, r.k, row.data()) > 0) return describe(q) + " row " + std::to_string(n);
    return {};
  };
  std::string where;
  for (std::int64_t e = 0; e < E && where.empty(); ++e)
    if (bound[e])
      for (auto [q, r] : {std::pair{&routed[e].w1, &rr[e].w1}, std::pair{&routed[e].w2, &rr[e].w2},
                          std::pair{&routed[e].w3, &rr[e].w3}})
        if (where.empty()) where = nan_in(*q, *r);
  if (where.empty() && shared)
    for (auto [q, r] : {std::pair{&shared->w1, &sr.w1}, std::pair{&shared->w2, &sr.w2}, std::pair{&shared->w3, &sr.w3}})
      if (where.empty()) where = nan_in(*q, *r);
  DSV4_FAIL(op, bad, " expert weights decode to NaN (NaN codes, or codes under a 0xFF scale); first in ", where);
}

}  // namespace dsv4::ops
