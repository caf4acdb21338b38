// src/model/common.hpp — small helpers shared by the model-level code (attention, forward pass).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "dsv4/error.hpp"
#include "dsv4/formats.hpp"
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

// RMSNorm of one vector in place: v <- v · rsqrt(mean(v²) + eps) (· w when given). The sum runs in double and the
// scale is rounded once to fp32, so a row's result does not depend on the other rows.
inline void rms_norm(float* v, std::int64_t n, const float* w, double eps) {
  double ss = 0;
  for (std::int64_t i = 0; i < n; ++i) ss += double(v[i]) * v[i];
  const float r = static_cast<float>(1.0 / std::sqrt(ss / double(n) + eps));
  for (std::int64_t i = 0; i < n; ++i) v[i] = v[i] * r * (w ? w[i] : 1.f);
}

}  // namespace dsv4::model::detail
