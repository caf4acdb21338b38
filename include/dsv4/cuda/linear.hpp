// dsv4/cuda/linear.hpp — CUDA backend of y = x · W^T over stored weight formats, numerics policy fp32 (ref:
// dsv4/ref/linear.hpp): every weight decoded exactly to fp32 in registers, fp32 fma accumulation.
//
// The dot order (one per weight format, the same for every T, so decode rows equal prefill rows bit for bit and a
// row never depends on the rest of the batch): a warp owns an output; lane l owns, in each group of 32·E elements
// of K, the E consecutive elements from 32·E·g + E·l (E = 4 for f32, 8 for bf16 / FP8 / FP4: one 16- or 8- or 4-byte
// load per lane); it fma-accumulates them in increasing k, group after group; then the 32 lane sums are added by the
// xor butterfly (offsets 16, 8, 4, 2, 1). Kernels differ only in how many tokens (1 for decode; 8 (f32) or 4 for
// prefill) and rows (4) a warp carries at once. Declarations only; cuda/linear.cu has the kernels.
#pragma once

#include <cstdint>

#include "dsv4/exec.hpp"
#include "dsv4/ref/linear.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::cuda {

// x [T, K], y [T, N] device views (inner stride 1); w a weight_ref over device memory (inner strides 1). Returns
// the count of weights that decode to NaN under check_policy::sync (ref's count), 0 otherwise (status_nan_code).
// Instantiated for TX, TY in {float, bf16}.
template <class TX, class TY>
std::int64_t linear(view<const TX, 2> x, const ref::weight_ref& w, view<TY, 2> y, const exec& ex);

}  // namespace dsv4::cuda
