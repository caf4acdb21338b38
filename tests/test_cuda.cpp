// CUDA backend against ref: quantizers, round trips and dequantization bitwise on the adversarial inputs of the
// host tests; the Hadamard transform bitwise too (same butterfly order as ref).
#include "dsv4/ops/hadamard.hpp"
#include "dsv4/ops/quant.hpp"
#include "harness.hpp"

using namespace dsv4;
using namespace dsv4::test;

namespace {
const device kGpu = device::cuda(0);

buffer to_host(const buffer& d) { return clone_to(d, device::cpu()); }
}  // namespace

TEST_SUITE("cuda") {

TEST_CASE("block quantizers and round trips: CUDA == ref bitwise") {
  struct cfg { dtype code; ops::quant_format fmt; int block; };
  for (cfg c : {cfg{dtype::fp8_e4m3, ops::quant_format::fp8_e4m3, 32}, cfg{dtype::fp8_e4m3, ops::quant_format::fp8_e4m3, 64},
                cfg{dtype::fp8_e4m3, ops::quant_format::fp8_e4m3, 128}, cfg{dtype::fp4_e2m1, ops::quant_format::fp4_e2m1, 32}}) {
    CAPTURE(c.block);
    const std::int64_t rows = 77, k = 512;
    const auto v = adversarial(rows, k, c.block, c.code == dtype::fp4_e2m1 ? fp4_grid() : fp8_grid(), 31 + c.block);
    for (const buffer& x : {host_f32(rows, k, v), host_bf16(rows, k, v)}) {
      buffer q(c.code, {rows, k}), s(dtype::ue8m0, {rows, k / c.block});
      ops::block_quantize(x, q, s, c.block, on(backend::ref));
      const buffer xd = clone_to(x, kGpu);
      buffer qd(c.code, {rows, k}, kGpu), sd(dtype::ue8m0, {rows, k / c.block}, kGpu);
      ops::block_quantize(xd, qd, sd, c.block);
      CHECK(bytes_of(to_host(qd)) == bytes_of(q));
      CHECK(bytes_of(to_host(sd)) == bytes_of(s));
      for (dtype out : {dtype::f32, dtype::bf16}) {
        buffer y(out, {rows, k}), yd(out, {rows, k}, kGpu);
        ops::block_round_trip(x, y, c.fmt, c.block, on(backend::ref));
        ops::block_round_trip(xd, yd, c.fmt, c.block);
        CHECK(bytes_of(to_host(yd)) == bytes_of(y));
      }
      buffer deq(dtype::f32, {rows, k}), deqd(dtype::f32, {rows, k}, kGpu);
      ops::dequantize(q, s, deq, 1, c.block, on(backend::ref));
      ops::dequantize(qd, sd, deqd, 1, c.block);
      CHECK(bytes_of(to_host(deqd)) == bytes_of(deq));
    }
  }
}

TEST_CASE("non-finite input is reported from the device too") {
  std::vector<float> v(64, 1.f);
  v[40] = std::nanf("");
  const buffer xd = clone_to(host_f32(1, 64, v), kGpu);
  buffer qd(dtype::fp8_e4m3, {1, 64}, kGpu), sd(dtype::ue8m0, {1, 2}, kGpu);
  check_error([&] { ops::block_quantize(xd, qd, sd, 32); }, {"1 block(s)", "inf or NaN"});
  check_error([&] { ops::block_quantize(xd, qd, sd, 32, on(backend::cpu)); }, {"requested but the tensors live on cuda"});
}

TEST_CASE("Hadamard: CUDA == ref bitwise, n = 1 .. 8192") {
  for (int n = 1; n <= 8192; n *= 2) {
    CAPTURE(n);
    const auto v = adversarial(3, n < 32 ? 32 : n, 32, fp4_grid(), n);
    const std::vector<float> vals(v.begin(), v.begin() + 3 * n);
    std::vector<float> finite(vals);
    for (auto& x : finite) x = std::isfinite(x) && std::fabs(x) < 1e30f ? x : 1.f;
    const buffer x = host_f32(3, n, finite);
    buffer y(dtype::f32, {3, n}), yd(dtype::f32, {3, n}, kGpu);
    ops::hadamard(x, y, on(backend::ref));
    ops::hadamard(clone_to(x, kGpu), yd);
    CHECK(bytes_of(to_host(yd)) == bytes_of(y));
  }
}

}  // TEST_SUITE
