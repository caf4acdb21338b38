// dsv4/ref/mhc.hpp — scalar reference of manifold-constrained hyper-connections (spec §4).
//
// The residual stream is X [T, n, D] (n = hc_mult = 4 in V4). Per token:
//   hc_pre:  r = rsqrt(mean(X_flat^2) + norm_eps) over all n·D values; mixes = (X_flat · fn^T) · r, m = 2n + n^2
//            outputs laid out [pre (n) | post (n) | comb (n x n, row-major: comb[j][k] = mixes[2n + n·j + k])];
//            pre_j = sigmoid(mixes_j·scale[0] + base_j) + hc_eps; post_j = 2·sigmoid(mixes_{n+j}·scale[1] + base);
//            comb = sinkhorn_knopp(mixes_comb·scale[2] + base_comb); y = Σ_j pre_j·X_j (pre NOT normalized).
//   hc_post: X_new[k] = post_k·F + Σ_j comb[j][k]·X[j]   (column k of comb: the transpose, spec §4)
//   hc_head: pre_j = sigmoid(mixes_j·scale[0] + base_j) + hc_eps with fn [n, n·D]; y = Σ_j pre_j·X_j.
// All fp32 (the spec's fp32 numerics policy, §10); reductions accumulate in double here so that the reference is
// the most accurate version of the formula. Kernels are noexcept; ops::hc_* validated the views.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "dsv4/formats.hpp"
#include "dsv4/ref/flops.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::ref {

// Sinkhorn–Knopp projection of one n x n logit matrix, in place (spec §4 step 6):
//   softmax over each row (max-subtracted) + eps; column-normalize (÷ (Σ_j + eps));
//   then (iters - 1) x { row-normalize (÷ (Σ_k + eps)), column-normalize }.
// That is 1 softmax, iters - 1 row and iters column normalizations; the last step normalizes columns.
// `after(it, c)` is called after iteration it = 1..iters (iteration 1 = softmax + column step); the diagnostics use it.
// Host and device code (DSV4_HD): the CUDA backend runs this very function, one thread per token.
template <class After>
DSV4_HD void sinkhorn_knopp(float* c, int n, int iters, float eps, After&& after) noexcept {
  for (int j = 0; j < n; ++j) {
    float mx = c[j * n];
    for (int k = 1; k < n; ++k) mx = c[j * n + k] > mx ? c[j * n + k] : mx;
    float sum = 0.f;
    for (int k = 0; k < n; ++k) sum += (c[j * n + k] = ::expf(c[j * n + k] - mx));
    for (int k = 0; k < n; ++k) c[j * n + k] = c[j * n + k] / sum + eps;
  }
  auto normalize_columns = [&] {
    for (int k = 0; k < n; ++k) {
      float sum = 0.f;
      for (int j = 0; j < n; ++j) sum += c[j * n + k];
      for (int j = 0; j < n; ++j) c[j * n + k] /= sum + eps;
    }
  };
  normalize_columns();
  after(1, static_cast<const float*>(c));
  for (int it = 1; it < iters; ++it) {
    for (int j = 0; j < n; ++j) {
      float sum = 0.f;
      for (int k = 0; k < n; ++k) sum += c[j * n + k];
      for (int k = 0; k < n; ++k) c[j * n + k] /= sum + eps;
    }
    normalize_columns();
    after(it + 1, static_cast<const float*>(c));
  }
}

DSV4_HD inline void sinkhorn_knopp(float* c, int n, int iters, float eps) noexcept {
  sinkhorn_knopp(c, n, iters, eps, [](int, const float*) {});
}

// Largest |row sum - 1| and |column sum - 1| of an n x n matrix (double sums).
inline void stochastic_residuals(const float* c, int n, double& row, double& col) noexcept {
  row = col = 0;
  for (int a = 0; a < n; ++a) {
    double r = 0, s = 0;
    for (int b = 0; b < n; ++b) {
      r += c[a * n + b];
      s += c[b * n + a];
    }
    row = std::max(row, std::fabs(r - 1));
    col = std::max(col, std::fabs(s - 1));
  }
}

DSV4_HD inline float sigmoid(float x) noexcept { return 1.f / (1.f + ::expf(-x)); }

// mixes [m] = (x_flat · fn^T) · rsqrt(mean(x_flat^2) + norm_eps) for one token; x_flat has n·D values.
template <class TX>
void hc_mixes(view<const TX, 2> x /*[n, D]*/, view<const float, 2> fn /*[m, n·D]*/, float norm_eps,
              float* mixes) noexcept {
  const std::int64_t n = x.size(0), D = x.size(1);
  double ss = 0;
  for (std::int64_t j = 0; j < n; ++j)
    for (std::int64_t d = 0; d < D; ++d) ss += double(to_f32(x(j, d))) * to_f32(x(j, d));
  const float r = 1.f / std::sqrt(static_cast<float>(ss / double(n * D)) + norm_eps);
  count_flops(static_cast<std::uint64_t>(2 * fn.size(0) * n * D));
  for (std::int64_t o = 0; o < fn.size(0); ++o) {
    double acc = 0;
    for (std::int64_t j = 0; j < n; ++j)
      for (std::int64_t d = 0; d < D; ++d) acc += double(to_f32(x(j, d))) * fn(o, j * D + d);
    mixes[o] = static_cast<float>(acc) * r;
  }
}

