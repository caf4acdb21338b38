// dsv4/ref/quant.hpp — scalar reference of the block quantizers (spec §6.2, §6.3) and of tiled dequantization
// (spec §1.2, §6.4). Plain loops, one block at a time, every step written as the spec states it. This is the
// semantics the cpu/ and cuda/ backends must reproduce bit for bit.
//
// Kernels are noexcept and never throw: ops::block_quantize & co. validated the views. They return the number of
// blocks holding a non-finite value (quantizers) or a NaN code/scale (dequantize); the caller turns a non-zero
// count into a dsv4::error.
#pragma once

#include <cstdint>
#include <type_traits>

#include "dsv4/formats.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::ref {

namespace detail {

// The code type's scalar encoder (RNE + saturation, formats.hpp).
template <class Code> Code encode(float v);
template <> inline fp8_e4m3 encode<fp8_e4m3>(float v) { return fp8_e4m3::from_float(v); }
template <> inline fp4_e2m1 encode<fp4_e2m1>(float v) { return fp4_e2m1::from_float(v); }

// Spec §6.2 steps 1–4 for one block: returns the UE8M0 scale byte and writes the clamped, rounded codes via emit(i,
// code). `ok` turns false when the block holds inf or NaN.
template <class Code, class Load, class Emit>
std::uint8_t quantize_block(int n, Load load, Emit emit, bool& ok) noexcept {
  using tr = block_quant_traits<Code>;
  float amax = 0.f;
  for (int i = 0; i < n; ++i) {
    const float a = ::fabsf(load(i));
    if (!(a <= 3.4028235e38f)) ok = false;  // inf or NaN
    amax = a > amax ? a : amax;
  }
  const std::uint8_t sbyte = ue8m0_ceil_scale(amax, tr::kAmaxFloor, tr::kInvMax);
  const float s = ue8m0{sbyte}.to_float();
  for (int i = 0; i < n; ++i) {
    float v = load(i) / s;  // exact: s is a power of two
    v = v > tr::kMax ? tr::kMax : (v < -tr::kMax ? -tr::kMax : v);
    emit(i, encode<Code>(v), s);
  }
  return sbyte;
}

}  // namespace detail

// x [R, K] -> q [R, K] (fp8_e4m3) or [R, K/2] bytes (fp4x2), scale [R, K/block].
template <class TIn, class TCode>
std::int64_t block_quantize(view<const TIn, 2> x, view<TCode, 2> q, view<ue8m0, 2> scale, int block) noexcept {
  constexpr bool is_fp4 = std::is_same_v<TCode, fp4x2>;
  using Code = std::conditional_t<is_fp4, fp4_e2m1, fp8_e4m3>;
  std::int64_t bad = 0;
  for (std::int64_t r = 0; r < x.size(0); ++r) {
    for (std::int64_t b = 0; b < scale.size(1); ++b) {
      const std::int64_t k0 = b * block;
      bool ok = true;
      Code even{};  // fp4: element 2c waits for element 2c+1, then both go into one byte (2c in the low nibble)
      const std::uint8_t sbyte = detail::quantize_block<Code>(
          block, [&](int i) { return to_f32(x(r, k0 + i)); },
          [&](int i, Code c, float) {
            if constexpr (is_fp4) {
              if (i % 2 == 0)
                even = c;
              else
                q(r, (k0 + i) / 2) = fp4x2::pack(even, c);
            } else {
              q(r, k0 + i) = c;
            }
          },
          ok);
      scale(r, b) = ue8m0{sbyte};
      bad += ok ? 0 : 1;
    }
  }
  return bad;
}

// y = float(quantize(x)) · s per block (exact in BF16); y may alias x.
template <class Code, class TIn, class TOut>
std::int64_t block_round_trip(view<const TIn, 2> x, view<TOut, 2> y, int block) noexcept {
  std::int64_t bad = 0;
  float tmp[128];  // one block; ops:: caps block at 128
  for (std::int64_t r = 0; r < x.size(0); ++r) {
    for (std::int64_t k0 = 0; k0 < x.size(1); k0 += block) {
      bool ok = true;
      for (int i = 0; i < block; ++i) tmp[i] = to_f32(x(r, k0 + i));  // read the block before y overwrites it
      detail::quantize_block<Code>(
          block, [&](int i) { return tmp[i]; },
          [&](int i, Code c, float s) { y(r, k0 + i) = from_f32<TOut>(c.to_float() * s); }, ok);
      bad += ok ? 0 : 1;
    }
  }
  return bad;
}

// out[n, k] = float(q[n, k]) · 2^(scale[n / br, k / bc] - 127).
template <class TCode, class TOut>
std::int64_t dequantize(view<const TCode, 2> q, view<const ue8m0, 2> scale, view<TOut, 2> out, int br,
                        int bc) noexcept {
  constexpr bool is_fp4 = std::is_same_v<TCode, fp4x2>;
  std::int64_t bad = 0;
  for (std::int64_t n = 0; n < out.size(0); ++n) {
    for (std::int64_t k = 0; k < out.size(1); ++k) {
      float v;
      if constexpr (is_fp4) {
        const fp4x2 byte = q(n, k / 2);
        v = (k % 2 == 0 ? byte.lo() : byte.hi()).to_float();
      } else {
        v = q(n, k).to_float();
      }
      const ue8m0 s = scale(n / br, k / bc);
      if (v != v || s.bits == 0xFF) ++bad;
      out(n, k) = from_f32<TOut>(v * s.to_float());
    }
  }
  return bad;
}

}  // namespace dsv4::ref
