// dsv4/cpu/linear.hpp — CPU SIMD backend of y = x · W^T over stored weight formats (ref: dsv4/ref/linear.hpp).
//
// Weight rows are decoded in blocks of 16 into an fp32 panel (SIMD nibble / byte decode with the UE8M0 scale), then
// register tiles of up to 4 tokens x 4 rows (x 8 rows for a single token) take dot products along K with one fp32
// vector accumulator per output: lane l sums k = l (mod W) in increasing k, then a fixed horizontal add, then the
// K % W tail in order. That order depends on nothing but K, so an output row is bit-identical whatever T, the tile
// it landed in and the thread count (oneTBB over row blocks). On AVX-512, more than 16 tokens (FP4: 48) run the
// same order as 16 per-lane GEMMs (register-blocked outer products over a transposed panel), fewer a fused decode
// GEMV.
// Preconditions (checked by ops::linear): innermost strides 1.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "dsv4/exec.hpp"
#include "dsv4/ref/linear.hpp"

namespace dsv4::cpu {

// Instantiated for TX, TY in {float, bf16}. Returns how many weights decoded to NaN (see ref::decode_row).
template <class TX, class TY>
std::int64_t linear(view<const TX, 2> x, const ref::weight_ref& w, view<TY, 2> y, const exec& ex);

// The same on raw fp32 rows: y[t·ldy + n] = x[t·ldx + :] · W[n, :] for t < T (the MoE dispatch calls this on
// gathered tokens).
std::int64_t linear_f32(const float* x, std::int64_t T, std::int64_t ldx, const ref::weight_ref& w, float* y,
                        std::int64_t ldy, const exec& ex);

// The pieces of linear_f32, for callers that run many linears in one parallel region (the MoE decode):
//   lane_order    x [T, K] in W's lane order (the order this ISA's decode produces, src/cpu/linear_simd.hpp): x
//                 itself when that is element order, else a copy in buf; *ld gets the row stride to use;
//   pack_panel_x  x (element order) packed for the prefill GEMM into buf, or null where that GEMM does not run
//                 (T up to the decode GEMV's token count, an ISA without it);
//   linear_blocks output rows [b0·16, b1·16) ∩ [0, N) for all T tokens on the calling thread; x from lane_order,
//                 or with xp from pack_panel_x, x itself; returns how many weights of those rows decode to NaN.
inline constexpr std::int64_t kLinearRowBlock = 16;  // rows per block: 16·K fp32 (256 KiB at K = 4096) stays in L2
// Up to this many tokens a call runs the decode GEMV (where this ISA has one for W), past it the prefill GEMM:
// FP4 weights longer (measurements in src/cpu/linear.cpp).
inline constexpr std::int64_t kGemvMaxTokens = 16, kGemvMaxTokensFp4 = 48;
inline std::int64_t linear_row_blocks(const ref::weight_ref& w) {
  return (w.n + kLinearRowBlock - 1) / kLinearRowBlock;
}
const float* lane_order(const ref::weight_ref& w, const float* x, std::int64_t T, std::int64_t ldx,
                        std::vector<float>& buf, std::int64_t* ld, const exec& ex);
const float* pack_panel_x(const ref::weight_ref& w, const float* x, std::int64_t T, std::int64_t ldx,
                          std::unique_ptr<float[]>& buf, const exec& ex);
std::int64_t linear_blocks(const float* x, std::int64_t T, std::int64_t ldx, const ref::weight_ref& w, float* y,
                           std::int64_t ldy, std::int64_t b0, std::int64_t b1, const float* xp = nullptr);

// The `official` policy (ref: dsv4/ref/official.hpp, linear; src/cpu/linear_official.cpp): FP8 / FP4 weights through
// Q8 activations and per-block promotion on BF16 dot products (AVX512-BF16 where the CPU has it and
// DSV4_CPU_NO_BF16 is unset, else portable code in the same order: the same bits); dense weights as the BF16 GEMM.
// Outputs are BF16 values. Batch- and thread-count-invariant per row, like linear().
template <class TX, class TY>
std::int64_t linear_official(view<const TX, 2> x, const ref::weight_ref& w, view<TY, 2> y, const exec& ex);
std::int64_t linear_official_f32(const float* x, std::int64_t T, std::int64_t ldx, const ref::weight_ref& w, float* y,
                                 std::int64_t ldy, const exec& ex);
// Whether linear_official runs on vdpbf16ps here (benchmarks report it).
bool official_bf16_dot();

}  // namespace dsv4::cpu
