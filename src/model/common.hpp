// src/model/common.hpp — small helpers shared by the model-level code (attention, forward pass).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "dsv4/buffer.hpp"
#include "dsv4/error.hpp"
#include "dsv4/formats.hpp"
#include "dsv4/numerics.hpp"
#include "dsv4/ops/memory.hpp"
#include "dsv4/ref/rotary.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::model::detail {

// A BF16 or F32 vector (norm weights, sinks, ape) as fp32 on the host (read back from a device when it lives there).
inline std::vector<float> to_f32(const tensor_view& t) {
  if (!t.dev().is_cpu()) {
    DSV4_CHECK(t.is_contiguous(), "model", "expected a contiguous vector, got ", t.describe());
    buffer host(t.dt(), t.shape());
    ops::copy(t, host.view());
    return to_f32(host.view());
  }
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

// A contiguous buffer seen with another shape of the same size (on its device).
inline tensor_view as_shape(const tensor_view& b, std::initializer_list<std::int64_t> shape) {
  const tensor_view v(b.data(), b.dt(), shape, b.dev());
  DSV4_CHECK(v.numel() == b.numel() && b.is_contiguous(), "model", "reshape of ", b.describe(), " to ", v.describe());
  return v;
}

// An f32 vector as a buffer on `dev` (the small per-layer constants the row-wise ops read).
inline buffer f32_on(device dev, const std::vector<float>& v) {
  buffer b(dtype::f32, {static_cast<std::int64_t>(v.size())}, dev);
  ops::copy(tensor_view(const_cast<float*>(v.data()), dtype::f32, {static_cast<std::int64_t>(v.size())}), b.view());
  return b;
}

// Host copy of a device (or host) tensor's elements, for the bookkeeping that runs on the host.
template <class T>
std::vector<T> to_host(const tensor_view& t) {
  std::vector<T> out(static_cast<std::size_t>(t.numel()));
  ops::copy(t, tensor_view(out.data(), t.dt(), t.shape()));
  return out;
}

// round_activations on columns [off, off + n) of each row of a [rows, width] f32 buffer (official numerics only,
// which run on host tensors: the CUDA forward refuses them; a no-op under fp32 whatever the device).
inline void round_cols(numerics nm, const tensor_view& b, std::int64_t rows, std::int64_t width, std::int64_t off,
                       std::int64_t n) {
  if (nm != numerics::official) return;
  auto* p = static_cast<float*>(b.data());
  if (off == 0 && n == width) return round_activations(nm, p, rows * width);
  for (std::int64_t r = 0; r < rows; ++r) round_activations(nm, p + r * width + off, n);
}

}  // namespace dsv4::model::detail
