// dsv4/checked.hpp — size arithmetic that cannot overflow silently.
//
// Extents read from files (config.json, safetensors headers) are hostile until proven otherwise: every product or
// sum of them that sizes an allocation or an index goes through these helpers, which either return the exact int64
// result or report the overflow (std::nullopt, or a dsv4::error naming the op and what was being sized).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string_view>

#include "dsv4/error.hpp"

namespace dsv4 {

inline std::optional<std::int64_t> checked_mul(std::int64_t a, std::int64_t b) {
  std::int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

inline std::optional<std::int64_t> checked_add(std::int64_t a, std::int64_t b) {
  std::int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// The product of `factors`, or a dsv4::error "<op>: <what> overflows int64 (a x b x ...)".
inline std::int64_t checked_product(std::string_view op, std::string_view what,
                                    std::initializer_list<std::int64_t> factors) {
  std::int64_t r = 1;
  bool overflow = false;
  for (const std::int64_t f : factors) overflow = overflow || __builtin_mul_overflow(r, f, &r);
  if (overflow) {
    std::string list;
    for (const std::int64_t f : factors) list += (list.empty() ? "" : " x ") + std::to_string(f);
    DSV4_FAIL(op, what, " overflows int64 (", list, ")");
  }
  return r;
}

}  // namespace dsv4
