// src/cpu/linear_simd.hpp — per-ISA kernels of the CPU linear layer (declarations; see quant_simd.hpp for how ISAs
// are compiled and chosen).
//
// The dot order. Every output is one fp32 dot over K with a W-lane vector accumulator (one fma per W elements, in
// increasing position), a fixed horizontal add, then the K % W tail in order. "Position" is K in a lane order that
// the ISA may choose per weight format so that its weight decode needs no shuffles back into element order
// (AVX-512: FP4 takes the even then the odd elements of every 32-block, FP8 a 4x4 transpose of 4-element groups in
// every 64-block; see linear_simd_impl.hpp). The decode GEMV and the panel path (decode_row + dots on x passed
// through order_x) run that one order, so an output row is bit-identical whatever T, the tile it lands in and the
// thread count.
#pragma once

#include <cstdint>

#include <xsimd/xsimd.hpp>

#include "simd_dispatch.hpp"

#include "dsv4/ref/linear.hpp"

namespace dsv4::cpu::detail {

inline constexpr int kMaxTileN = 8;   // weight rows per decode GEMV call
inline constexpr int kMaxPanelRows = 64;  // decoded weight rows per panel_dots call
inline constexpr int kMaxGemvTokens = 4;  // tokens per decode GEMV call
inline constexpr int kPackTokens = 6;     // tokens per tile of the packed x of panel_gemm
// Row stride of a decoded panel: K rounded up to the 16-lane vector.
constexpr std::int64_t panel_ld(std::int64_t K) { return (K + 15) / 16 * 16; }
// Token tiles of the packed x of T tokens.
constexpr std::int64_t pack_tiles(std::int64_t T) { return (T + kPackTokens - 1) / kPackTokens; }
// Weight rows per decode GEMV call of mt tokens: its mt x rows accumulators (and the decoded rows) fit the 32
// vector registers.
constexpr int gemv_rows(int mt) { return mt <= 2 ? kMaxTileN : 4; }

struct linear_kernels {
  const char* isa = "";
  // Whether W's dots run in a lane order other than element order (then x goes through order_x first).
  bool (*permutes)(const ref::weight_ref& w) = nullptr;
  // out [T, K] (row stride K) = x [T, K] (row stride ldx) in W's lane order.
  void (*order_x)(const ref::weight_ref& w, const float* x, std::int64_t T, std::int64_t ldx, float* out) = nullptr;
  // W[n, 0:K) decoded to fp32 into out, in W's lane order. NaN codes decode to NaN (not counted here: the caller
  // counts them on the rows whose outputs came out NaN).
  void (*decode_row)(const ref::weight_ref& w, std::int64_t n, float* out) = nullptr;
  // y[t·ldy + j] = x_t · w_j over K for t < T, j < nrows <= kMaxPanelRows (x_t = x + t·ldx, w_j = w + j·ldw: a
  // decoded panel), the dot order above.
  void (*panel_dots)(const float* x, std::int64_t ldx, std::int64_t T, const float* w, std::int64_t ldw, int nrows,
                     std::int64_t K, float* y, std::int64_t ldy) = nullptr;
  // Decode and small batches: out[i·ldo + j] = x_i · W[n0 + j] for i < mt <= kMaxGemvTokens (x_i = x + i·ldx, in
  // W's lane order) and j < nt <= gemv_rows(mt), n0 % 4 == 0, the weights decoded in registers once for all mt
  // tokens: bitwise decode_row + dots. Returns false when this ISA / format / K has no such kernel (the caller then
  // uses the panel).
  bool (*gemv)(const float* x, std::int64_t ldx, int mt, const ref::weight_ref& w, std::int64_t n0, int nt,
               float* out, std::int64_t ldo) = nullptr;
  // Prefill (null where this ISA has none; then panel_dots): x (element order) repacked once per call by pack_x
  // (packed_x_floats(T, K) floats; tiles [tile0, tile1) of kPackTokens tokens per call), and panel_gemm = panel_dots
  // on that packed x for W rows [n0, n0 + nrows), nrows <= kMaxPanelRows, which it decodes itself (x, element order,
  // is still read for the K % 16 tail). Same bits as decode_row + panel_dots.
  std::int64_t (*packed_x_floats)(std::int64_t T, std::int64_t K) = nullptr;
  void (*pack_x)(const ref::weight_ref& w, const float* x, std::int64_t ldx, std::int64_t T, std::int64_t tile0,
                 std::int64_t tile1, float* out) = nullptr;
  void (*panel_gemm)(const float* xp, const float* x, std::int64_t ldx, std::int64_t T, const ref::weight_ref& w,
                     std::int64_t n0, int nrows, float* y, std::int64_t ldy) = nullptr;
};

struct select_linear_kernels {
  template <class Arch>
  linear_kernels operator()(Arch) const;
};

DSV4_CPU_EXTERN_KERNELS(linear)

}  // namespace dsv4::cpu::detail
