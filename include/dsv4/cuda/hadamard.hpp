// dsv4/cuda/hadamard.hpp — CUDA backend of the Walsh–Hadamard transform (ref: dsv4/ref/hadamard.hpp).
// One thread block per row, the row in shared memory, fp32 butterflies in the ref's order (bit-identical to ref).
// Rows up to 8192 values (32 KiB of shared memory); longer rows are an error. Kernels in cuda/hadamard.cu.
#pragma once

#include "dsv4/exec.hpp"
#include "dsv4/formats.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::cuda {

// Instantiated for TIn, TOut in {float, bf16}.
template <class TIn, class TOut>
void hadamard(view<const TIn, 2> x, view<TOut, 2> y, const exec& ex);

}  // namespace dsv4::cuda
