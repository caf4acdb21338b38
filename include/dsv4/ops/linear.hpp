// dsv4/ops/linear.hpp — y = x · W^T with W in any of the stored weight formats of V4 (spec §1.2, §6.4).
//
// Numerics (dsv4/numerics.hpp):
//   fp32      the weight is decoded exactly to fp32 (FP8 / FP4 codes times their UE8M0 scales, BF16 widened) and every
//             output is one fp32 dot product over K;
//   official  FP8 / FP4 weights: x quantized to FP8 per 1x128 block (UE8M0), an exact partial sum per K block of the
//             weight format (128 FP8, 32 FP4) promoted into an fp32 accumulator in increasing k, the output rounded
//             to BF16 (the official fp8_gemm / fp4_gemm); dense weights: the BF16 GEMM (x rounded to BF16, fp32
//             accumulation, BF16 output). Semantics: dsv4/ref/official.hpp. The CPU backend sums each block with
//             BF16 dot products in a fixed order (src/cpu/linear_official.cpp): bitwise the reference when a block's
//             fp32 partial sums are exact, else within fp32 rounding of each block.
//
// Backends: ref (double accumulation, the most accurate version of the formula), cpu (xsimd + oneTBB) and cuda
// (fp32 policy; dsv4/cuda/linear.hpp: weights decoded in registers, one warp per output with a fixed lane partition
// and butterfly). On each backend y[t, n] depends only on x[t, :] and W[n, :] — not on T, on which other rows are in
// the batch, or on the thread count — so prefill, chunked prefill and decode give bit-identical rows. The backends
// sum in different orders, so they agree within fp32 rounding, not bitwise.
#pragma once

#include <string>

#include "dsv4/exec.hpp"
#include "dsv4/numerics.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::ops {

// A linear layer's weight as stored in the checkpoint:
//   dense: weight [N, K] f32 | bf16, scale empty;
//   FP8:   weight [N, K] fp8_e4m3, scale [ceil(N/128), ceil(K/128)] ue8m0 (one scale per 128x128 tile);
//   FP4:   weight [N, K] fp4_e2m1 (packed, element 2c in the low nibble), scale [N, K/32] ue8m0 (1x32 along K).
// The checkpoint stores FP4 as I8 [N, K/2]; view those bytes as fp4_e2m1 [N, K] (same memory).
struct qweight {
  tensor_view weight;
  tensor_view scale;
  std::string name{};  // the checkpoint tensor it came from ("layers.3.attn.wq_a"), named in every message; optional
};

// x [T, K] f32 | bf16, y [T, N] f32 | bf16. Errors: shape, dtype or scale-layout mismatch; a NaN code or a NaN
// (0xFF) scale met while decoding (counted and reported, never propagated silently).
void linear(const tensor_view& x, const qweight& w, const tensor_view& y, const exec& ex = {},
            numerics nm = numerics::fp32);

// Short description of a weight for messages: "layers.3.ffn.experts.7.w1 (fp4_e2m1[2048, 4096] + scale ...)".
std::string describe(const qweight& w);

}  // namespace dsv4::ops
