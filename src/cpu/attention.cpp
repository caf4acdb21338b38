// src/cpu/attention.cpp — CPU backend of the indexer scores, top-k selection and sparse attention.
//
// Work split: indexer scores and top-k by token (oneTBB), attention by (token, head) row. Inside a row every sum
// runs in a fixed order (entries in list order, heads ascending), so results are independent of the thread count
// and of the other rows in the batch: a prefill row equals the same row computed alone in decode.
#include "dsv4/cpu/attention.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "attention_simd.hpp"
#include "dsv4/ref/attention.hpp"
#include "parallel.hpp"

namespace dsv4::cpu {
namespace {

const detail::attention_kernels& kernels() {
  static const auto k = detail::resolve_kernels<detail::attention_kernels, detail::select_attention_kernels>();
  return k;
}

}  // namespace

template <class TV>
void indexer_scores(view<const float, 3> q, view<const float, 2> k, view<const float, 2> w, view<const TV, 1> visible,
                    view<float, 2> scores, const exec& ex) {
  const auto& kr = kernels();
  const std::int64_t T = q.size(0), H = q.size(1), C = q.size(2), E = k.size(0);
  constexpr std::int64_t kBlock = 64;  // entries per block: 64 keys x c floats stay in L1/L2 across the heads
  detail::parallel_rows(T, 1, ex, [&](std::int64_t t0, std::int64_t t1) {
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t n = static_cast<std::int64_t>(visible(t));
      float* out = scores.row(t);
      for (std::int64_t s0 = 0; s0 < n; s0 += kBlock) {
        const std::int64_t s1 = std::min(n, s0 + kBlock);
        for (std::int64_t s = s0; s < s1; ++s) out[s] = 0.f;
        for (std::int64_t h = 0; h < H; ++h) {  // heads ascending for every entry: a fixed order
          const float* qh = &q(t, h, 0);
          const float wh = w(t, h);
          for (std::int64_t s = s0; s < s1; ++s) out[s] += wh * std::max(kr.dot(qh, k.row(s), C), 0.f);
        }
      }
      for (std::int64_t s = n; s < E; ++s) out[s] = -std::numeric_limits<float>::infinity();
    }
  });
}

template <class TC>
void topk_select(view<const float, 2> scores, view<const TC, 1> count, view<std::int32_t, 2> idx, const exec& ex) {
  const std::int64_t T = scores.size(0), K = idx.size(1);
  detail::parallel_rows(T, 1, ex, [&](std::int64_t t0, std::int64_t t1) {
    std::vector<std::int32_t> cand;
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t n = static_cast<std::int64_t>(count(t));
      const float* s = scores.row(t);
      // A strict total order: higher score first, then lower index.
      auto better = [s](std::int32_t a, std::int32_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); };
      cand.resize(static_cast<std::size_t>(n));
      std::iota(cand.begin(), cand.end(), 0);
      const std::int64_t take = std::min(K, n);
      if (take < n) std::nth_element(cand.begin(), cand.begin() + take - 1, cand.end(), better);
      std::sort(cand.begin(), cand.begin() + take, better);
      for (std::int64_t i = 0; i < K; ++i) idx(t, i) = i < take ? cand[static_cast<std::size_t>(i)] : -1;
    }
  });
}

void sparse_attention(view<const float, 3> q, view<const float, 2> kvw, view<const float, 2> kvc,
                      view<const std::int32_t, 2> idx, view<const float, 1> sink, float scale, view<float, 3> out,
                      const exec& ex) {
  const auto& kr = kernels();
  const std::int64_t T = q.size(0), H = q.size(1), D = q.size(2), K = idx.size(1);
  detail::parallel_rows(T * H, 4, ex, [&](std::int64_t r0, std::int64_t r1) {
    std::vector<float> logit(static_cast<std::size_t>(K));
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::int64_t t = r / H, h = r % H;
      const float* qv = &q(t, h, 0);
      float m = -std::numeric_limits<float>::infinity();
      for (std::int64_t i = 0; i < K; ++i) {
        const std::int32_t e = idx(t, i);
        if (e < 0) continue;
        logit[static_cast<std::size_t>(i)] = scale * kr.dot(qv, ref::kv_row(kvw, kvc, e), D);
        m = std::max(m, logit[static_cast<std::size_t>(i)]);
      }
      float* o = &out(t, h, 0);
      std::fill(o, o + D, 0.f);
      float den = 0.f;
      for (std::int64_t i = 0; i < K; ++i) {
        const std::int32_t e = idx(t, i);
        if (e < 0) continue;
        const float p = std::exp(logit[static_cast<std::size_t>(i)] - m);
        den += p;
        kr.axpy(o, p, ref::kv_row(kvw, kvc, e), D);
      }
      den += std::exp(sink(h) - m);  // the sink: denominator only
      kr.scale(o, 1.f / den, D);
    }
  });
}

template void indexer_scores<std::int32_t>(view<const float, 3>, view<const float, 2>, view<const float, 2>,
                                           view<const std::int32_t, 1>, view<float, 2>, const exec&);
template void indexer_scores<std::int64_t>(view<const float, 3>, view<const float, 2>, view<const float, 2>,
                                           view<const std::int64_t, 1>, view<float, 2>, const exec&);
template void topk_select<std::int32_t>(view<const float, 2>, view<const std::int32_t, 1>, view<std::int32_t, 2>,
                                        const exec&);
template void topk_select<std::int64_t>(view<const float, 2>, view<const std::int64_t, 1>, view<std::int32_t, 2>,
                                        const exec&);

}  // namespace dsv4::cpu
