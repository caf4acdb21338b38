// dsv4/ops/memory.hpp — moving tensors between views and devices.
#pragma once

#include "dsv4/exec.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::ops {

// dst = src. Same dtype and shape. Host to host: any strides. Across devices (host <-> CUDA, CUDA <-> CUDA): both
// views contiguous.
void copy(const tensor_view& src, const tensor_view& dst, const exec& ex = {});

// Whether this build has the CUDA backend, and how many devices it sees (0 without a driver or GPU).
bool cuda_built();
int cuda_device_count();

}  // namespace dsv4::ops
