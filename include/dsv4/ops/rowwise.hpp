// dsv4/ops/rowwise.hpp — the small row-wise steps between the big ops of a block: RMSNorm, RoPE, the embedding
// gather, a scale, a non-finite count. The forward pass runs them through here so that one code path serves host and
// CUDA tensors (spec §3.1 RoPE, §4 norms; the formulas are ref's, dsv4/ref/rotary.hpp).
//
// Every op reads and writes f32 and works row by row, so a row's result never depends on the other rows (batch and
// chunk invariance). Host tensors run ref's loop (these steps move O(rows·n) floats and are nowhere near the cost of
// the linears around them); CUDA tensors run cuda/rowwise.cu, whose results agree with ref's within fp32 rounding:
// the RMSNorm sum of squares is in double on both (squares of floats are exact in double, so the sums differ only in
// the last bits of a 53-bit mantissa and the scale r rounds to the same float except next to a rounding boundary),
// and sin / cos come from a double-precision reduction and series on the device (cuda/rotary.cuh) where ref calls
// the C library's float functions (both within an ulp of the true value).
#pragma once

#include <cstdint>

#include "dsv4/exec.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::ops {

// y[r, :] = x[r, :] · fp32(1 / sqrt(Σ x² / n + eps)) · w   (w absent: 1), for every row r of x f32 [..., n];
// weight f32 [n] or absent (tensor_view{}); y f32 of x's shape, in place allowed (the same view).
void rms_norm(const tensor_view& x, const tensor_view& weight, double eps, const tensor_view& y, const exec& ex = {});

// RoPE in place: for every row t of x f32 [T, H, d] (or [T, d]) and every head, the pairs (x[off + 2i], x[off + 2i + 1]),
// i < pairs, rotate by fp32(float(positions[t]) · freq[i]) (inverse: by its negative). positions i64 [T] (>= 0),
// freq f32 [pairs], off + 2·pairs <= d.
void rope(const tensor_view& x, const tensor_view& positions, const tensor_view& freq, std::int64_t off, bool inverse,
          const exec& ex = {});

// out[t, :] = f32(table[ids[t], :]): ids i64 [T], table f32 | bf16 [V, D], out f32 [T, D]. An id outside [0, V) is an
// error naming it (host ids), or on the device a zero row and status_index_oob (exec's check policy).
void embed(const tensor_view& ids, const tensor_view& table, const tensor_view& out, const exec& ex = {});

// x *= s in place (x f32, any shape).
void scale(const tensor_view& x, float s, const exec& ex = {});

// How many values of x (f32, any shape) are NaN or ±Inf. On a CUDA tensor under check_policy::deferred or none the
// count is not read back: it returns 0 and (deferred) sets status_nonfinite_input when there was one.
std::int64_t count_non_finite(const tensor_view& x, const exec& ex = {});

}  // namespace dsv4::ops
