// dsv4/cuda/rowwise.hpp — CUDA backend of dsv4/ops/rowwise.hpp (ref: dsv4/ref/rotary.hpp). Declarations only;
// kernels in cuda/rowwise.cu.
//   rms_norm: a warp per row; each lane sums the squares of its columns in double, a fixed xor butterfly adds the
//             lanes (the same order every run), r = fp32(1 / sqrt(ss / n + eps)), y = x · r · w in fp32 as ref.
//   rope:     a thread per (row, head, pair), sin / cos from cuda/rotary.cuh.
//   embed:    a thread per value; ids outside [0, V) give a zero row and status_index_oob.
//   scale, count_non_finite: elementwise (the count through the launch's status word: sync returns it).
#pragma once

#include <cstdint>

#include "dsv4/exec.hpp"
#include "dsv4/formats.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::cuda {

void rms_norm(view<const float, 2> x, const float* weight, double eps, view<float, 2> y, const exec& ex);
void rope(view<float, 3> x, const std::int64_t* positions, const float* freq, std::int64_t pairs, std::int64_t off,
          bool inverse, const exec& ex);
// Instantiated for TT in {float, bf16}.
template <class TT>
void embed(const std::int64_t* ids, view<const TT, 2> table, view<float, 2> out, const exec& ex);
void scale(view<float, 2> x, float s, const exec& ex);
std::int64_t count_non_finite(view<const float, 2> x, const exec& ex);

}  // namespace dsv4::cuda
