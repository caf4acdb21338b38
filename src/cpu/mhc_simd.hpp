// src/cpu/mhc_simd.hpp — per-ISA kernels of the CPU mHC backend (declarations; see quant_simd.hpp).
#pragma once

#include <cstdint>

#include <xsimd/xsimd.hpp>

#include "simd_dispatch.hpp"


namespace dsv4::cpu::detail {

struct mhc_kernels {
  const char* isa = "";
  int width = 1;  // fp32 lanes
  // One pass over a chunk x[0:len) (len % width == 0) of a token's flattened streams: lane accumulators
  // acc[0] += x², acc[1 + o] += x · fn[o·ldfn + 0:len) for o < m. acc is [(m + 1)·width] floats.
  void (*mix_chunk)(const float* x, std::int64_t len, const float* fn, std::int64_t ldfn, int m, float* acc) = nullptr;
  // Horizontal sum of `width` lanes, in the fixed order of the ISA.
  float (*hsum)(const float* lanes) = nullptr;
  // Sinkhorn–Knopp on `width` matrices at once, structure of arrays: c[(i·n + j)·width + lane]; the ref's exact
  // sequence of operations per lane (the exp comes from xsimd).
  void (*sinkhorn)(float* c, int n, int iters, float eps) = nullptr;
  // out[0:len) = a·f + Σ_j coef[j]·xs[j][0:len) (f may be null: then the sum alone), fp32, left to right.
  void (*combine)(const float* const* xs, const float* coef, int nx, const float* f, float a, std::int64_t len,
                  float* out) = nullptr;
};

struct select_mhc_kernels {
  template <class Arch>
  mhc_kernels operator()(Arch) const;
};

DSV4_CPU_EXTERN_KERNELS(mhc)

}  // namespace dsv4::cpu::detail
