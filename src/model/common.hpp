// src/model/common.hpp — small helpers shared by the model-level code (attention, forward pass).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "dsv4/error.hpp"
#include "dsv4/formats.hpp"
#include "dsv4/ref/rotary.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::model::detail {

// A BF16 or F32 vector (norm weights, sinks, ape) as fp32.
inline std::vector<float> to_f32(const tensor_view& t) {
  std::vector<float> out(static_cast<std::size_t>(t.numel()));
  if (t.dt() == dtype::f32) {
    std::memcpy(out.data(), t.data(), out.size() * sizeof(float));
  } else {
    DSV4_CHECK(t.dt() == dtype::bf16, "model", "expected a BF16 or F32 vector, got ", t.describe());
    const auto* p = static_cast<const bf16*>(t.data());
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = p[i].to_float();
  }
  return out;
}

// RMSNorm of one vector in place (the one definition: dsv4/ref/rotary.hpp).
inline void rms_norm(float* v, std::int64_t n, const float* w, double eps) { ref::rms_norm(v, n, w, eps); }

}  // namespace dsv4::model::detail
