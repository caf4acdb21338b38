// dsv4/ops/quant.hpp — block quantizers and weight dequantization (spec §6.2–§6.4, §6.7).
//
// Every function validates its arguments (shapes, dtypes, devices, block sizes; dsv4::error on misuse), then runs
// on one backend chosen from where the data lives and exec::prefer (see dsv4/exec.hpp):
//   ref   include/dsv4/ref/quant.hpp   scalar spec, the semantics the others are tested against (bit-exact)
//   cpu   include/dsv4/cpu/quant.hpp   xsimd (AVX-512 / AVX2 / SSE2 chosen at run time) + oneTBB over rows
//   cuda  include/dsv4/cuda/quant.hpp  one warp per block, hardware cvt instructions
// Tensors may have any rank >= 1 and any strides; blocks run along the LAST dimension. On error the outputs are
// left unspecified.
#pragma once

#include "dsv4/exec.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::ops {

// Quantize x into codes and one UE8M0 scale per block of `block` values along the last dim:
//   x      [..., K]          f32 | bf16
//   q      [..., K]          fp8_e4m3 (blocks 32, 64, 128) | fp4_e2m1 (block 32), chosen by q's dtype
//   scale  [..., K / block]  ue8m0
// Per block: amax = max(max|x|, floor); s = 2^ceil(log2(amax · fp32(1/max))); q = RNE(clamp(x / s, ±max)),
// with (max, floor) = (448, 1e-4) for FP8 and (6, 6·2^-126) for FP4. K must be a multiple of block.
// A block holding inf or NaN is an error (dsv4::error naming the op and the count).
void block_quantize(const tensor_view& x, const tensor_view& q, const tensor_view& scale, int block,
                    const exec& ex = {});

// The quantize→dequantize round trip the architecture uses to simulate FP8 KV and FP4 indexer storage:
// y = float(q) · s, which is exactly representable in BF16. x and y: [..., K], f32 | bf16; y may alias x.
enum class quant_format { fp8_e4m3, fp4_e2m1 };
void block_round_trip(const tensor_view& x, const tensor_view& y, quant_format fmt, int block,
                      const exec& ex = {});

// Decode codes with tiled UE8M0 scales: out[n, k] = float(q[n, k]) · 2^(scale[n / block_rows, k / block_cols] - 127).
//   q      [N, K]                                         fp8_e4m3 | fp4_e2m1
//   scale  [ceil(N / block_rows), ceil(K / block_cols)]   ue8m0 (ragged edge tiles allowed)
//   out    [N, K]                                         f32 | bf16
// FP8 weights use 128x128 tiles; FP4 expert weights and activation blocks use 1 x 32 (or 1 x B). A NaN code
// (E4M3 S.1111.111) or NaN scale (0xFF) is an error.
void dequantize(const tensor_view& q, const tensor_view& scale, const tensor_view& out, int block_rows,
                int block_cols, const exec& ex = {});

}  // namespace dsv4::ops