// The gates of one token from its mixes (spec §4 steps 4–6, before Sinkhorn): pre [n] = sigmoid(mixes_j·scale[0] +
// base_j) + hc_eps; when `post` is not null (hc_pre, not hc_head) also post [n] = 2·sigmoid(mixes_{n+j}·scale[1] +
// base_{n+j}) and comb_logits [n²] = mixes_{2n+i}·scale[2] + base_{2n+i}. Shared by every backend (CUDA included).
DSV4_HD inline void hc_gates(const float* mixes, std::int64_t n, view<const float, 1> scale, view<const float, 1> base,
                     float hc_eps, float* pre, float* post, float* comb_logits) noexcept {
  for (std::int64_t j = 0; j < n; ++j) pre[j] = sigmoid(mixes[j] * scale(0) + base(j)) + hc_eps;
  if (!post) return;
  for (std::int64_t j = 0; j < n; ++j) post[j] = 2.f * sigmoid(mixes[n + j] * scale(1) + base(n + j));
  for (std::int64_t i = 0; i < n * n; ++i) comb_logits[i] = mixes[2 * n + i] * scale(2) + base(2 * n + i);
}

// Token t of x [T, n, D] as an [n, D] view.
template <class TX>
view<const TX, 2> token(view<const TX, 3> x, std::int64_t t) noexcept {
  return {&x(t, 0, 0), {x.size(1), x.size(2)}, {x.stride[1], x.stride[2]}};
}

// y[t] = Σ_j w_j·X[t, j] (the collapse shared by hc_pre and hc_head; w is not normalized).
template <class TX, class TY>
void collapse(view<const TX, 3> x, std::int64_t t, const float* w, view<TY, 2> y) noexcept {
  for (std::int64_t d = 0; d < x.size(2); ++d) {
    double acc = 0;
    for (std::int64_t j = 0; j < x.size(1); ++j) acc += double(w[j]) * to_f32(x(t, j, d));
    y(t, d) = from_f32<TY>(static_cast<float>(acc));
  }
}

// y [T, D], post [T, n], comb [T, n, n] from x [T, n, D].
template <class TX, class TY>
void hc_pre(view<const TX, 3> x, view<const float, 2> fn, view<const float, 1> scale, view<const float, 1> base,
            view<TY, 2> y, view<float, 2> post, view<float, 3> comb, int iters, float hc_eps, float norm_eps) {
  const std::int64_t T = x.size(0), n = x.size(1);
  std::vector<float> mixes(static_cast<std::size_t>(fn.size(0))), pre(static_cast<std::size_t>(n)),
      p(static_cast<std::size_t>(n)), c(static_cast<std::size_t>(n * n));
  for (std::int64_t t = 0; t < T; ++t) {
    hc_mixes(token(x, t), fn, norm_eps, mixes.data());
    hc_gates(mixes.data(), n, scale, base, hc_eps, pre.data(), p.data(), c.data());
    for (std::int64_t j = 0; j < n; ++j) post(t, j) = p[j];
    sinkhorn_knopp(c.data(), static_cast<int>(n), iters, hc_eps);
    for (std::int64_t j = 0; j < n; ++j)
      for (std::int64_t k = 0; k < n; ++k) comb(t, j, k) = c[j * n + k];
    collapse(x, t, pre.data(), y);
  }
}

// x_new [T, n, D] = post_k·F + Σ_j comb[j][k]·X[j]; x_new may alias x (each output element reads its own column).
template <class TF, class TX, class TO>
void hc_post(view<const TF, 2> f, view<const TX, 3> x, view<const float, 2> post, view<const float, 3> comb,
             view<TO, 3> out) {
  const std::int64_t T = x.size(0), n = x.size(1), D = x.size(2);
  std::vector<float> col(static_cast<std::size_t>(n));
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t d = 0; d < D; ++d) {
      for (std::int64_t j = 0; j < n; ++j) col[j] = to_f32(x(t, j, d));
      for (std::int64_t k = 0; k < n; ++k) {
        double acc = double(post(t, k)) * to_f32(f(t, d));
        for (std::int64_t j = 0; j < n; ++j) acc += double(comb(t, j, k)) * col[j];
        out(t, k, d) = from_f32<TO>(static_cast<float>(acc));
      }
    }
}

// y [T, D] = Σ_j (sigmoid(mixes_j·scale[0] + base_j) + hc_eps)·X_j with fn [n, n·D].
template <class TX, class TY>
void hc_head(view<const TX, 3> x, view<const float, 2> fn, view<const float, 1> scale, view<const float, 1> base,
             view<TY, 2> y, float hc_eps, float norm_eps) {
  const std::int64_t T = x.size(0), n = x.size(1);
  std::vector<float> mixes(static_cast<std::size_t>(n)), pre(mixes.size());
  for (std::int64_t t = 0; t < T; ++t) {
    hc_mixes(token(x, t), fn, norm_eps, mixes.data());
    hc_gates(mixes.data(), n, scale, base, hc_eps, pre.data(), nullptr, nullptr);
    collapse(x, t, pre.data(), y);
  }
}

}  // namespace dsv4::ref
