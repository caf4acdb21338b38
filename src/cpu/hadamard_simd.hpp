// src/cpu/hadamard_simd.hpp — per-ISA SIMD row kernel of the Walsh–Hadamard transform (declarations; see
// quant_simd.hpp for how ISAs are compiled and chosen).
#pragma once

#include <cstdint>

#include <xsimd/xsimd.hpp>

#include "simd_dispatch.hpp"

namespace dsv4::cpu::detail {

struct hadamard_kernels {
  const char* isa = "";
  // In place on a contiguous fp32 row of n = 2^k values, then times `scale`.
  void (*row)(float* v, std::int64_t n, float scale) = nullptr;
};

struct select_hadamard_kernels {
  template <class Arch>
  hadamard_kernels operator()(Arch) const;
};

DSV4_CPU_EXTERN_KERNELS(hadamard)

}  // namespace dsv4::cpu::detail
