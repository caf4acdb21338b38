// dsv4/ref/linear.hpp — scalar reference of y = x · W^T over stored weight formats (spec §6.4, policy fp32).
//
// weight_ref is the typed, validated form of ops::qweight that kernels see (one of four formats). decode_row is the
// one definition of what a stored weight means: W[n, k] = code · 2^(scale - 127), exact in fp32.
#pragma once

#include <cstdint>
#include <vector>

#include "dsv4/formats.hpp"
#include "dsv4/ref/flops.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::ref {

enum class wfmt : std::uint8_t { f32, bf16, fp8_b128, fp4_b32 };

// Tile sizes of the block scales (spec §6.7).
inline constexpr std::int64_t kFp8WeightTile = 128;  // 128x128 tiles of FP8 weights
inline constexpr std::int64_t kFp4WeightBlock = 32;  // 1x32 blocks along K of FP4 weights

struct weight_ref {
  wfmt fmt = wfmt::f32;
  std::int64_t n = 0, k = 0;  // W is [n, k] in elements
  view<const float, 2> f32;
  view<const bf16, 2> bf;
  view<const fp8_e4m3, 2> f8;
  view<const fp4x2, 2> f4;     // [n, k/2] bytes
  view<const ue8m0, 2> scale;  // fp8: [ceil(n/128), ceil(k/128)]; fp4: [n, k/32]
};

// W[n, k0:k1) decoded to fp32 into out[0 : k1-k0). For fp4, k0 and k1 are even. Returns how many of those weights
// decode to NaN (a NaN code, or any code under a NaN 0xFF scale).
inline std::int64_t decode_row(const weight_ref& w, std::int64_t n, std::int64_t k0, std::int64_t k1,
                               float* out) noexcept {
  std::int64_t bad = 0;
  switch (w.fmt) {
    case wfmt::f32:
      for (std::int64_t k = k0; k < k1; ++k) out[k - k0] = w.f32(n, k);
      break;
    case wfmt::bf16:
      for (std::int64_t k = k0; k < k1; ++k) out[k - k0] = w.bf(n, k).to_float();
      break;
    case wfmt::fp8_b128:
      for (std::int64_t k = k0; k < k1; ++k) {
        const ue8m0 s = w.scale(n / kFp8WeightTile, k / kFp8WeightTile);
        const fp8_e4m3 c = w.f8(n, k);
        bad += s.bits == 0xFF || (c.bits & 0x7F) == 0x7F;
        out[k - k0] = c.to_float() * s.to_float();
      }
      break;
    case wfmt::fp4_b32:
      for (std::int64_t k = k0; k < k1; k += 2) {
        const ue8m0 s = w.scale(n, k / kFp4WeightBlock);
        bad += s.bits == 0xFF ? 2 : 0;
        const fp4x2 b = w.f4(n, k / 2);
        out[k - k0] = b.lo().to_float() * s.to_float();
        out[k - k0 + 1] = b.hi().to_float() * s.to_float();
      }
      break;
  }
  return bad;
}

// y [T, N] = x [T, K] · W^T: each output one dot product accumulated in double, rounded once to fp32 (then to TY).
// Returns how many decoded weights were NaN (see decode_row).
template <class TX, class TY>
std::int64_t linear(view<const TX, 2> x, const weight_ref& w, view<TY, 2> y) {
  std::vector<float> row(static_cast<std::size_t>(w.k));
  std::int64_t bad = 0;
  count_flops(static_cast<std::uint64_t>(2 * x.size(0) * w.n * w.k));
  for (std::int64_t n = 0; n < w.n; ++n) {
    bad += decode_row(w, n, 0, w.k, row.data());
    for (std::int64_t t = 0; t < x.size(0); ++t) {
      double acc = 0;
      for (std::int64_t k = 0; k < w.k; ++k) acc += double(to_f32(x(t, k))) * row[static_cast<std::size_t>(k)];
      y(t, n) = from_f32<TY>(static_cast<float>(acc));
    }
  }
  return bad;
}

}  // namespace dsv4::ref
