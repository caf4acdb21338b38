// src/cpu/attention_simd_impl.hpp — Arch-templated dot / axpy / scale on fp32 rows.
//
// dot keeps 4 vector accumulators over blocks of 4·W values (a fixed association for a given ISA and n), folds
// them, reduces the lanes with xsimd::hadd and adds the scalar tail in order. Results depend only on the inputs, so
// the kernels built on them are batch- and thread-independent.
#pragma once

#include <cstdint>

#include <xsimd/xsimd.hpp>

#include "attention_simd.hpp"

namespace dsv4::cpu::detail {

template <class Arch>
struct attention_simd {
  using F = xsimd::batch<float, Arch>;
  static constexpr std::int64_t W = static_cast<std::int64_t>(F::size);

  static float dot(const float* a, const float* b, std::int64_t n) {
    std::int64_t i = 0;
    F s0(0.f), s1(0.f), s2(0.f), s3(0.f);
    for (; i + 4 * W <= n; i += 4 * W) {
      s0 = xsimd::fma(F::load_unaligned(a + i), F::load_unaligned(b + i), s0);
      s1 = xsimd::fma(F::load_unaligned(a + i + W), F::load_unaligned(b + i + W), s1);
      s2 = xsimd::fma(F::load_unaligned(a + i + 2 * W), F::load_unaligned(b + i + 2 * W), s2);
      s3 = xsimd::fma(F::load_unaligned(a + i + 3 * W), F::load_unaligned(b + i + 3 * W), s3);
    }
    for (; i + W <= n; i += W) s0 = xsimd::fma(F::load_unaligned(a + i), F::load_unaligned(b + i), s0);
    float s = xsimd::hadd((s0 + s1) + (s2 + s3));
    for (; i < n; ++i) s += a[i] * b[i];
    return s;
  }

  static void axpy(float* y, float a, const float* x, std::int64_t n) {
    const F av(a);
    std::int64_t i = 0;
    for (; i + W <= n; i += W) xsimd::fma(av, F::load_unaligned(x + i), F::load_unaligned(y + i)).store_unaligned(y + i);
    for (; i < n; ++i) y[i] += a * x[i];
  }

  static void scale(float* y, float a, std::int64_t n) {
    const F av(a);
    std::int64_t i = 0;
    for (; i + W <= n; i += W) (F::load_unaligned(y + i) * av).store_unaligned(y + i);
    for (; i < n; ++i) y[i] *= a;
  }
};

template <class Arch>
attention_kernels select_attention_kernels::operator()(Arch) const {
  attention_kernels k;
  k.isa = Arch::name();
  k.dot = &attention_simd<Arch>::dot;
  k.axpy = &attention_simd<Arch>::axpy;
  k.scale = &attention_simd<Arch>::scale;
  return k;
}

}  // namespace dsv4::cpu::detail
