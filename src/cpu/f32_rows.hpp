// src/cpu/f32_rows.hpp — the typed-view edge of the CPU kernels that work on raw fp32 rows.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "dsv4/formats.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::cpu::detail {

// rows(xp, T, ldx, yp, ldy) on fp32 rows for x [T, K] -> y [T, N]: x read in place when it is fp32 (else widened
// from BF16 once), y written in place when it is fp32 with unit inner stride (else through scratch, then narrowed).
// Returns what rows returns (a NaN-weight count).
template <class TX, class TY, class Rows>
std::int64_t on_f32_rows(view<const TX, 2> x, std::int64_t K, view<TY, 2> y, std::int64_t N, Rows&& rows) {
  const std::int64_t T = x.size(0);
  std::vector<float> xs, ys;
  const float* xp;
  std::int64_t ldx;
  if constexpr (std::is_same_v<TX, float>) {
    xp = x.data;
    ldx = x.stride[0];
  } else {
    xs.resize(static_cast<std::size_t>(T * K));
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t k = 0; k < K; ++k) xs[static_cast<std::size_t>(t * K + k)] = to_f32(x(t, k));
    xp = xs.data();
    ldx = K;
  }
  if constexpr (std::is_same_v<TY, float>) {
    if (y.stride[1] == 1) return rows(xp, T, ldx, y.data, y.stride[0]);
  }
  ys.resize(static_cast<std::size_t>(T * N));
  const std::int64_t bad = rows(xp, T, ldx, ys.data(), N);
  for (std::int64_t t = 0; t < T; ++t)
    for (std::int64_t n = 0; n < N; ++n) y(t, n) = from_f32<TY>(ys[static_cast<std::size_t>(t * N + n)]);
  return bad;
}

}  // namespace dsv4::cpu::detail
