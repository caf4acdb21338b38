// dsv4/cpu/quant.hpp — CPU SIMD backend of the block quantizers and dequantization (ref: dsv4/ref/quant.hpp).
//
// xsimd kernels for the best ISA of the running CPU (AVX-512BW, AVX2+FMA or SSE2, chosen once at run time), oneTBB
// over rows. Bit-identical to ref for every input and thread count. Preconditions (checked by ops::): views
// validated, innermost strides 1, block a multiple of 16 and at most 128.
#pragma once

#include <cstdint>

#include "dsv4/exec.hpp"
#include "dsv4/formats.hpp"
#include "dsv4/tensor.hpp"

// The templates below are defined and explicitly instantiated in src/cpu/quant.cpp for TIn, TOut in {float, bf16},
// TCode in {fp8_e4m3, fp4x2} and Code in {fp8_e4m3, fp4_e2m1}.
namespace dsv4::cpu {

// The ISA the CPU kernels run with ("avx512bw", "fma3+avx2", "sse2"), or nullptr when this machine or build has no
// SIMD kernels (then ops:: falls back to ref).
const char* simd_isa() noexcept;

template <class TIn, class TCode>
std::int64_t block_quantize(view<const TIn, 2> x, view<TCode, 2> q, view<ue8m0, 2> scale, int block,
                            const exec& ex);

template <class Code, class TIn, class TOut>
std::int64_t block_round_trip(view<const TIn, 2> x, view<TOut, 2> y, int block, const exec& ex);

template <class TCode, class TOut>
std::int64_t dequantize(view<const TCode, 2> q, view<const ue8m0, 2> scale, view<TOut, 2> out, int br, int bc,
                        const exec& ex);


}  // namespace dsv4::cpu
