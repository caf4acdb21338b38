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
};

struct select_attention_kernels {
  template <class Arch>
  attention_kernels operator()(Arch) const;
};

DSV4_CPU_EXTERN_KERNELS(attention)

}  // namespace dsv4::cpu::detail
