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
    os << "dsv4::" << op << ": " << message << " [" << file << ':' << line << ']';
    return os.str();
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
