// dsv4/dsv4.hpp — umbrella header for users of the library (the library itself includes what it uses).
#pragma once

#include "dsv4/buffer.hpp"
#include "dsv4/dlpack.hpp"
#include "dsv4/dtype.hpp"
#include "dsv4/error.hpp"
#include "dsv4/exec.hpp"
#include "dsv4/formats.hpp"
#include "dsv4/model_traits.hpp"
#include "dsv4/ops/hadamard.hpp"
#include "dsv4/ops/linear.hpp"
#include "dsv4/ops/memory.hpp"
#include "dsv4/ops/mhc.hpp"
#include "dsv4/ops/moe.hpp"
#include "dsv4/ops/quant.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4 {
inline constexpr const char* kVersion = "0.1.0";
}
