// dsv4/ops/hadamard.hpp — normalized Walsh–Hadamard transform along the last dimension (spec §6.5).
//
// y = n^-1/2 · H_n · x with H_n the Sylvester (natural-order) ±1 matrix, H_n[i][j] = (-1)^popcount(i & j);
// no random signs. Computed in fp32, rounded to y's dtype. Backends: ref/hadamard.hpp (fp32 butterflies),
// cpu/hadamard.hpp (xsimd + oneTBB), cuda/hadamard.hpp (one CUDA block per row, shared memory).
#pragma once

#include "dsv4/exec.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::ops {

// x, y: [..., n] f32 | bf16, n a power of two (n >= 1); y may alias x.
void hadamard(const tensor_view& x, const tensor_view& y, const exec& ex = {});

}  // namespace dsv4::ops
