// src/cpu/linear_simd.hpp — per-ISA kernels of the CPU linear layer (declarations; see quant_simd.hpp for how ISAs
// are compiled and chosen).
#pragma once

#include <cstdint>

#include <xsimd/xsimd.hpp>

#include "simd_dispatch.hpp"

#include "dsv4/ref/linear.hpp"

namespace dsv4::cpu::detail {

inline constexpr int kMaxTileT = 4;   // tokens per register tile
inline constexpr int kMaxTileN = 8;   // weight rows per register tile (8 only for a single token, else 4)

struct linear_kernels {
  const char* isa = "";
  // W[n, 0:K) decoded to fp32 into out; returns how many weights decode to NaN (as ref::decode_row).
  std::int64_t (*decode_row)(const ref::weight_ref& w, std::int64_t n, float* out) = nullptr;
  // out[i·ldo + j] = x_i · w_j over K for i < mt, j < nt (x_i = x + i·ldx, w_j = w + j·ldw): the fixed-order dot
  // described in dsv4/cpu/linear.hpp. mt <= kMaxTileT; nt <= kMaxTileN when mt == 1, else nt <= 4.
  void (*dots)(const float* x, std::int64_t ldx, int mt, const float* w, std::int64_t ldw, int nt, std::int64_t K,
               float* out, std::int64_t ldo) = nullptr;
  // One token (decode): out[j] = x · W[n0 + j] for j < nt <= kMaxTileN, decoding the weights in registers instead of
  // through a panel; bitwise the same as decode_row + dots (same values, same fma chain). Returns false when this
  // ISA / format / K has no such kernel (the caller then uses the panel); *bad gets the NaN count as decode_row.
  bool (*gemv)(const float* x, const ref::weight_ref& w, std::int64_t n0, int nt, float* out,
               std::int64_t* bad) = nullptr;
};

struct select_linear_kernels {
  template <class Arch>
  linear_kernels operator()(Arch) const;
};

DSV4_CPU_EXTERN_KERNELS(linear)

}  // namespace dsv4::cpu::detail
