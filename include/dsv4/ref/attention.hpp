// dsv4/ref/attention.hpp — scalar reference of the indexer scores, top-k selection and sparse attention with sink
// (spec §3.5 steps 6–8, §3.7; policy fp32: the reference's BF16 rounding points are not applied). Dots and sums in
// double, rounded once to fp32.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "dsv4/ref/flops.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::ref {

// scores [T, E]; visible[t] entries scored, the rest −inf.
template <class TV>
void indexer_scores(view<const float, 3> q, view<const float, 2> k, view<const float, 2> w, view<const TV, 1> visible,
                    view<float, 2> scores) noexcept {
  const std::int64_t T = q.size(0), H = q.size(1), C = q.size(2), E = k.size(0);
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t n = static_cast<std::int64_t>(visible(t));
    count_flops(static_cast<std::uint64_t>(n * H * (2 * C + 2)));  // q·k per head, then w·ReLU summed over heads
    for (std::int64_t s = 0; s < E; ++s) {
      if (s >= n) {
        scores(t, s) = -std::numeric_limits<float>::infinity();
        continue;
      }
      double acc = 0;
      for (std::int64_t h = 0; h < H; ++h) {
        double dot = 0;
        for (std::int64_t c = 0; c < C; ++c) dot += double(q(t, h, c)) * k(s, c);
        acc += double(w(t, h)) * std::max(dot, 0.0);  // ReLU, then the weighted head sum
      }
      scores(t, s) = static_cast<float>(acc);
    }
  }
}

// Sort by (score descending, index ascending) and keep the first min(k, count).
template <class TC>
void topk_select(view<const float, 2> scores, view<const TC, 1> count, view<std::int32_t, 2> idx) {
  const std::int64_t T = scores.size(0), K = idx.size(1);
  std::vector<std::int32_t> order;
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t n = static_cast<std::int64_t>(count(t));
    order.resize(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](std::int32_t a, std::int32_t b) { return scores(t, a) > scores(t, b); });
    for (std::int64_t i = 0; i < K; ++i) idx(t, i) = i < n ? order[static_cast<std::size_t>(i)] : -1;
  }
}

// Rows r < kvw.size(0) come from the window tensor, the others from the compressed one (one index space).
inline const float* kv_row(view<const float, 2> kvw, view<const float, 2> kvc, std::int32_t r) noexcept {
  return r < kvw.size(0) ? kvw.row(r) : kvc.row(r - kvw.size(0));
}

// An index list as row pointers: token t's valid entries (−1 skipped, list order kept) at rows[t·K ..), counts[t].
struct row_lists {
  std::vector<const float*> rows;
  std::vector<std::int64_t> counts;
  row_lists(view<const float, 2> kvw, view<const float, 2> kvc, view<const std::int32_t, 2> idx)
      : rows(static_cast<std::size_t>(idx.size(0) * idx.size(1))), counts(static_cast<std::size_t>(idx.size(0))) {
    const std::int64_t K = idx.size(1);
    for (std::int64_t t = 0; t < idx.size(0); ++t) {
      std::int64_t n = 0;
      for (std::int64_t i = 0; i < K; ++i)
        if (idx(t, i) >= 0) rows[static_cast<std::size_t>(t * K + n++)] = kv_row(kvw, kvc, idx(t, i));
      counts[static_cast<std::size_t>(t)] = n;
    }
  }
};

// Token t attends rows[t·K .. t·K + counts[t]) in list order. A token with no row gets out 0 and lse +inf (FlashMLA);
// lse (f32 [T·H], natural log over the real logits, the sink excluded) is written when not null.
inline void sparse_attention_rows(view<const float, 3> q, const float* const* rows, const std::int64_t* counts,
                                  std::int64_t K, view<const float, 1> sink, float scale, view<float, 3> out,
                                  float* lse) {
  const std::int64_t T = q.size(0), H = q.size(1), D = q.size(2);
  std::vector<double> logit(static_cast<std::size_t>(std::max<std::int64_t>(K, 1))), acc(static_cast<std::size_t>(D));
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t h = 0; h < H; ++h) {
      const float* const* rw = rows + t * K;
      const std::int64_t n = counts[t];
      if (n == 0) {
        for (std::int64_t d = 0; d < D; ++d) out(t, h, d) = 0.f;
        if (lse) lse[t * H + h] = std::numeric_limits<float>::infinity();
        continue;
      }
      double m = -std::numeric_limits<double>::infinity();
      for (std::int64_t i = 0; i < n; ++i) {
        double dot = 0;
        for (std::int64_t d = 0; d < D; ++d) dot += double(q(t, h, d)) * rw[i][d];
        logit[static_cast<std::size_t>(i)] = double(scale) * dot;
        m = std::max(m, logit[static_cast<std::size_t>(i)]);
      }
      std::fill(acc.begin(), acc.end(), 0.0);
      count_flops(static_cast<std::uint64_t>(4 * D * n));  // q·k and p·v over the valid rows
      double den = std::exp(double(sink(h)) - m), real = 0;  // the sink: denominator only
      for (std::int64_t i = 0; i < n; ++i) {
        const double p = std::exp(logit[static_cast<std::size_t>(i)] - m);
        den += p;
        real += p;
        for (std::int64_t d = 0; d < D; ++d) acc[static_cast<std::size_t>(d)] += p * rw[i][d];
      }
      if (lse) lse[t * H + h] = static_cast<float>(m + std::log(real));
      for (std::int64_t d = 0; d < D; ++d) out(t, h, d) = static_cast<float>(acc[static_cast<std::size_t>(d)] / den);
    }
}

inline void sparse_attention(view<const float, 3> q, view<const float, 2> kvw, view<const float, 2> kvc,
                             view<const std::int32_t, 2> idx, view<const float, 1> sink, float scale,
                             view<float, 3> out) {
  const row_lists l(kvw, kvc, idx);
  sparse_attention_rows(q, l.rows.data(), l.counts.data(), idx.size(1), sink, scale, out, nullptr);
}

}  // namespace dsv4::ref
