// dsv4/ref/rotary.hpp — the two small per-vector steps every attention path shares, defined once (spec §3.1, §3.2):
// RMSNorm of one vector and the interleaved-pair RoPE rotation. The model layer and the paged compressor op both
// call these, so a vector is normalized and rotated the same way wherever it is computed.
#pragma once

#include <cmath>
#include <cstdint>

namespace dsv4::ref {

// v <- v · rsqrt(mean(v²) + eps) (· w when given). The sum runs in double and the scale is rounded once to fp32, so
// a row's result does not depend on any other row.
inline void rms_norm(float* v, std::int64_t n, const float* w, double eps) noexcept {
  double ss = 0;
  for (std::int64_t i = 0; i < n; ++i) ss += double(v[i]) * v[i];
  const float r = static_cast<float>(1.0 / std::sqrt(ss / double(n) + eps));
  for (std::int64_t i = 0; i < n; ++i) v[i] = v[i] * r * (w ? w[i] : 1.f);
}

// Rotates the pairs (v[2i], v[2i+1]), i < pairs, by angle fp32(float(pos) · freq[i]) (inverse: the conjugate).
inline void rope_rotate(float* v, const float* freq, std::int64_t pairs, std::int64_t pos, bool inverse) noexcept {
  const float p = static_cast<float>(pos);
  for (std::int64_t i = 0; i < pairs; ++i) {
    const float ang = p * freq[i];
    const float c = std::cos(ang), s = inverse ? -std::sin(ang) : std::sin(ang);
    float& a = v[2 * i];
    float& b = v[2 * i + 1];
    const float na = a * c - b * s, nb = a * s + b * c;
    a = na;
    b = nb;
  }
}

}  // namespace dsv4::ref
