// dsv4/cuda/quant.hpp — CUDA backend of the block quantizers and dequantization (ref: dsv4/ref/quant.hpp).
// Declarations only (no CUDA headers): kernels and launchers live in cuda/quant.cu. One warp per quantization
// block; codes from the hardware conversions where the GPU has them (FP8 everywhere, FP4 on Blackwell family
// targets), else the integer RNE encoders of formats.hpp: bitwise ref/quant.hpp for every input.
// Views must point to device memory on exec::device; any strides. Launches on exec::cuda_stream; what the kernels
// find goes where exec::checks says (dsv4/exec.hpp): the returned count is exact under check_policy::sync, 0 otherwise.
#pragma once

#include <cstdint>

#include "dsv4/exec.hpp"
#include "dsv4/formats.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::cuda {

// Instantiated in cuda/quant.cu for TIn, TOut in {float, bf16}, TCode in {fp8_e4m3, fp4x2}, Code in
// {fp8_e4m3, fp4_e2m1}. Return the count of blocks with non-finite input / NaN codes, like ref.
template <class TIn, class TCode>
std::int64_t block_quantize(view<const TIn, 2> x, view<TCode, 2> q, view<ue8m0, 2> scale, int block,
                            const exec& ex);

template <class Code, class TIn, class TOut>
std::int64_t block_round_trip(view<const TIn, 2> x, view<TOut, 2> y, int block, const exec& ex);

template <class TCode, class TOut>
std::int64_t dequantize(view<const TCode, 2> q, view<const ue8m0, 2> scale, view<TOut, 2> out, int br, int bc,
                        const exec& ex);

// How many of the 2^32 fp32 patterns (clamped to the format's range, as the quantizers clamp) the conversion the
// quantizers use on this GPU encodes differently from encode_e4m3_int / encode_e2m1_int (formats.hpp); 0 is the
// contract. format_bits: 8 (E4M3) or 4 (E2M1). check_policy::sync only.
std::int64_t conversion_mismatches(int format_bits, const exec& ex);

}  // namespace dsv4::cuda
