// Walsh–Hadamard transform (spec §6.5): natural (Sylvester) order, scale n^-1/2, no random signs.
//
// Tolerance, fp32: each of the log2(n) butterfly stages rounds once (relative 2^-24 of a partial sum bounded by
// ||x||_1), the scale constant and the final multiply round once each, so |y - exact| <= (log2 n + 2)·2^-24·||x||_1
// ·n^-1/2 per element. The CPU backend re-associates the first stages (H_W products), which stays inside the same
// bound; on small-integer inputs with n = 4^k every backend is exact.
#include <bit>
#include <cmath>

#include "dsv4/ops/hadamard.hpp"
#include "dsv4/ref/hadamard.hpp"
#include "harness.hpp"

using namespace dsv4;
using namespace dsv4::test;

namespace {

// y = n^-1/2 · H_n · x in double, straight from the definition H[i][j] = (-1)^popcount(i & j).
std::vector<double> exact(const float* x, int n) {
  std::vector<double> y(n, 0.0);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) y[i] += (std::popcount(static_cast<unsigned>(i & j)) & 1 ? -1.0 : 1.0) * x[j];
    y[i] /= std::sqrt(double(n));
  }
  return y;
}

std::vector<float> gaussian(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

}  // namespace

TEST_SUITE("hadamard") {

TEST_CASE("matches the definition within the fp32 bound, every host backend, n = 1 .. 4096") {
  for (int n = 1; n <= 4096; n *= 2) {
    CAPTURE(n);
    const int rows = 3;
    const auto v = gaussian(static_cast<std::size_t>(rows) * n, n);
    for (backend be : host_backends()) {
      const std::string backend_ = backend_name(be);
    CAPTURE(backend_);
      buffer y(dtype::f32, {rows, n});
      ops::hadamard(host_f32(rows, n, v), y, on(be));
      for (int r = 0; r < rows; ++r) {
        const float* x = v.data() + r * n;
        double l1 = 0;
        for (int j = 0; j < n; ++j) l1 += std::fabs(x[j]);
        const double bound = (std::log2(double(n)) + 2) * std::ldexp(1.0, -24) * l1 / std::sqrt(double(n));
        const auto want = exact(x, n);
        for (int i = 0; i < n; ++i) REQUIRE(std::fabs(y.host_span<float>()[r * n + i] - want[i]) <= bound);
      }
    }
  }
}

TEST_CASE("natural order pinned: e_j maps to column j of H_n / sqrt(n), exactly for n = 4^k") {
  for (int n : {4, 16, 64, 256}) {
    for (backend be : host_backends()) {
      std::vector<float> e(static_cast<std::size_t>(n) * n, 0.f);
      for (int j = 0; j < n; ++j) e[static_cast<std::size_t>(j) * n + j] = 1.f;  // row j is e_j
      buffer y(dtype::f32, {n, n});
      ops::hadamard(host_f32(n, n, e), y, on(be));
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < n; ++i)
          REQUIRE(y.host_span<float>()[j * n + i] ==
                  float((std::popcount(unsigned(i & j)) & 1 ? -1.0 : 1.0) / std::sqrt(double(n))));
    }
  }
}

TEST_CASE("small integers, n = 4^k: exact on every backend (so ref == cpu bitwise)") {
  std::mt19937 rng(8);
  std::uniform_int_distribution<int> d(-8, 8);
  for (int n : {16, 64, 256, 1024, 4096}) {
    std::vector<float> v(static_cast<std::size_t>(5) * n);
    for (auto& x : v) x = float(d(rng));
    for (backend be : host_backends()) {
      buffer y(dtype::f32, {5, n});
      ops::hadamard(host_f32(5, n, v), y, on(be));
      for (int r = 0; r < 5; ++r) {
        const auto want = exact(v.data() + r * n, n);
        for (int i = 0; i < n; ++i) REQUIRE(double(y.host_span<float>()[r * n + i]) == want[i]);
      }
    }
  }
}

TEST_CASE("involution, in place, bf16 output, thread-count invariance") {
  const int rows = 300, n = 128;
  const auto v = gaussian(static_cast<std::size_t>(rows) * n, 17);
  for (backend be : host_backends()) {
    const std::string backend_ = backend_name(be);
    CAPTURE(backend_);
    buffer y = host_f32(rows, n, v);
    ops::hadamard(y, y, on(be));
    ops::hadamard(y, y, on(be));
    // H/sqrt(n) is its own inverse. Bound: the first transform's per-element error b = (L+2)·u·||x||_1/sqrt(n)
    // reaches at most sqrt(n)·b per element through the second (orthogonal) one, which adds at most the same.
    for (int r = 0; r < rows; ++r) {
      double l1 = 0;
      for (int j = 0; j < n; ++j) l1 += std::fabs(v[r * n + j]);
      const double tol = 2 * (std::log2(double(n)) + 2) * std::ldexp(1.0, -24) * l1;
      for (int j = 0; j < n; ++j) REQUIRE(std::fabs(y.host_span<float>()[r * n + j] - v[r * n + j]) <= tol);
    }
    // bf16 output is the RNE rounding of this backend's fp32 result
    buffer f(dtype::f32, {rows, n}), b(dtype::bf16, {rows, n});
    ops::hadamard(host_f32(rows, n, v), f, on(be));
    ops::hadamard(host_f32(rows, n, v), b, on(be));
    for (int i = 0; i < rows * n; ++i) REQUIRE(b.host_span<bf16>()[i].bits == bf16::from_float(f.host_span<float>()[i]).bits);
  }
  if (cpu::simd_isa()) {
    buffer a(dtype::f32, {rows, n}), c(dtype::f32, {rows, n});
    ops::hadamard(host_f32(rows, n, v), a, on(backend::cpu, 1));
    ops::hadamard(host_f32(rows, n, v), c, on(backend::cpu, 2));
    CHECK(bytes_of(a) == bytes_of(c));
  }
}

TEST_CASE("misuse") {
  check_error([] { ops::hadamard(buffer(dtype::f32, {2, 96}), buffer(dtype::f32, {2, 96})); },
              {"hadamard", "not a power of two"});
  check_error([] { ops::hadamard(buffer(dtype::i8, {2, 64}), buffer(dtype::f32, {2, 64})); },
              {"hadamard", "unsupported dtype i8"});
  buffer x(dtype::f32, {4, 64});
  check_error([&] { ops::hadamard(x.view().narrow(0, 0, 2), x.view().narrow(0, 1, 2)); }, {"overlap"});
}

}  // TEST_SUITE
