// dsv4/cpu/hadamard.hpp — CPU SIMD backend of the Walsh–Hadamard transform (ref: dsv4/ref/hadamard.hpp).
// xsimd butterflies per row, oneTBB over rows; equals ref up to re-association of the fp32 sums (bounded in the
// tests), identical for any thread count. Precondition: innermost strides 1 (checked by ops::hadamard).
#pragma once

#include "dsv4/exec.hpp"
#include "dsv4/formats.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::cpu {

// Instantiated in src/cpu/hadamard.cpp for TIn, TOut in {float, bf16}.
template <class TIn, class TOut>
void hadamard(view<const TIn, 2> x, view<TOut, 2> y, const exec& ex);

}  // namespace dsv4::cpu
