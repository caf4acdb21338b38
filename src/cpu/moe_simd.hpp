// src/cpu/moe_simd.hpp — per-ISA kernels of the CPU MoE routing (declarations; see quant_simd.hpp).
#pragma once

#include <cstdint>

#include <xsimd/xsimd.hpp>

#include "dsv4/ops/moe.hpp"
#include "quant_simd.hpp"

namespace dsv4::cpu::detail {

struct moe_kernels {
  const char* isa = "";
  // s[0:E) = score(l[0:E)) (see ref::score_row).
  void (*score_row)(const float* l, std::int64_t E, ops::score_func f, float* s) = nullptr;
};

struct select_moe_kernels {
  template <class Arch>
  moe_kernels operator()(Arch) const;
};

#if DSV4_CPU_SIMD
extern template moe_kernels select_moe_kernels::operator()<xsimd::avx512bw>(xsimd::avx512bw) const;
extern template moe_kernels select_moe_kernels::operator()<xsimd::fma3<xsimd::avx2>>(xsimd::fma3<xsimd::avx2>) const;
extern template moe_kernels select_moe_kernels::operator()<xsimd::sse2>(xsimd::sse2) const;
#endif

}  // namespace dsv4::cpu::detail
