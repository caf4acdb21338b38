// src/cpu/hadamard_simd.hpp — per-ISA SIMD row kernel of the Walsh–Hadamard transform (declarations; see
// quant_simd.hpp for how ISAs are compiled and chosen).
#pragma once

#include <cstdint>

#include <xsimd/xsimd.hpp>

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

#if defined(__x86_64__) || defined(_M_X64)
extern template hadamard_kernels select_hadamard_kernels::operator()<xsimd::avx512bw>(xsimd::avx512bw) const;
extern template hadamard_kernels select_hadamard_kernels::operator()<xsimd::fma3<xsimd::avx2>>(
    xsimd::fma3<xsimd::avx2>) const;
extern template hadamard_kernels select_hadamard_kernels::operator()<xsimd::sse2>(xsimd::sse2) const;
#endif

}  // namespace dsv4::cpu::detail
