// src/cpu/moe_simd_impl.hpp — Arch-templated expert scoring: W lanes of exp / log1p / sqrt at a time, the tail
// (E % W) through the ref's scalar formula.
#pragma once

#include <algorithm>

#include <xsimd/xsimd.hpp>

#include "dsv4/ref/moe.hpp"
#include "moe_simd.hpp"

namespace dsv4::cpu::detail {

template <class Arch>
struct moe_simd {
  using F = xsimd::batch<float, Arch>;
  static constexpr std::int64_t W = static_cast<std::int64_t>(F::size);

  static void score_row(const float* l, std::int64_t E, ops::score_func f, float* s) {
    const std::int64_t Ev = E / W * W;
    switch (f) {
      case ops::score_func::sqrtsoftplus:
        for (std::int64_t e = 0; e < Ev; e += W) {
          const F v = F::load_unaligned(l + e);
          // softplus with torch's threshold: x itself above 20, where log1p(exp(x)) == x in fp32 anyway
          xsimd::sqrt(xsimd::select(v > F(20.f), v, xsimd::log1p(xsimd::exp(v)))).store_unaligned(s + e);
        }
        for (std::int64_t e = Ev; e < E; ++e) s[e] = std::sqrt(ref::softplus(l[e]));
        break;
      case ops::score_func::sigmoid:
        for (std::int64_t e = 0; e < Ev; e += W)
          (F(1.f) / (F(1.f) + xsimd::exp(-F::load_unaligned(l + e)))).store_unaligned(s + e);
        for (std::int64_t e = Ev; e < E; ++e) s[e] = 1.f / (1.f + std::exp(-l[e]));
        break;
      case ops::score_func::softmax: {
        float mx = l[0];
        for (std::int64_t e = 1; e < E; ++e) mx = std::max(mx, l[e]);
        F acc(0.f);
        for (std::int64_t e = 0; e < Ev; e += W) {
          const F p = xsimd::exp(F::load_unaligned(l + e) - F(mx));
          p.store_unaligned(s + e);
          acc += p;
        }
        float sum = xsimd::hadd(acc);
        for (std::int64_t e = Ev; e < E; ++e) sum += (s[e] = std::exp(l[e] - mx));
        const F inv(sum);
        for (std::int64_t e = 0; e < Ev; e += W) (F::load_unaligned(s + e) / inv).store_unaligned(s + e);
        for (std::int64_t e = Ev; e < E; ++e) s[e] /= sum;
        break;
      }
    }
  }
};

template <class Arch>
moe_kernels select_moe_kernels::operator()(Arch) const {
  return moe_kernels{Arch::name(), &moe_simd<Arch>::score_row};
}

}  // namespace dsv4::cpu::detail
