// src/cpu/hadamard_simd_impl.hpp — Arch-templated fast Walsh–Hadamard transform on one fp32 row.
//
// The log2(W) stages that stay inside one vector of W lanes are applied together as a product with H_W (W
// multiply-adds by ±1, each exact up to the one rounding of the sum, so this is a re-association of the butterfly
// sums); the remaining stages are vector butterflies between vectors h apart. Rounding therefore differs from the
// ref's pure butterfly order by re-association only (tests bound it; on small-integer inputs both are exact).
#pragma once

#include <cstdint>

#include <xsimd/xsimd.hpp>

#include "dsv4/ref/hadamard.hpp"
#include "hadamard_simd.hpp"

namespace dsv4::cpu::detail {

template <class Arch>
struct hadamard_simd {
  using F = xsimd::batch<float, Arch>;
  static constexpr int W = static_cast<int>(F::size);

  static void row(float* v, std::int64_t n, float scale) {
    if (n < 2 * W) return ref::hadamard_row(v, n);  // too short for vectors: the ref butterflies (same scale)
    // H_W[j][i] = (-1)^popcount(i & j), one vector per j.
    static const auto hw = [] {
      struct table { alignas(64) float m[W][W]; } t{};
      for (int j = 0; j < W; ++j)
        for (int i = 0; i < W; ++i) t.m[j][i] = (__builtin_popcount(static_cast<unsigned>(i & j)) & 1) ? -1.f : 1.f;
      return t;
    }();
    for (std::int64_t c = 0; c < n; c += W) {
      alignas(64) float x[W];
      for (int j = 0; j < W; ++j) x[j] = v[c + j];
      F acc = F(x[0]) * F::load_aligned(hw.m[0]);
      for (int j = 1; j < W; ++j) acc = xsimd::fma(F(x[j]), F::load_aligned(hw.m[j]), acc);
      acc.store_unaligned(v + c);
    }
    for (std::int64_t h = W; h < n; h *= 2)
      for (std::int64_t i = 0; i < n; i += 2 * h)
        for (std::int64_t j = i; j < i + h; j += W) {
          const F a = F::load_unaligned(v + j), b = F::load_unaligned(v + j + h);
          (a + b).store_unaligned(v + j);
          (a - b).store_unaligned(v + j + h);
        }
    const F s(scale);
    for (std::int64_t j = 0; j < n; j += W) (F::load_unaligned(v + j) * s).store_unaligned(v + j);
  }
};

template <class Arch>
hadamard_kernels select_hadamard_kernels::operator()(Arch) const {
  return hadamard_kernels{Arch::name(), &hadamard_simd<Arch>::row};
}

}  // namespace dsv4::cpu::detail
