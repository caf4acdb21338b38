// src/cpu/attention_simd.hpp — per-ISA vector primitives of the attention kernels (declarations; see
// simd_dispatch.hpp for how ISAs are compiled and chosen).
#pragma once

#include <cstdint>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "simd_dispatch.hpp"

namespace dsv4::cpu::detail {

// One query token packed for the FP4 indexer kernel (src/cpu/indexer_fp4_impl.hpp; built by pack_fp4_query in
// attention.cpp). Heads in 16 lanes, `groups` = ceil(H / 16) vectors of them; padded heads are zero queries with zero
// weights.
struct fp4_qpack {
  bool ok = false;                 // the whole token is inside the kernel's envelope (else: reference scoring)
  int groups = 0;
  std::int64_t C = 0;
  std::vector<std::int32_t> qv;    // [2 · C/8 chunks][groups][16]: 4 signed bytes 2·code · 2^(eq_b − eq_min) each;
                                   // chunks 0 .. C/8−1 hold elements 8j, 8j+2, 8j+4, 8j+6, the rest 8j+1, 8j+3, ...
  std::vector<std::int8_t> qh;     // [groups·16][C]: the same bytes per head, evens then odds (the portable kernel)
  std::vector<std::int32_t> corr;  // [groups][16]: 128 · Σ_c of those bytes (the key bias)
  std::vector<float> qscale;       // [groups][16]: 2^(eq_min − 2)
  std::vector<float> w;            // [groups][16]: head weights
  int ek_lo = 0, ek_hi = -1;       // key exponents (min over its blocks) for which every scale product stays normal
  bool official = false;           // numerics official: BF16 dot, BF16 weighted ReLU, plain adds, BF16 score
};

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
  // FP4 indexer scores of n keys of one page (codes + i·C/2, scale bytes + i·C/32) for one packed query: bitwise
  // ref::fp4_score; skipped[i] = 1 marks keys the caller must score with the reference. AVX512-VNNI, else exact
  // integer dots in portable code the compiler vectorizes for the ISA.
  bool (*index_fp4)(const fp4_qpack& q, const std::uint8_t* codes, const std::uint8_t* scales, std::int64_t n,
                    float* out, std::uint8_t* skipped) = nullptr;
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
