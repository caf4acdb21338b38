// src/cpu/moe_simd.hpp — per-ISA kernels of the CPU MoE routing (declarations; see quant_simd.hpp).
#pragma once

#include <cstdint>

#include <xsimd/xsimd.hpp>

#include "simd_dispatch.hpp"

#include "dsv4/ops/moe.hpp"

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

DSV4_CPU_EXTERN_KERNELS(moe)

}  // namespace dsv4::cpu::detail
