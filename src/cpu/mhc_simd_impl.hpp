// src/cpu/mhc_simd_impl.hpp — Arch-templated mHC kernels: the fused RMS + mix projection pass, Sinkhorn across W
// tokens at once, and the stream combinations of hc_pre / hc_post / hc_head.
#pragma once

#include <algorithm>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "mhc_simd.hpp"

namespace dsv4::cpu::detail {

template <class Arch>
struct mhc_simd {
  using F = xsimd::batch<float, Arch>;
  static constexpr int W = static_cast<int>(F::size);
  static constexpr int kGroup = 8;  // mix outputs per sweep over the (L1-resident) chunk

  static void mix_chunk(const float* x, std::int64_t len, const float* fn, std::int64_t ldfn, int m, float* acc) {
    {  // sum of squares
      F s = F::load_unaligned(acc);
      for (std::int64_t k = 0; k < len; k += W) {
        const F v = F::load_unaligned(x + k);
        s = xsimd::fma(v, v, s);
      }
      s.store_unaligned(acc);
    }
    int o0 = 0;
    for (; o0 + kGroup <= m; o0 += kGroup) group<kGroup>(x, len, fn + o0 * ldfn, ldfn, acc + (1 + o0) * W);
    switch (m - o0) {  // a compile-time group size keeps the accumulators in registers
      case 7: group<7>(x, len, fn + o0 * ldfn, ldfn, acc + (1 + o0) * W); break;
      case 6: group<6>(x, len, fn + o0 * ldfn, ldfn, acc + (1 + o0) * W); break;
      case 5: group<5>(x, len, fn + o0 * ldfn, ldfn, acc + (1 + o0) * W); break;
      case 4: group<4>(x, len, fn + o0 * ldfn, ldfn, acc + (1 + o0) * W); break;
      case 3: group<3>(x, len, fn + o0 * ldfn, ldfn, acc + (1 + o0) * W); break;
      case 2: group<2>(x, len, fn + o0 * ldfn, ldfn, acc + (1 + o0) * W); break;
      case 1: group<1>(x, len, fn + o0 * ldfn, ldfn, acc + (1 + o0) * W); break;
      default: break;
    }
  }

  // acc[o·W ..] += x · fn[o·ldfn ..] over the chunk, for o < G.
  template <int G>
  static void group(const float* x, std::int64_t len, const float* fn, std::int64_t ldfn, float* acc) {
    F a[G];
    for (int o = 0; o < G; ++o) a[o] = F::load_unaligned(acc + o * W);
    for (std::int64_t k = 0; k < len; k += W) {
      const F v = F::load_unaligned(x + k);
      for (int o = 0; o < G; ++o) a[o] = xsimd::fma(v, F::load_unaligned(fn + o * ldfn + k), a[o]);
    }
    for (int o = 0; o < G; ++o) a[o].store_unaligned(acc + o * W);
  }

  static float hsum(const float* lanes) { return xsimd::hadd(F::load_unaligned(lanes)); }

  static void sinkhorn(float* c, int n, int iters, float eps) {
    std::vector<F> v(static_cast<std::size_t>(n * n));
    for (int i = 0; i < n * n; ++i) v[i] = F::load_unaligned(c + i * W);
    const F e(eps);
    for (int j = 0; j < n; ++j) {
      F mx = v[j * n];
      for (int k = 1; k < n; ++k) mx = xsimd::select(v[j * n + k] > mx, v[j * n + k], mx);
      F sum(0.f);
      for (int k = 0; k < n; ++k) sum += (v[j * n + k] = xsimd::exp(v[j * n + k] - mx));
      for (int k = 0; k < n; ++k) v[j * n + k] = v[j * n + k] / sum + e;
    }
    auto columns = [&] {
      for (int k = 0; k < n; ++k) {
        F sum(0.f);
        for (int j = 0; j < n; ++j) sum += v[j * n + k];
        for (int j = 0; j < n; ++j) v[j * n + k] /= sum + e;
      }
    };
    columns();
    for (int it = 1; it < iters; ++it) {
      for (int j = 0; j < n; ++j) {
        F sum(0.f);
        for (int k = 0; k < n; ++k) sum += v[j * n + k];
        for (int k = 0; k < n; ++k) v[j * n + k] /= sum + e;
      }
      columns();
    }
    for (int i = 0; i < n * n; ++i) v[i].store_unaligned(c + i * W);
  }

  static void combine(const float* const* xs, const float* coef, int nx, const float* f, float a, std::int64_t len,
                      float* out) {
    const std::int64_t lv = len / W * W;
    for (std::int64_t d = 0; d < lv; d += W) {
      F acc = f ? F(a) * F::load_unaligned(f + d) : F(0.f);
      for (int j = 0; j < nx; ++j) acc = xsimd::fma(F(coef[j]), F::load_unaligned(xs[j] + d), acc);
      acc.store_unaligned(out + d);
    }
    for (std::int64_t d = lv; d < len; ++d) {
      float acc = f ? a * f[d] : 0.f;
      for (int j = 0; j < nx; ++j) acc = std::fma(coef[j], xs[j][d], acc);
      out[d] = acc;
    }
  }
};

template <class Arch>
mhc_kernels select_mhc_kernels::operator()(Arch) const {
  using K = mhc_simd<Arch>;
  return mhc_kernels{Arch::name(), K::W, &K::mix_chunk, &K::hsum, &K::sinkhorn, &K::combine};
}

}  // namespace dsv4::cpu::detail
