// src/cpu/attention_simd_impl.hpp — Arch-templated dot / axpy / scale on fp32 rows.
//
// dot keeps 4 vector accumulators over blocks of 4·W values (a fixed association for a given ISA and n), folds
// them, reduces the lanes with xsimd::hadd and adds the scalar tail in order. Results depend only on the inputs, so
// the kernels built on them are batch- and thread-independent.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include <xsimd/xsimd.hpp>

#include "attention_simd.hpp"
#include "indexer_fp4_impl.hpp"

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

  static float exp_sum(const float* l, float m, float* p, std::int64_t n) {
    const F mv(m);
    F acc(0.f);
    std::int64_t i = 0;
    for (; i + W <= n; i += W) {
      const F e = xsimd::exp(F::load_unaligned(l + i) - mv);
      e.store_unaligned(p + i);
      acc += e;
    }
    float s = xsimd::hadd(acc);
    for (; i < n; ++i) s += (p[i] = std::exp(l[i] - m));
    return s;
  }

  static void scale(float* y, float a, std::int64_t n) {
    const F av(a);
    std::int64_t i = 0;
    for (; i + W <= n; i += W) (F::load_unaligned(y + i) * av).store_unaligned(y + i);
    for (; i < n; ++i) y[i] *= a;
  }
};

// index_scores: heads in vector lanes, so the c-loop is pure FMAs (key value broadcast × a vector of query heads)
// with no horizontal reduction per head; two keys at a time give independent accumulator chains. Heads are taken
// kHV vectors at a time; each head's dot runs over c in order, the head sum over the lanes and chunks in a fixed
// order, so a score depends only on the query and the key.
template <class Arch>
struct index_simd {
  using F = xsimd::batch<float, Arch>;
  static constexpr std::int64_t W = static_cast<std::int64_t>(F::size);
  static constexpr int kHV = 4;

  static void scores(const float* qT, const float* w, std::int64_t hp, const float* keys, std::int64_t C,
                     std::int64_t n, float* out) {
    std::int64_t s = 0;
    for (; s + 2 <= n; s += 2) {
      const float* k0 = keys + s * C;
      const float* k1 = k0 + C;
      F t0(0.f), t1(0.f);
      for (std::int64_t h0 = 0; h0 < hp; h0 += kHV * W) {
        const int nv = static_cast<int>(std::min<std::int64_t>(kHV, (hp - h0) / W));
        F a0[kHV], a1[kHV];
        for (int v = 0; v < kHV; ++v) a0[v] = a1[v] = F(0.f);
        for (std::int64_t c = 0; c < C; ++c) {
          const F b0(k0[c]), b1(k1[c]);
          const float* qc = qT + c * hp + h0;
          for (int v = 0; v < nv; ++v) {
            const F qv = F::load_unaligned(qc + v * W);
            a0[v] = xsimd::fma(b0, qv, a0[v]);
            a1[v] = xsimd::fma(b1, qv, a1[v]);
          }
        }
        for (int v = 0; v < nv; ++v) {
          const F wv = F::load_unaligned(w + h0 + v * W);
          t0 = xsimd::fma(xsimd::max(a0[v], F(0.f)), wv, t0);
          t1 = xsimd::fma(xsimd::max(a1[v], F(0.f)), wv, t1);
        }
      }
      out[s] = xsimd::hadd(t0);
      out[s + 1] = xsimd::hadd(t1);
    }
    for (; s < n; ++s) {  // the odd last key: the same arithmetic with one chain
      const float* k0 = keys + s * C;
      F t0(0.f);
      for (std::int64_t h0 = 0; h0 < hp; h0 += kHV * W) {
        const int nv = static_cast<int>(std::min<std::int64_t>(kHV, (hp - h0) / W));
        F a0[kHV];
        for (int v = 0; v < kHV; ++v) a0[v] = F(0.f);
        for (std::int64_t c = 0; c < C; ++c) {
          const F b0(k0[c]);
          const float* qc = qT + c * hp + h0;
          for (int v = 0; v < nv; ++v) a0[v] = xsimd::fma(b0, F::load_unaligned(qc + v * W), a0[v]);
        }
        for (int v = 0; v < nv; ++v)
          t0 = xsimd::fma(xsimd::max(a0[v], F(0.f)), F::load_unaligned(w + h0 + v * W), t0);
      }
      out[s] = xsimd::hadd(t0);
    }
  }
};

template <class Arch>
struct pv_simd {
  using F = xsimd::batch<float, Arch>;
  static constexpr std::int64_t W = static_cast<std::int64_t>(F::size);
  static constexpr int kG = 4, kV = 2;

  static void pv(const float* const* rows, std::int64_t n, const float* p, std::int64_t G, std::int64_t D,
                 float* out) {
    for (std::int64_t i = 0; i < G * D; ++i) out[i] = 0.f;
    // Rows in blocks of 64 (128 KB at D = 512, L2-resident) so each row comes from memory once; the accumulators are
    // stored and reloaded between blocks, which leaves every output's fma chain over the rows unchanged.
    constexpr std::int64_t kRows = 64;
    for (std::int64_t i0 = 0; i0 < n; i0 += kRows) {
      const std::int64_t i1 = std::min(n, i0 + kRows);
      std::int64_t d0 = 0;
      for (; d0 + kV * W <= D; d0 += kV * W)
        for (std::int64_t g0 = 0; g0 < G; g0 += kG) {
          const int ng = static_cast<int>(std::min<std::int64_t>(kG, G - g0));
          F acc[kG][kV];
          for (int g = 0; g < ng; ++g)
            for (int v = 0; v < kV; ++v) acc[g][v] = F::load_unaligned(out + (g0 + g) * D + d0 + v * W);
          for (std::int64_t i = i0; i < i1; ++i) {
            F r[kV];
            for (int v = 0; v < kV; ++v) r[v] = F::load_unaligned(rows[i] + d0 + v * W);
            for (int g = 0; g < ng; ++g) {
              const F pg(p[(g0 + g) * n + i]);
              for (int v = 0; v < kV; ++v) acc[g][v] = xsimd::fma(pg, r[v], acc[g][v]);
            }
          }
          for (int g = 0; g < ng; ++g)
            for (int v = 0; v < kV; ++v) acc[g][v].store_unaligned(out + (g0 + g) * D + d0 + v * W);
        }
      for (; d0 < D; ++d0)  // the tail of d: the same fma chain, one value at a time
        for (std::int64_t g = 0; g < G; ++g) {
          float a = out[g * D + d0];
          for (std::int64_t i = i0; i < i1; ++i) a = std::fma(p[g * n + i], rows[i][d0], a);
          out[g * D + d0] = a;
        }
    }
  }
};

template <class Arch>
attention_kernels select_attention_kernels::operator()(Arch) const {
  attention_kernels k;
  k.isa = Arch::name();
  k.dot = &attention_simd<Arch>::dot;
  k.axpy = &attention_simd<Arch>::axpy;
  k.scale = &attention_simd<Arch>::scale;
  k.exp_sum = &attention_simd<Arch>::exp_sum;
  k.index_scores = &index_simd<Arch>::scores;
  k.lanes = index_simd<Arch>::W;
  k.index_fp4 = &index_fp4_simd<Arch>::scores;
  k.pv = &pv_simd<Arch>::pv;
  return k;
}

}  // namespace dsv4::cpu::detail
