// dsv4/ref/moe.hpp — scalar reference of MoE routing and SwiGLU experts (spec §5), fp32 numerics policy (§10).
//
//   score:    sqrtsoftplus: sqrt(softplus(l)), softplus(l) = l for l > 20 (torch's threshold) else log1p(exp(l));
//             sigmoid: 1/(1+exp(-l)); softmax: exp(l - max)/Σ over the row.
//   select:   top-k of score + bias; higher first, equal -> lower index first (dsv4 tie rule, spec §10).
//   weights:  score[idx] / Σ_i score[idx_i] (not for softmax), then × route_scale. No eps (spec §5).
//   expert:   g = min(w1·x, L), u = clamp(w3·x, -L, L), h = silu(g)·u·weight (routing weight BEFORE w2), out = w2·h.
//   combine:  Σ routed outputs in ascending expert index (duplicates in slot order), then + shared, in fp32.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "dsv4/ops/moe.hpp"
#include "dsv4/ref/linear.hpp"

namespace dsv4::ref {

inline float softplus(float l) noexcept { return l > 20.f ? l : std::log1p(std::exp(l)); }

// scores [E] from logits [E].
inline void score_row(const float* l, std::int64_t E, ops::score_func f, float* s) noexcept {
  switch (f) {
    case ops::score_func::sqrtsoftplus:
      for (std::int64_t e = 0; e < E; ++e) s[e] = std::sqrt(softplus(l[e]));
      break;
    case ops::score_func::sigmoid:
      for (std::int64_t e = 0; e < E; ++e) s[e] = 1.f / (1.f + std::exp(-l[e]));
      break;
    case ops::score_func::softmax: {
      float mx = l[0], sum = 0.f;
      for (std::int64_t e = 1; e < E; ++e) mx = std::max(mx, l[e]);
      for (std::int64_t e = 0; e < E; ++e) sum += (s[e] = std::exp(l[e] - mx));
      for (std::int64_t e = 0; e < E; ++e) s[e] /= sum;
      break;
    }
  }
}

// idx[0:k) = the k largest of v[0:E), largest first, equal values -> lower index first. O(E·k) selection.
inline void topk(const float* v, std::int64_t E, int k, std::int32_t* idx) noexcept {
  for (int i = 0; i < k; ++i) {
    std::int64_t best = -1;
    for (std::int64_t e = 0; e < E; ++e) {
      bool taken = false;
      for (int j = 0; j < i; ++j) taken = taken || idx[j] == e;
      if (!taken && (best < 0 || v[e] > v[best])) best = e;  // strict >: the first (lowest) index keeps a tie
    }
    idx[i] = static_cast<std::int32_t>(best);
  }
}

// Routing weights for chosen experts idx[0:k) from scores s.
inline void route_weights(const float* s, const std::int32_t* idx, int k, const ops::route_config& cfg,
                          float* w) noexcept {
  float sum = 0.f;
  for (int i = 0; i < k; ++i) sum += s[idx[i]];
  for (int i = 0; i < k; ++i)
    w[i] = (cfg.score == ops::score_func::softmax ? s[idx[i]] : s[idx[i]] / sum) * cfg.route_scale;
}

// Score routing of every token: logits [T, E], bias [E] (data null = none) -> w [T, k], idx [T, k].
inline void moe_route(view<const float, 2> logits, const ops::route_config& cfg, const float* bias,
                      view<float, 2> w, view<std::int32_t, 2> idx) {
  const std::int64_t E = logits.size(1);
  const int k = cfg.topk;
  std::vector<float> l(static_cast<std::size_t>(E)), s(l.size()), sel(l.size());
  std::vector<std::int32_t> id(static_cast<std::size_t>(k));
  std::vector<float> wt(static_cast<std::size_t>(k));
  for (std::int64_t t = 0; t < logits.size(0); ++t) {
    for (std::int64_t e = 0; e < E; ++e) l[e] = logits(t, e);
    score_row(l.data(), E, cfg.score, s.data());
    for (std::int64_t e = 0; e < E; ++e) sel[e] = bias ? s[e] + bias[e] : s[e];
    topk(sel.data(), E, k, id.data());
    route_weights(s.data(), id.data(), k, cfg, wt.data());
    for (int i = 0; i < k; ++i) {
      idx(t, i) = id[i];
      w(t, i) = wt[i];
    }
  }
}

// Slots of one token in ascending expert order (stable: duplicates keep slot order).
inline void slot_order(const std::int32_t* experts, int k, int* order) noexcept {
  std::iota(order, order + k, 0);
  std::stable_sort(order, order + k, [&](int a, int b) { return experts[a] < experts[b]; });
}

// The SwiGLU element: silu(min(g, L)) · clamp(u, -L, L) · weight, in fp32; L = 0 means no clamp. The comparisons
// are std::min's and std::clamp's (a NaN passes through). Host and device code: the CUDA backend calls it too.
DSV4_HD inline float swiglu(float g, float u, float limit, float weight) noexcept {
  if (limit > 0.f) {
    g = limit < g ? limit : g;
    u = u < -limit ? -limit : (limit < u ? limit : u);
  }
  return g / (1.f + ::expf(-g)) * u * weight;
}

// out [D] += nothing: out = expert(x) for one token x [D] (fp32), routing weight `weight`. Returns NaN-weight count.
inline std::int64_t expert_token(const float* x, const weight_ref& w1, const weight_ref& w3, const weight_ref& w2,
                                 float limit, float weight, float* out) {
  const std::int64_t I = w1.n, D = w1.k;
  std::vector<float> row(static_cast<std::size_t>(std::max(I, D))), h(static_cast<std::size_t>(I));
  std::int64_t bad = 0;
  count_flops(static_cast<std::uint64_t>(3 * 2 * I * D));  // w1, w3: [I, D]; w2: [D, I]
  auto dot = [&](const weight_ref& w, std::int64_t n, const float* v) {
    bad += decode_row(w, n, 0, w.k, row.data());
    double acc = 0;
    for (std::int64_t k = 0; k < w.k; ++k) acc += double(v[k]) * row[static_cast<std::size_t>(k)];
    return static_cast<float>(acc);
  };
  for (std::int64_t i = 0; i < I; ++i) h[i] = swiglu(dot(w1, i, x), dot(w3, i, x), limit, weight);
  for (std::int64_t d = 0; d < D; ++d) out[d] = dot(w2, d, h.data());
  return bad;
}

struct ffn_ref {
  weight_ref w1, w2, w3;
};

// y [T, D] = Σ routed (ascending expert) + shared, per token. routed[e] for every e referenced by idx.
template <class TX, class TY>
std::int64_t moe_ffn(view<const TX, 2> x, view<const float, 2> w, view<const std::int32_t, 2> idx,
                     const std::vector<ffn_ref>& routed, const ffn_ref* shared, float limit, view<TY, 2> y) {
  const std::int64_t T = x.size(0), D = x.size(1);
  const int k = static_cast<int>(idx.size(1));
  std::vector<float> xt(static_cast<std::size_t>(D)), acc(xt.size()), out(xt.size());
  std::vector<std::int32_t> ids(static_cast<std::size_t>(k));
  std::vector<int> order(static_cast<std::size_t>(k));
  std::int64_t bad = 0;
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t d = 0; d < D; ++d) xt[d] = to_f32(x(t, d));
    for (int i = 0; i < k; ++i) ids[i] = idx(t, i);
    slot_order(ids.data(), k, order.data());
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int i : order) {
      const ffn_ref& e = routed[static_cast<std::size_t>(ids[i])];
      bad += expert_token(xt.data(), e.w1, e.w3, e.w2, limit, w(t, i), out.data());
      for (std::int64_t d = 0; d < D; ++d) acc[d] += out[d];
    }
    if (shared) {
      bad += expert_token(xt.data(), shared->w1, shared->w3, shared->w2, limit, 1.f, out.data());
      for (std::int64_t d = 0; d < D; ++d) acc[d] += out[d];
    }
    for (std::int64_t d = 0; d < D; ++d) y(t, d) = from_f32<TY>(acc[d]);
  }
  return bad;
}

}  // namespace dsv4::ref
