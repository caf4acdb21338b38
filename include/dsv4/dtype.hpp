// dsv4/dtype.hpp — runtime element types and the one place where a runtime dtype becomes a template argument.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <type_traits>

#include "dsv4/error.hpp"
#include "dsv4/formats.hpp"

namespace dsv4 {

// Element types the library stores or exchanges. fp4_e2m1 is packed two per byte (element 2c in the low nibble);
// every other type is byte-addressable.
enum class dtype : std::uint8_t { f32, f16, bf16, fp8_e4m3, fp4_e2m1, ue8m0, i8, u8, i32, i64 };

inline constexpr int dtype_bits(dtype t) {
  switch (t) {
    case dtype::f32: case dtype::i32: return 32;
    case dtype::f16: case dtype::bf16: return 16;
    case dtype::fp8_e4m3: case dtype::ue8m0: case dtype::i8: case dtype::u8: return 8;
    case dtype::fp4_e2m1: return 4;
    case dtype::i64: return 64;
  }
  return 0;
}

inline constexpr bool is_packed(dtype t) { return dtype_bits(t) < 8; }

// Bytes that n contiguous elements occupy (a trailing odd fp4 element still takes a byte).
// Bytes of n elements (saturates at INT64_MAX instead of overflowing; no real tensor comes near it).
inline constexpr std::int64_t dtype_bytes(dtype t, std::int64_t n) {
  std::int64_t bits = 0;
  if (__builtin_mul_overflow(n, static_cast<std::int64_t>(dtype_bits(t)), &bits) || bits > INT64_MAX - 7)
    return INT64_MAX;
  return (bits + 7) / 8;
}

inline constexpr const char* dtype_name(dtype t) {
  switch (t) {
    case dtype::f32: return "f32";
    case dtype::f16: return "f16";
    case dtype::bf16: return "bf16";
    case dtype::fp8_e4m3: return "fp8_e4m3";
    case dtype::fp4_e2m1: return "fp4_e2m1";
    case dtype::ue8m0: return "ue8m0";
    case dtype::i8: return "i8";
    case dtype::u8: return "u8";
    case dtype::i32: return "i32";
    case dtype::i64: return "i64";
  }
  return "?";
}

inline std::ostream& operator<<(std::ostream& os, dtype t) { return os << dtype_name(t); }

// C++ storage type <-> dtype. fp4 tensors are addressed through their byte pairs (fp4x2).
template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr dtype value = dtype::f32; };
template <> struct dtype_of<f16> { static constexpr dtype value = dtype::f16; };
template <> struct dtype_of<bf16> { static constexpr dtype value = dtype::bf16; };
template <> struct dtype_of<fp8_e4m3> { static constexpr dtype value = dtype::fp8_e4m3; };
template <> struct dtype_of<fp4x2> { static constexpr dtype value = dtype::fp4_e2m1; };
template <> struct dtype_of<ue8m0> { static constexpr dtype value = dtype::ue8m0; };
template <> struct dtype_of<std::int8_t> { static constexpr dtype value = dtype::i8; };
template <> struct dtype_of<std::uint8_t> { static constexpr dtype value = dtype::u8; };
template <> struct dtype_of<std::int32_t> { static constexpr dtype value = dtype::i32; };
template <> struct dtype_of<std::int64_t> { static constexpr dtype value = dtype::i64; };
template <class T> inline constexpr dtype dtype_of_v = dtype_of<std::remove_const_t<T>>::value;

// visit_dtype<float, bf16>(dt, "quantize", [&]<class T>(std::type_identity<T>) { ... }):
// calls f with the storage type matching dt among the listed ones; any other dtype is an "unsupported dtype" error
// that names the op, the dtype and the supported set.
template <class... Ts, class F>
void visit_dtype(dtype dt, const char* op, F&& f) {
  const bool done = ((dt == dtype_of_v<Ts> ? (f(std::type_identity<Ts>{}), true) : false) || ...);
  if (!done) {
    std::string supported;
    ((supported += supported.empty() ? "" : ", ", supported += dtype_name(dtype_of_v<Ts>)), ...);
    DSV4_FAIL(op, "unsupported dtype ", dtype_name(dt), " (supported: ", supported, ")");
  }
}

}  // namespace dsv4
