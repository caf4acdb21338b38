// examples/mhc_sinkhorn.cpp — what the Sinkhorn–Knopp projection of mHC does (spec §4), and why it matters.
//
// 1. One 4x4 comb logit matrix, as hc_pre produces it, before and after the projection, with row and column sums,
//    and the residual |sum - 1| after each of the 20 iterations (ops::sinkhorn_residuals).
// 2. Depth: the residual stream after L blocks is multiplied by the product of L residual-mixing matrices. Its
//    signal gain (largest absolute row or column sum of the product; 1 for a product of doubly stochastic
//    matrices) is printed for unconstrained hyper-connections (identity plus a random perturbation), for a
//    row-softmax-only constraint, and for mHC, on the same random logits at every depth.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "dsv4/dsv4.hpp"

namespace {

constexpr int n = 4;  // hc_mult in V4 (spec §1.1)
using mat = std::vector<double>;

void print(const char* title, const float* c) {
  std::printf("%s\n", title);
  double col[n] = {};
  for (int j = 0; j < n; ++j) {
    double row = 0;
    std::printf("   ");
    for (int k = 0; k < n; ++k) {
      std::printf(" %9.5f", c[j * n + k]);
      row += c[j * n + k];
      col[k] += c[j * n + k];
    }
    std::printf("   | row sum %.6f\n", row);
  }
  std::printf("    col sums");
  for (double s : col) std::printf(" %.6f", s);
  std::printf("\n\n");
}

mat mul(const mat& a, const mat& b) {
  mat c(n * n, 0.0);
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < n; ++k)
      for (int j = 0; j < n; ++j) c[i * n + j] += a[i * n + k] * b[k * n + j];
  return c;
}

// Largest absolute row sum (forward gain) or column sum (backward gain).
double gain(const mat& m) {
  double g = 0;
  for (int i = 0; i < n; ++i) {
    double r = 0, c = 0;
    for (int j = 0; j < n; ++j) {
      r += std::fabs(m[i * n + j]);
      c += std::fabs(m[j * n + i]);
    }
    g = std::max({g, r, c});
  }
  return g;
}

}  // namespace

int main() {
  using namespace dsv4;
  std::mt19937 rng(2026);
  std::normal_distribution<float> nd(0.f, 2.f);

  // ---- 1. one matrix ----
  buffer logits(dtype::f32, {1, n, n}), comb(dtype::f32, {1, n, n});
  for (float& v : logits.host_span<float>()) v = nd(rng);
  std::vector<float> soft(n * n);
  for (int j = 0; j < n; ++j) {  // what a row softmax alone gives
    double s = 0;
    for (int k = 0; k < n; ++k) s += std::exp(double(logits.host_span<float>()[j * n + k]));
    for (int k = 0; k < n; ++k) soft[j * n + k] = static_cast<float>(std::exp(double(logits.host_span<float>()[j * n + k])) / s);
  }
  print("comb logits (mixes·scale + base):", logits.host_span<float>().data());
  print("row softmax only: rows sum to 1, columns do not:", soft.data());
  ops::sinkhorn_knopp(logits, comb, 20, 1e-6f);
  print("after Sinkhorn-Knopp (20 iterations, eps 1e-6): close to doubly stochastic:", comb.host_span<float>().data());
  buffer res(dtype::f32, {20, 2});
  ops::sinkhorn_residuals(logits, 20, 1e-6f, res);
  std::printf("max |row sum - 1| and |col sum - 1| after iteration k:\n");
  for (int k : {1, 2, 3, 5, 10, 20})
    std::printf("  k = %2d   rows %.3e   cols %.3e\n", k, res.host_span<float>()[2 * (k - 1)],
                res.host_span<float>()[2 * (k - 1) + 1]);

  // ---- 2. depth ----
  constexpr int kMaxDepth = 61;  // V4-Pro's layer count (spec §1.1)
  constexpr int kTrials = 50;
  std::printf("\nsignal gain of the product of L residual-mixing matrices (mean / max over %d random draws)\n", kTrials);
  std::printf("logits ~ N(0, 2^2); unconstrained HC: I + 0.3·N(0, 1) entries\n");
  std::printf("  L    unconstrained HC      row-softmax only      mHC (Sinkhorn)\n");
  const int depths[] = {1, 4, 16, 43, 61};
  std::vector<double> sum_h(5), max_h(5), sum_r(5), max_r(5), sum_m(5), max_m(5);
  std::normal_distribution<float> pert(0.f, 0.3f);
  for (int trial = 0; trial < kTrials; ++trial) {
    buffer l(dtype::f32, {kMaxDepth, n, n}), c(dtype::f32, {kMaxDepth, n, n});
    for (float& v : l.host_span<float>()) v = nd(rng);
    ops::sinkhorn_knopp(l, c, 20, 1e-6f);
    mat ph(n * n, 0.0), pr(n * n, 0.0), pm(n * n, 0.0);
    for (int i = 0; i < n; ++i) ph[i * n + i] = pr[i * n + i] = pm[i * n + i] = 1.0;
    int di = 0;
    for (int layer = 1; layer <= kMaxDepth; ++layer) {
      mat h(n * n), r(n * n), m(n * n);
      const float* lv = l.host_span<float>().data() + (layer - 1) * n * n;
      const float* cv = c.host_span<float>().data() + (layer - 1) * n * n;
      for (int j = 0; j < n; ++j) {
        double s = 0;
        for (int k = 0; k < n; ++k) s += std::exp(double(lv[j * n + k]));
        for (int k = 0; k < n; ++k) {
          h[j * n + k] = (j == k ? 1.0 : 0.0) + pert(rng);
          r[j * n + k] = std::exp(double(lv[j * n + k])) / s;
          m[j * n + k] = cv[j * n + k];
        }
      }
      ph = mul(h, ph);
      pr = mul(r, pr);
      pm = mul(m, pm);
      if (layer == depths[di]) {
        const double gh = gain(ph), gr = gain(pr), gm = gain(pm);
        sum_h[di] += gh / kTrials;
        sum_r[di] += gr / kTrials;
        sum_m[di] += gm / kTrials;
        max_h[di] = std::max(max_h[di], gh);
        max_r[di] = std::max(max_r[di], gr);
        max_m[di] = std::max(max_m[di], gm);
        ++di;
      }
    }
  }
  for (int i = 0; i < 5; ++i)
    std::printf("  %-3d  %9.3g / %-9.3g  %8.4f / %-8.4f  %8.6f / %-8.6f\n", depths[i], sum_h[i], max_h[i], sum_r[i],
                max_r[i], sum_m[i], max_m[i]);
  std::printf("\nclaim (mHC paper, seed material): mHC caps the composite gain around 1.6x regardless of depth, where\n"
              "unconstrained hyper-connections grow without bound. Measured here on random logits: mHC stays within\n"
              "%.2g of 1 at every depth up to %d (20 iterations leave rows slightly off 1; columns end exact up to eps).\n"
              "The 1.6x figure comes from trained models, whose logits are not these random draws.\n",
              max_m[4] - 1.0, kMaxDepth);
  return 0;
}
