// dsv4/error.hpp — the library's one error type and its checking macros.
//
// Policy (one per layer):
//   * host API (ops::*, loaders, tools): throw dsv4::error via the always-on DSV4_CHECK; the message names the
//     op, the source location and what was expected versus what was given;
//   * kernels (ref/, cpu/, cuda/ device code): noexcept, never throw; they are only reached after validation and
//     use DSV4_ASSERT, which is compiled in debug builds only;
//   * CUDA runtime calls: checked and turned into the same dsv4::error (see cuda/runtime.cu).
#pragma once

#include <cassert>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>

namespace dsv4 {

class error : public std::runtime_error {
 public:
  error(std::string op, std::string message, const char* file, int line)
      : std::runtime_error(format(op, message, file, line)), op_(std::move(op)) {}

  // The operation that rejected its input, e.g. "quantize".
  const std::string& op() const noexcept { return op_; }

 private:
  static std::string format(const std::string& op, const std::string& message, const char* file, int line) {
    std::ostringstream os;
    os << "dsv4::" << op << ": " << message << " [" << source_location(file) << ':' << line << ']';
    return os.str();
  }
  // The builds of this project map the source root away (-fmacro-prefix-map), so __FILE__ is already
  // "src/io/safetensors.cpp"; a path that is still absolute (a header compiled by another project) keeps only what
  // follows its last "/include/", "/src/" or "/cuda/" part, so messages never carry a build machine's directories.
  static std::string_view source_location(std::string_view f) {
    if (f.empty() || f.front() != '/') return f;
    for (std::string_view root : {"/include/dsv4/", "/src/", "/cuda/", "/tests/"}) {
      const auto at = f.rfind(root);
      if (at != std::string_view::npos) return f.substr(at + 1);
    }
    const auto slash = f.rfind('/');
    return f.substr(slash + 1);
  }
  std::string op_;
};

namespace detail {

// Builds a message from any streamable pieces: DSV4_CHECK(ok, "quantize", "last dim ", k, " not a multiple of ", b).
template <class... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

// A string from an untrusted source (a tensor name, a JSON value) made safe to put in a message: control bytes, DEL
// and every non-ASCII byte (C1 controls and invalid UTF-8 included) become \xNN, backslashes and quotes are
// escaped, and it is cut after `max` bytes with the full length noted, so a hostile name can neither drive the
// terminal nor make a message unbounded.
inline std::string printable(std::string_view s, std::size_t max = 120) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  const std::size_t n = s.size() < max ? s.size() : max;
  out.reserve(n + 16);
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c >= 0x7f) {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else if (c == '\\' || c == '"') {
      out += '\\';
      out += static_cast<char>(c);
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > n) out += "...(" + std::to_string(s.size()) + " bytes)";
  return out;
}

[[noreturn]] inline void fail(std::string_view op, std::string message, const char* file, int line) {
  throw error(std::string(op), std::move(message), file, line);
}

}  // namespace detail
}  // namespace dsv4

// Always on, in every build type: input validation is part of the API contract.
#define DSV4_CHECK(cond, op, ...)                                                          \
  do {                                                                                     \
    if (!(cond)) ::dsv4::detail::fail((op), ::dsv4::detail::concat(__VA_ARGS__), __FILE__, __LINE__); \
  } while (0)

#define DSV4_FAIL(op, ...) ::dsv4::detail::fail((op), ::dsv4::detail::concat(__VA_ARGS__), __FILE__, __LINE__)

// Kernel-internal invariants: debug builds only, never a substitute for validation.
#ifndef NDEBUG
#define DSV4_ASSERT(cond) assert(cond)
#else
#define DSV4_ASSERT(cond) ((void)0)
#endif
