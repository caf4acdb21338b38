// dsv4/ref/hadamard.hpp — scalar reference of the normalized Walsh–Hadamard transform (spec §6.5).
//
// In-place radix-2 butterflies in natural (Sylvester) order, fp32 throughout, then one multiply by fp32(n^-1/2):
// the same arithmetic as fast_hadamard_transform(x, scale = n^-0.5) in the official code. For n = 4^k the scale is
// exact; for odd powers of two fp32(n^-1/2) carries one rounding.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "dsv4/formats.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::ref {

inline float hadamard_scale(std::int64_t n) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(n))); }

// In place on one contiguous fp32 row of length n (a power of two).
inline void hadamard_row(float* v, std::int64_t n) noexcept {
  for (std::int64_t h = 1; h < n; h *= 2)
    for (std::int64_t i = 0; i < n; i += 2 * h)
      for (std::int64_t j = i; j < i + h; ++j) {
        const float a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
  const float s = hadamard_scale(n);
  for (std::int64_t j = 0; j < n; ++j) v[j] *= s;
}

// x, y [R, n]; y may alias x.
template <class TIn, class TOut>
void hadamard(view<const TIn, 2> x, view<TOut, 2> y) {
  const std::int64_t n = x.size(1);
  std::vector<float> row(static_cast<std::size_t>(n));
  for (std::int64_t r = 0; r < x.size(0); ++r) {
    for (std::int64_t j = 0; j < n; ++j) row[j] = to_f32(x(r, j));
    hadamard_row(row.data(), n);
    for (std::int64_t j = 0; j < n; ++j) y(r, j) = from_f32<TOut>(row[j]);
  }
}

}  // namespace dsv4::ref
