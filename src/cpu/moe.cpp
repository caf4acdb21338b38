// src/cpu/moe.cpp — CPU backend of MoE routing (SIMD scores, single-pass top-k) and the token-grouped expert FFN.
#include "dsv4/cpu/moe.hpp"

#include <algorithm>
#include <atomic>
#include <type_traits>

#include "dsv4/cpu/linear.hpp"
#include "moe_simd.hpp"
#include "parallel.hpp"

namespace dsv4::cpu {
namespace {

const detail::moe_kernels& kernels() {
  static const auto k = detail::resolve_kernels<detail::moe_kernels, detail::select_moe_kernels>();
  return k;
}

// idx[0:k) = top-k of v[0:E) in one pass: a sorted list of the best k so far; a value enters only if strictly
// greater than the current k-th (so among equal values the lower index, seen first, stays ahead).
void topk_insert(const float* v, std::int64_t E, int k, std::int32_t* idx) {
  int n = 0;
  for (std::int64_t e = 0; e < E; ++e) {
    if (n == k && !(v[e] > v[idx[k - 1]])) continue;
    int p = n < k ? n++ : k - 1;
    while (p > 0 && v[e] > v[idx[p - 1]]) {
      idx[p] = idx[p - 1];
      --p;
    }
    idx[p] = static_cast<std::int32_t>(e);
  }
}

// Decode-sized batches: up to this many tokens, every expert's linears run in one parallel region per phase (w1
// and w3 of all experts, then w2 of all experts) instead of three per expert: at T = 1 a V4-Flash MoE is 21
// matrices of 4-8 MB, and a region per matrix leaves both threads waiting at 21 joins.
constexpr std::int64_t kFusedTokens = 8;
// Past kFusedTokens, experts of up to this many tokens run one per thread; larger ones on every thread (moe_ffn):
// where FP4 weights leave the decode GEMV for the prefill GEMM.
constexpr std::int64_t kSoloTokens = kGemvMaxTokensFp4;

// ex on the calling thread only (the linears of work that is itself split over the threads).
exec one_thread(const exec& ex) {
  exec s = ex;
  s.threads = 1;
  return s;
}

// The experts of T <= kFusedTokens tokens in two parallel regions. Job j = an expert with rows: its gathered token
// rows, routing weights, and where its [rows, D] output goes (routed: rows of `out` by (token, slot); shared: rows
// T·k .. T·k + T − 1 of `out`, as in the per-expert loop). Same kernels, same per-row arithmetic as the per-expert loop, so the same bits.
std::int64_t fused_experts(const float* xf, std::int64_t T, std::int64_t D, view<const float, 2> w, int k,
                           const std::vector<std::int64_t>& start, const std::vector<std::int64_t>& pairs,
                           const std::vector<ref::ffn_ref>& routed, const ref::ffn_ref* shared, float limit,
                           std::vector<float>& out, const exec& ex) {
  struct job {
    const ref::ffn_ref* f;
    std::int64_t rows, x0, h0;            // row count; offsets of its rows in xs / (g, u) (elements)
    std::vector<std::int64_t> dst;        // output row in `out` per row
    std::vector<float> wr;                // routing weight per row
    std::vector<float> xo_buf, go_buf;    // x and h in the lane orders of w1 and w2
    const float* xo = nullptr;
    const float* go = nullptr;
    std::int64_t ldx = 0, ldg = 0;
  };
  std::vector<job> jobs;
  std::int64_t xrows = 0, hsize = 0;
  const std::int64_t E = static_cast<std::int64_t>(routed.size());
  for (std::int64_t e = 0; e <= E; ++e) {
    const bool sh = e == E;
    if (sh && !shared) break;
    const std::int64_t rows = sh ? T : start[e + 1] - start[e];
    if (rows == 0) continue;
    job j{sh ? shared : &routed[static_cast<std::size_t>(e)], rows, xrows * D, hsize, {}, {}, {}, {}};
    for (std::int64_t r = 0; r < rows; ++r) {
      if (sh) {
        j.dst.push_back(T * k + r);
        j.wr.push_back(1.f);
      } else {
        const std::int64_t p = pairs[static_cast<std::size_t>(start[e] + r)];
        j.dst.push_back(p);
        j.wr.push_back(w(p / k, static_cast<int>(p % k)));
      }
    }
    xrows += rows;
    hsize += rows * j.f->w1.n;
    jobs.push_back(std::move(j));
  }
  std::vector<float> xs(static_cast<std::size_t>(xrows * D)), g(static_cast<std::size_t>(hsize)), u(g.size()),
      o(static_cast<std::size_t>(xrows * D));
  const exec serial = one_thread(ex);
  for (job& j : jobs) {
    for (std::int64_t r = 0; r < j.rows; ++r) {
      const std::int64_t t = j.f == shared ? r : j.dst[static_cast<std::size_t>(r)] / k;
      std::copy_n(xf + t * D, D, xs.data() + j.x0 + r * D);
    }
    j.xo = lane_order(j.f->w1, xs.data() + j.x0, j.rows, D, j.xo_buf, &j.ldx, serial);
  }
  // Flat task index -> (job, matrix, row block): blocks of w1 then w3 (phase 1) or of w2 (phase 2), job by job.
  std::atomic<std::int64_t> bad{0};
  auto region = [&](int phase) {
    std::vector<std::int64_t> first{0};
    for (const job& j : jobs)
      first.push_back(first.back() + (phase == 1 ? linear_row_blocks(j.f->w1) + linear_row_blocks(j.f->w3)
                                                 : linear_row_blocks(j.f->w2)));
    detail::parallel_rows(first.back(), 1, ex, [&](std::int64_t f0, std::int64_t f1) {
      std::int64_t my_bad = 0;
      std::size_t ji = static_cast<std::size_t>(std::upper_bound(first.begin(), first.end(), f0) - first.begin() - 1);
      for (std::int64_t f = f0; f < f1;) {
        while (f >= first[ji + 1]) ++ji;
        const job& j = jobs[ji];
        std::int64_t b = f - first[ji];
        const std::int64_t end = std::min(f1, first[ji + 1]) - first[ji];  // job-local block bound
        if (phase == 1) {
          const std::int64_t n1 = linear_row_blocks(j.f->w1), I = j.f->w1.n;
          if (b < n1) {  // w1 blocks [b, min(end, n1))
            const std::int64_t e1 = std::min(end, n1);
            my_bad += linear_blocks(j.xo, j.rows, j.ldx, j.f->w1, g.data() + j.h0, I, b, e1);
            f += e1 - b;
            b = e1;
          }
          if (b >= n1 && b < end) {  // w3 blocks
            my_bad += linear_blocks(j.xo, j.rows, j.ldx, j.f->w3, u.data() + j.h0, I, b - n1, end - n1);
            f += end - b;
          }
        } else {
          my_bad += linear_blocks(j.go, j.rows, j.ldg, j.f->w2, o.data() + j.x0, D, b, end);
          f += end - b;
        }
      }
      if (my_bad) bad += my_bad;
    });
  };
  region(1);
  for (job& j : jobs) {
    const std::int64_t I = j.f->w1.n;
    for (std::int64_t r = 0; r < j.rows; ++r)
      for (std::int64_t i = 0; i < I; ++i) {
        const std::size_t q = static_cast<std::size_t>(j.h0 + r * I + i);
        g[q] = ref::swiglu(g[q], u[q], limit, j.wr[static_cast<std::size_t>(r)]);
      }
    j.go = lane_order(j.f->w2, g.data() + j.h0, j.rows, I, j.go_buf, &j.ldg, serial);
  }
  region(2);
  for (const job& j : jobs)
    for (std::int64_t r = 0; r < j.rows; ++r)
      std::copy_n(o.data() + j.x0 + r * D, D, out.data() + j.dst[static_cast<std::size_t>(r)] * D);
  return bad.load();
}

}  // namespace

void moe_scores(view<const float, 2> logits, ops::score_func f, view<float, 2> scores, const exec& ex) {
  const auto& k = kernels();
  detail::parallel_rows(logits.size(0), 16, ex, [&](std::int64_t t0, std::int64_t t1) {
    for (std::int64_t t = t0; t < t1; ++t) k.score_row(logits.row(t), logits.size(1), f, scores.row(t));
  });
}

void moe_route(view<const float, 2> logits, const ops::route_config& cfg, const float* bias, view<float, 2> w,
               view<std::int32_t, 2> idx, const exec& ex) {
  const auto& kern = kernels();
  const std::int64_t E = logits.size(1);
  const int k = cfg.topk;
  detail::parallel_rows(logits.size(0), 16, ex, [&](std::int64_t t0, std::int64_t t1) {
    std::vector<float> s(static_cast<std::size_t>(E)), sel(bias ? s.size() : 0), wt(static_cast<std::size_t>(k));
    std::vector<std::int32_t> id(static_cast<std::size_t>(k));
    for (std::int64_t t = t0; t < t1; ++t) {
      kern.score_row(logits.row(t), E, cfg.score, s.data());
      const float* v = s.data();
      if (bias) {
        for (std::int64_t e = 0; e < E; ++e) sel[e] = s[e] + bias[e];
        v = sel.data();
      }
      topk_insert(v, E, k, id.data());
      ref::route_weights(s.data(), id.data(), k, cfg, wt.data());
      for (int i = 0; i < k; ++i) {
        idx(t, i) = id[i];
        w(t, i) = wt[i];
      }
    }
  });
}

template <class TX, class TY>
std::int64_t moe_ffn(view<const TX, 2> x, view<const float, 2> w, view<const std::int32_t, 2> idx,
                     const std::vector<ref::ffn_ref>& routed, const ref::ffn_ref* shared, float limit, view<TY, 2> y,
                     const exec& ex) {
  const std::int64_t T = x.size(0), D = x.size(1), E = static_cast<std::int64_t>(routed.size());
  const int k = static_cast<int>(idx.size(1));
  // x as contiguous fp32 rows
  std::vector<float> xf(static_cast<std::size_t>(T * D));
  detail::parallel_rows(T, 8, ex, [&](std::int64_t t0, std::int64_t t1) {
    for (std::int64_t t = t0; t < t1; ++t)
      for (std::int64_t d = 0; d < D; ++d) xf[static_cast<std::size_t>(t * D + d)] = to_f32(x(t, d));
  });
  // Group (token, slot) pairs by expert: counting sort, ascending token within an expert.
  std::vector<std::int64_t> start(static_cast<std::size_t>(E + 1), 0);
  for (std::int64_t t = 0; t < T; ++t)
    for (int i = 0; i < k; ++i) ++start[static_cast<std::size_t>(idx(t, i)) + 1];
  for (std::int64_t e = 0; e < E; ++e) start[e + 1] += start[e];
  std::vector<std::int64_t> pairs(static_cast<std::size_t>(T * k)), fill(start.begin(), start.end() - 1);
  for (std::int64_t t = 0; t < T; ++t)
    for (int i = 0; i < k; ++i) pairs[static_cast<std::size_t>(fill[idx(t, i)]++)] = t * k + i;

  // [T·k + T, D]: routed output of (token, slot), then the shared expert's output of each token (if any)
  std::vector<float> out(static_cast<std::size_t>((T * k + (shared ? T : 0)) * D));
  float* const shared_out = out.data() + T * k * D;
  std::int64_t bad = 0;
  if (T <= kFusedTokens) {
    bad += fused_experts(xf.data(), T, D, w, k, start, pairs, routed, shared, limit, out, ex);
  } else {
    struct scratch {
      std::vector<float> xe, g, u, oe, we;
    };
    // h = swiglu(x·W1^T, x·W3^T) for `rows` gathered rows, routing weights wr (nullptr = 1), then h·W2^T -> dst
    auto expert = [&](const ref::ffn_ref& f, const float* xs, std::int64_t rows, const float* wr, float* dst,
                      scratch& s, const exec& ee) {
      const std::int64_t I = f.w1.n;
      s.g.resize(static_cast<std::size_t>(rows * I));
      s.u.resize(s.g.size());
      std::int64_t b = linear_f32(xs, rows, D, f.w1, s.g.data(), I, ee);
      b += linear_f32(xs, rows, D, f.w3, s.u.data(), I, ee);
      detail::parallel_rows(rows, 1, ee, [&](std::int64_t r0, std::int64_t r1) {
        for (std::int64_t r = r0; r < r1; ++r)
          for (std::int64_t i = 0; i < I; ++i) {
            const std::size_t j = static_cast<std::size_t>(r * I + i);
            s.g[j] = ref::swiglu(s.g[j], s.u[j], limit, wr ? wr[r] : 1.f);
          }
      });
      return b + linear_f32(s.g.data(), rows, I, f.w2, dst, D, ee);
    };
    // routed expert e on its gathered tokens, its outputs to their (token, slot) rows of `out`
    auto routed_expert = [&](std::int64_t e, scratch& s, const exec& ee) {
      const std::int64_t n0 = start[e], rows = start[e + 1] - n0;
      s.xe.resize(static_cast<std::size_t>(rows * D));
      s.oe.resize(s.xe.size());
      s.we.resize(static_cast<std::size_t>(rows));
      for (std::int64_t r = 0; r < rows; ++r) {
        const std::int64_t p = pairs[static_cast<std::size_t>(n0 + r)], t = p / k;
        std::copy_n(xf.data() + t * D, D, s.xe.data() + r * D);
        s.we[r] = w(t, static_cast<int>(p % k));
      }
      const std::int64_t b = expert(routed[static_cast<std::size_t>(e)], s.xe.data(), rows, s.we.data(),
                                    s.oe.data(), s, ee);
      for (std::int64_t r = 0; r < rows; ++r)
        std::copy_n(s.oe.data() + r * D, D, out.data() + pairs[static_cast<std::size_t>(n0 + r)] * D);
      return b;
    };
    // Experts of up to kSoloTokens tokens run one per thread (expert parallelism: no join per linear, the gathers,
    // lane orders and SwiGLU of one expert overlap another's GEMVs); larger ones one at a time on every thread,
    // so a skewed routing cannot leave one thread with most of the work. Same kernels, same bits either way.
    scratch main;
    std::vector<std::int64_t> small;
    for (std::int64_t e = 0; e < E; ++e) {
      const std::int64_t rows = start[e + 1] - start[e];
      if (rows == 0) continue;
      if (rows > kSoloTokens || ex.threads == 1)
        bad += routed_expert(e, main, ex);
      else
        small.push_back(e);
    }
    std::atomic<std::int64_t> small_bad{0};
    const exec serial = one_thread(ex);
    detail::parallel_rows(static_cast<std::int64_t>(small.size()), 1, ex, [&](std::int64_t i0, std::int64_t i1) {
      scratch s;
      std::int64_t b = 0;
      for (std::int64_t i = i0; i < i1; ++i) b += routed_expert(small[static_cast<std::size_t>(i)], s, serial);
      if (b) small_bad += b;
    });
    bad += small_bad.load();
    if (shared) bad += expert(*shared, xf.data(), T, nullptr, shared_out, main, ex);
  }
  // Combine per token in ascending expert order, shared last (ref::moe_ffn's order).
  detail::parallel_rows(T, 4, ex, [&](std::int64_t t0, std::int64_t t1) {
    std::vector<float> acc(static_cast<std::size_t>(D));
    std::vector<std::int32_t> ids(static_cast<std::size_t>(k));
    std::vector<int> order(static_cast<std::size_t>(k));
    for (std::int64_t t = t0; t < t1; ++t) {
      for (int i = 0; i < k; ++i) ids[i] = idx(t, i);
      ref::slot_order(ids.data(), k, order.data());
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int i : order) {
        const float* o = out.data() + (t * k + i) * D;
        for (std::int64_t d = 0; d < D; ++d) acc[d] += o[d];
      }
      if (shared)
        for (std::int64_t d = 0; d < D; ++d) acc[d] += shared_out[t * D + d];
      for (std::int64_t d = 0; d < D; ++d) y(t, d) = from_f32<TY>(acc[d]);
    }
  });
  return bad;
}

#define DSV4_MOE_FFN(TX, TY)                                                                                      \
  template std::int64_t moe_ffn<TX, TY>(view<const TX, 2>, view<const float, 2>, view<const std::int32_t, 2>,      \
                                        const std::vector<ref::ffn_ref>&, const ref::ffn_ref*, float, view<TY, 2>, \
                                        const exec&);
DSV4_MOE_FFN(float, float)
DSV4_MOE_FFN(float, bf16)
DSV4_MOE_FFN(bf16, float)
DSV4_MOE_FFN(bf16, bf16)
#undef DSV4_MOE_FFN

}  // namespace dsv4::cpu
