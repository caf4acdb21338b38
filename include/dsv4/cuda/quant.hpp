// dsv4/cuda/quant.hpp — CUDA backend of the block quantizers and dequantization (ref: dsv4/ref/quant.hpp).
// Declarations only (no CUDA headers): kernels and launchers live in cuda/quant.cu. One warp per quantization
// block; codes come from the hardware/CUDA-math cvt routines (__nv_cvt_float_to_fp8 with __NV_SATFINITE,
// __nv_cvt_float_to_fp4 with cudaRoundNearest), which is what the official TileLang kernels use (spec §6.1).
// Views must point to device memory; any strides. Launches on exec::cuda_stream and waits for it.
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

}  // namespace dsv4::cuda
