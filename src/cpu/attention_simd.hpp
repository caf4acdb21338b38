// src/cpu/attention_simd.hpp — per-ISA vector primitives of the attention kernels (declarations; see
// simd_dispatch.hpp for how ISAs are compiled and chosen).
#pragma once

#include <cstdint>

#include <xsimd/xsimd.hpp>

#include "simd_dispatch.hpp"

namespace dsv4::cpu::detail {

struct attention_kernels {
  const char* isa = "";
  // Σ a[i]·b[i] in a fixed order (lane-wise fma over the vector body, lanes reduced, then the scalar tail).
  float (*dot)(const float* a, const float* b, std::int64_t n) = nullptr;
  // y[i] += a · x[i].
  void (*axpy)(float* y, float a, const float* x, std::int64_t n) = nullptr;
  // y[i] *= a.
  void (*scale)(float* y, float a, std::int64_t n) = nullptr;
  // Lightning-indexer scores of one query token over n keys, GEMM-shaped with the ReLU and the weighted head sum
  // fused: out[s] = Σ_h w[h]·max(Σ_c qT[c·hp + h]·keys[s·C + c], 0). qT is the query transposed to [C, hp] with
  // the heads padded to hp (a multiple of `lanes`) by zero queries and zero weights.
  void (*index_scores)(const float* qT, const float* w, std::int64_t hp, const float* keys, std::int64_t C,
                       std::int64_t n, float* out) = nullptr;
  std::int64_t lanes = 1;
  // p[i] = exp(l[i] − m) (vector exp) and returns Σ p[i] (lane partial sums, then the lanes, then the tail).
  float (*exp_sum)(const float* l, float m, float* p, std::int64_t n) = nullptr;
  // P·V for a group of G heads over n rows: out[g, d] = Σ_i p[g·n + i]·rows[i][d] in row order (fma), for d < D.
  // Register-blocked: 4 heads x 2 vectors of d stay in registers while the rows stream through.
  void (*pv)(const float* const* rows, std::int64_t n, const float* p, std::int64_t G, std::int64_t D,
             float* out) = nullptr;
};

struct select_attention_kernels {
  template <class Arch>
  attention_kernels operator()(Arch) const;
};

DSV4_CPU_EXTERN_KERNELS(attention)

}  // namespace dsv4::cpu::detail
