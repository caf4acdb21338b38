// dsv4/formats.hpp — the number formats of DeepSeek-V4 as exact scalar types (spec §6.1).
//
// Each type is a thin struct over its storage bits with a static_assert on its size, an exact decode to fp32 and,
// where the architecture encodes into it, a round-to-nearest-even encode written the way the spec states it
// (nearest representable value, ties to an even mantissa, saturation). These scalar encoders are the `ref`
// semantics; the CPU backend re-derives them with bit tricks and the CUDA backend with the hardware cvt
// instructions, and the tests hold all three to bit equality.
//
// Usable from host and CUDA device code (DSV4_HD).
#pragma once

#include <math.h>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DSV4_HD __host__ __device__
#else
#define DSV4_HD
#endif

namespace dsv4 {

DSV4_HD inline std::uint32_t f32_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}
DSV4_HD inline float bits_to_f32(std::uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

// BF16: 1 sign, 8 exponent (bias 127), 7 mantissa bits; the upper half of an fp32. Encode: round to nearest even;
// NaN stays a (quiet) NaN, infinities stay infinite, overflow rounds to infinity as IEEE requires.
struct bf16 {
  std::uint16_t bits = 0;

  DSV4_HD static bf16 from_float(float f) {
    std::uint32_t u = f32_to_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bf16{static_cast<std::uint16_t>((u >> 16) | 0x0040u)};
    u += 0x7FFFu + ((u >> 16) & 1u);
    return bf16{static_cast<std::uint16_t>(u >> 16)};
  }
  DSV4_HD float to_float() const { return bits_to_f32(static_cast<std::uint32_t>(bits) << 16); }
};
static_assert(sizeof(bf16) == 2);

// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits; max 65504; subnormals down to 2^-24.
// Decode only is needed by the architecture (safetensors F16 tensors); encode is RNE for completeness.
struct f16 {
  std::uint16_t bits = 0;

  DSV4_HD float to_float() const {
    const std::uint32_t s = (bits >> 15) & 1u, e = (bits >> 10) & 0x1Fu, m = bits & 0x3FFu;
    float v;
    if (e == 0)
      v = static_cast<float>(m) * 5.9604644775390625e-8f;  // m · 2^-24, exact
    else if (e == 31)
      v = m ? bits_to_f32(0x7FC00000u) : bits_to_f32(0x7F800000u);
    else
      v = bits_to_f32(((e + 112u) << 23) | (m << 13));  // 112 = 127 - 15
    return s ? -v : v;
  }
  DSV4_HD static f16 from_float(float f) {
    const std::uint16_t s = (f32_to_bits(f) >> 31) ? 0x8000u : 0u;
    const float a = ::fabsf(f);
    if (a != a) return f16{static_cast<std::uint16_t>(s | 0x7E00u)};
    if (a >= 65520.f) return f16{static_cast<std::uint16_t>(s | 0x7C00u)};  // 65520 rounds (tie, odd) up to inf
    if (a == 0.f) return f16{s};
    int e;
    ::frexpf(a, &e);
    const int ex = (e - 1 < -14) ? -14 : e - 1;  // floor(log2 a), clamped to the subnormal exponent
    const float quantum = ::ldexpf(1.f, ex - 10);
    const float q = ::rintf(a / quantum);      // integer in [0, 2048], ties to even
    const int code = (ex == -14 && q < 1024.f) ? static_cast<int>(q)
                                               : (((ex + 15) << 10) + static_cast<int>(q) - 1024);
    return f16{static_cast<std::uint16_t>(s | code)};
  }
};
static_assert(sizeof(f16) == 2);

// Uniform fp32 access to the floating storage types (RNE on the way back), for kernels templated on the dtype.
DSV4_HD inline float to_f32(float v) { return v; }
DSV4_HD inline float to_f32(bf16 v) { return v.to_float(); }
DSV4_HD inline float to_f32(f16 v) { return v.to_float(); }
template <class T> DSV4_HD T from_f32(float v);
template <> DSV4_HD inline float from_f32<float>(float v) { return v; }
template <> DSV4_HD inline bf16 from_f32<bf16>(float v) { return bf16::from_float(v); }
template <> DSV4_HD inline f16 from_f32<f16>(float v) { return f16::from_float(v); }

// FP8 E4M3FN: 1 sign, 4 exponent (bias 7), 3 mantissa bits. No infinities; S.1111.111 is NaN; max ±448
// (S.1111.110); min normal 2^-6; subnormals m·2^-9. Encode: round to nearest even, saturate to ±448 (the
// __NV_SATFINITE behaviour the official kernels use, spec §6.1); the sign of zero is kept.
struct fp8_e4m3 {
  std::uint8_t bits = 0;
  static constexpr float kMax = 448.f;

  DSV4_HD float to_float() const {
    const std::uint32_t s = bits >> 7, e = (bits >> 3) & 0xFu, m = bits & 7u;
    float v;
    if (e == 0xF && m == 7)
      v = bits_to_f32(0x7FC00000u);
    else if (e == 0)
      v = static_cast<float>(m) * 0.001953125f;  // m · 2^-9, exact
    else
      v = bits_to_f32(((e + 120u) << 23) | (m << 20));  // 120 = 127 - 7
    return s ? -v : v;
  }

  DSV4_HD static fp8_e4m3 from_float(float f) {
    const std::uint8_t s = (f32_to_bits(f) >> 31) ? 0x80u : 0u;
    const float a = ::fabsf(f);
    if (a != a) return fp8_e4m3{static_cast<std::uint8_t>(s | 0x7Fu)};
    if (a >= kMax) return fp8_e4m3{static_cast<std::uint8_t>(s | 0x7Eu)};
    if (a == 0.f) return fp8_e4m3{s};  // frexp(0) has no binade
    int e;
    ::frexpf(a, &e);
    const int ex = (e - 1 < -6) ? -6 : e - 1;  // binade of a; below 2^-6 the subnormal spacing 2^-9 applies
    const float q = ::rintf(a / ::ldexpf(1.f, ex - 3));  // multiples of the spacing 2^(ex-3), ties to even
    // q in [0, 16]; q == 16 means the value rounded up into the next binade (mantissa 0 there).
    int code;
    if (ex == -6 && q < 8.f)
      code = static_cast<int>(q);  // subnormal
    else
      code = ((ex + 7) << 3) + static_cast<int>(q) - 8;  // exponent field ex+7, mantissa q-8 (carry is free)
    return fp8_e4m3{static_cast<std::uint8_t>(s | code)};
  }
};
static_assert(sizeof(fp8_e4m3) == 1);

// FP4 E2M1 (one nibble): 1 sign, 2 exponent (bias 1), 1 mantissa bit: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}; code 8 is -0.
// No NaN or infinity. Encode: round to nearest even (ties: 0.25→0, 0.75→1, 1.25→1, 1.75→2, 2.5→2, 3.5→4, 5→4),
// saturate to ±6 (spec §6.1); the sign of zero is kept. NaN has no code: callers validate first (it maps to +6
// here, matching saturation, so that a kernel never reads out of a table).
struct fp4_e2m1 {
  std::uint8_t code = 0;  // low nibble only
  static constexpr float kMax = 6.f;

  DSV4_HD float to_float() const {
    const std::uint32_t s = (code >> 3) & 1u, e = (code >> 1) & 3u, m = code & 1u;
    const float v = e == 0 ? 0.5f * static_cast<float>(m) : bits_to_f32(((e + 126u) << 23) | (m << 22));
    return s ? -v : v;
  }

  DSV4_HD static fp4_e2m1 from_float(float f) {
    const std::uint8_t s = (f32_to_bits(f) >> 31) ? 0x8u : 0u;
    const float a = ::fabsf(f);
    if (a != a) return fp4_e2m1{0x7u};
    if (a >= kMax) return fp4_e2m1{static_cast<std::uint8_t>(s | 0x7u)};
    if (a == 0.f) return fp4_e2m1{s};  // frexp(0) has no binade
    int e;
    ::frexpf(a, &e);
    const int ex = (e - 1 < 0) ? 0 : e - 1;                  // below 1 the subnormal spacing 0.5 applies
    const float q = ::rintf(a / ::ldexpf(1.f, ex - 1));  // q in [0, 4]
    int code;
    if (ex == 0 && q < 2.f)
      code = static_cast<int>(q);
    else
      code = ((ex + 1) << 1) + static_cast<int>(q) - 2;
    return fp4_e2m1{static_cast<std::uint8_t>(s | code)};
  }
};

// Two E2M1 values in one byte, the storage unit of fp4 tensors: element 2c is the LOW nibble, element 2c+1 the
// HIGH nibble (spec §1.2, from convert.py and the TileLang templates).
struct fp4x2 {
  std::uint8_t bits = 0;
  DSV4_HD fp4_e2m1 lo() const { return fp4_e2m1{static_cast<std::uint8_t>(bits & 0xFu)}; }
  DSV4_HD fp4_e2m1 hi() const { return fp4_e2m1{static_cast<std::uint8_t>(bits >> 4)}; }
  DSV4_HD static fp4x2 pack(fp4_e2m1 even, fp4_e2m1 odd) {
    return fp4x2{static_cast<std::uint8_t>((even.code & 0xFu) | ((odd.code & 0xFu) << 4))};
  }
};
static_assert(sizeof(fp4x2) == 1);

// The same two encoders on the fp32 bit pattern with integer round-to-nearest-even, no floating-point step (the
// semantic reference of device code: the CUDA backend uses these where the GPU has no conversion instruction, and its
// tests hold the hardware conversions to them). Equal to fp8_e4m3::from_float / fp4_e2m1::from_float for every
// float (tests/test_formats.cpp sweeps them). RNE at a bit position p of a magnitude a: a + (2^(p-1) - 1) + bit p
// of a, shifted right by p; a mantissa carry walks into the exponent field, which is the right next value.
DSV4_HD inline std::uint8_t encode_e4m3_int(float f) {
  const std::uint32_t u = f32_to_bits(f), a = u & 0x7FFFFFFFu;
  const std::uint32_t s = (u >> 24) & 0x80u;
  if (a > 0x7F800000u) return static_cast<std::uint8_t>(s | 0x7Fu);  // NaN
  if (a >= 0x43E00000u) return static_cast<std::uint8_t>(s | 0x7Eu);  // >= 448 (and inf): saturate
  const std::uint32_t e = a >> 23;
  if (e >= 121u)  // >= 2^-6, normal: keep 3 mantissa bits; E4M3 exponent field = e - 120
    return static_cast<std::uint8_t>(s | (((a + 0x7FFFFu + ((a >> 20) & 1u)) >> 20) - (120u << 3)));
  // below 2^-6: a multiple q of 2^-9 (q = 8 is 2^-6, the code 0x08); value = mant24 · 2^(e - 150) (normal fp32)
  const std::uint32_t sh = 141u - e;  // >= 21
  if (e == 0u || sh >= 25u) return static_cast<std::uint8_t>(s);  // under 2^-10: rounds to zero
  const std::uint32_t m = (a & 0x7FFFFFu) | 0x800000u, half = 1u << (sh - 1u), rem = m & ((1u << sh) - 1u);
  std::uint32_t q = m >> sh;
  q += (rem > half || (rem == half && (q & 1u))) ? 1u : 0u;
  return static_cast<std::uint8_t>(s | q);
}
DSV4_HD inline std::uint8_t encode_e2m1_int(float f) {
  const std::uint32_t u = f32_to_bits(f), a = u & 0x7FFFFFFFu;
  const std::uint32_t s = (u >> 28) & 0x8u;
  if (a > 0x7F800000u) return 0x7u;                                    // NaN: +6, as fp4_e2m1::from_float
  if (a >= 0x40C00000u) return static_cast<std::uint8_t>(s | 0x7u);  // >= 6 (and inf): saturate
  const std::uint32_t e = a >> 23;
  if (e >= 127u)  // >= 1: keep 1 mantissa bit; E2M1 exponent field = e - 126
    return static_cast<std::uint8_t>(s | (((a + 0x1FFFFFu + ((a >> 22) & 1u)) >> 22) - (126u << 1)));
  const std::uint32_t sh = 149u - e;  // below 1: a multiple q of 0.5 (q = 2 is 1.0, the code 0x2); sh >= 23
  if (e == 0u || sh >= 25u) return static_cast<std::uint8_t>(s);  // under 0.25: rounds to zero
  const std::uint32_t m = (a & 0x7FFFFFu) | 0x800000u, half = 1u << (sh - 1u), rem = m & ((1u << sh) - 1u);
  std::uint32_t q = m >> sh;
  q += (rem > half || (rem == half && (q & 1u))) ? 1u : 0u;
  return static_cast<std::uint8_t>(s | q);
}

// UE8M0: an unsigned biased exponent, the byte u meaning 2^(u-127); 255 is NaN. All V4 block scales use it.
struct ue8m0 {
  std::uint8_t bits = 127;
  DSV4_HD float to_float() const {
    if (bits == 255) return bits_to_f32(0x7FC00000u);
    if (bits == 0) return bits_to_f32(0x00400000u);  // 2^-127 is an fp32 subnormal
    return bits_to_f32(static_cast<std::uint32_t>(bits) << 23);
  }
};
static_assert(sizeof(ue8m0) == 1);

// The block-scale rule shared by the FP8 and FP4 quantizers (spec §6.2 steps 1–3, §6.3):
//   p = max(amax, floor) · fp32(1/max);  s = 2^ceil(log2 p), read off p's fp32 bit pattern:
//   ceil_log2 = (e - 127) + (mantissa != 0), so the UE8M0 byte of s is e + (mantissa != 0).
// Exact at powers of two: amax = max·2^k gives p = 2^k and s = 2^k. p stays a normal fp32 for finite amax
// (the floors keep it >= 2^-126), and the byte stays <= 254 (p < 2^127 for every finite amax).
DSV4_HD inline std::uint8_t ue8m0_ceil_scale(float amax, float amax_floor, float inv_max) {
  const float p = (amax > amax_floor ? amax : amax_floor) * inv_max;
  const std::uint32_t u = f32_to_bits(p);
  return static_cast<std::uint8_t>(((u >> 23) & 0xFFu) + ((u & 0x7FFFFFu) != 0u ? 1u : 0u));
}

// Per-format constants of the block quantizers (spec §6.2, §6.3).
template <class Code>
struct block_quant_traits;

template <>
struct block_quant_traits<fp8_e4m3> {
  static constexpr float kMax = 448.f;
  static constexpr float kInvMax = 1.f / 448.f;  // fp32(1/448) = 0.0022321429569274187 (spec §6.2)
  static constexpr float kAmaxFloor = 1e-4f;     // spec §6.2 step 1
};

template <>
struct block_quant_traits<fp4_e2m1> {
  static constexpr float kMax = 6.f;
  static constexpr float kInvMax = 1.f / 6.f;               // fp32(1/6) = 0.1666666716337204 (spec §6.3)
  static constexpr float kAmaxFloor = 6.f * 1.1754944e-38f;  // 6 · 2^-126 (spec §6.3)
};

}  // namespace dsv4
