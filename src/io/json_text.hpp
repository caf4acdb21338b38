// src/io/json_text.hpp — checks on JSON text from a file before it reaches the parser (config.json, the sharded
// index): no NUL byte (nlohmann's lexer takes one for the end of input and would accept whatever follows it) and a
// bounded nesting depth (so no recursive walk or dump of a hostile value can exhaust the stack).
#pragma once

#include <cstring>
#include <string_view>

#include "dsv4/error.hpp"

namespace dsv4::io::json_text {

// Deepest nesting of objects and arrays, strings skipped; stops counting once it passes `limit`.
inline int json_depth(std::string_view s, int limit) {
  int depth = 0, worst = 0;
  bool in_str = false, esc = false;
  for (char c : s) {
    if (in_str) {
      if (esc) esc = false;
      else if (c == '\\') esc = true;
      else if (c == '"') in_str = false;
      continue;
    }
    if (c == '"') in_str = true;
    else if (c == '{' || c == '[') {
      if ((worst = std::max(worst, ++depth)) > limit) return worst;
    } else if (c == '}' || c == ']') --depth;
  }
  return worst;
}

inline void check_json_text(std::string_view text, std::string_view op, std::string_view where, int max_depth) {
  if (const void* nul = std::memchr(text.data(), '\0', text.size()))
    DSV4_FAIL(op, where, ": holds a NUL byte at offset ", static_cast<const char*>(nul) - text.data(),
              " (not JSON text)");
  DSV4_CHECK(json_depth(text, max_depth) <= max_depth, op, where, ": JSON nests deeper than ", max_depth,
             " levels");
}

}  // namespace dsv4::io::json_text
