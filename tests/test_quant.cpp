// Block quantizers and dequantization (spec §6.2–§6.4): hand-computed blocks, the scale edge cases, and every host
// backend bit-identical to ref on adversarial inputs, for any thread count, strides and rank. FP8/FP4 results are
// compared BITWISE: the quantizers are exact functions of their input, so any difference is a bug.
#include <cmath>
#include <limits>

#include "dsv4/ops/quant.hpp"
#include "dsv4/ref/quant.hpp"
#include "harness.hpp"

using namespace dsv4;
using namespace dsv4::test;

namespace {

struct quantized {
  std::vector<std::uint8_t> q, s;
};

quantized quantize(const tensor_view& x, dtype code, int block, const exec& ex) {
  std::vector<std::int64_t> shape(x.shape().begin(), x.shape().end());
  buffer q(code, shape);
  shape.back() /= block;
  buffer s(dtype::ue8m0, shape);
  ops::block_quantize(x, q, s, block, ex);
  return {bytes_of(q), bytes_of(s)};
}

std::vector<std::uint8_t> round_trip(const tensor_view& x, dtype out, ops::quant_format f, int block,
                                     const exec& ex) {
  buffer y(out, x.shape());
  ops::block_round_trip(x, y, f, block, ex);
  return bytes_of(y);
}

struct config {
  dtype code;
  ops::quant_format fmt;
  int block;
};
const config kConfigs[] = {{dtype::fp8_e4m3, ops::quant_format::fp8_e4m3, 32},
                           {dtype::fp8_e4m3, ops::quant_format::fp8_e4m3, 64},
                           {dtype::fp8_e4m3, ops::quant_format::fp8_e4m3, 128},
                           {dtype::fp4_e2m1, ops::quant_format::fp4_e2m1, 32}};

}  // namespace

TEST_SUITE("quant") {

TEST_CASE("FP8 block by hand: amax 56 -> s = 2^-3; codes of 56, -1, 0.3") {
  std::vector<float> x(32, 0.f);
  x[0] = 56.f;   // 56 · 8 = 448 -> 0x7E
  x[1] = -1.f;   // -8 = -(1.0 · 2^3): exponent field 10, mantissa 0 -> 0xD0
  x[2] = 0.3f;   // 2.4 -> nearest on the 0.25 grid of [2, 4) is 2.5: field 8, mantissa 2 -> 0x42
  x[3] = 1e-4f;  // 8e-4 -> below 2^-10 (half the smallest subnormal) -> +0
  for (backend be : host_backends()) {
    const std::string backend_ = backend_name(be);
    CAPTURE(backend_);
    const auto r = quantize(host_f32(1, 32, x), dtype::fp8_e4m3, 32, on(be));
    CHECK(r.s[0] == 124);
    CHECK(r.q[0] == 0x7E);
    CHECK(r.q[1] == 0xD0);
    CHECK(r.q[2] == 0x42);
    CHECK(r.q[3] == 0x00);
  }
}

TEST_CASE("FP4 block by hand: amax 6 -> s = 1; ties and packing (element 2c in the low nibble)") {
  std::vector<float> x(32, 0.f);
  const float in[6] = {6.f, -0.75f, 1.25f, 5.f, 2.5f, -0.25f};
  for (int i = 0; i < 6; ++i) x[i] = in[i];
  for (backend be : host_backends()) {
    const std::string backend_ = backend_name(be);
    CAPTURE(backend_);
    const auto r = quantize(host_f32(1, 32, x), dtype::fp4_e2m1, 32, on(be));
    CHECK(r.s[0] == 127);
    CHECK(r.q[0] == (0x7 | (0xA << 4)));  // 6 | -1
    CHECK(r.q[1] == (0x2 | (0x6 << 4)));  // 1 | 4
    CHECK(r.q[2] == (0x4 | (0x8 << 4)));  // 2 | -0
  }
}

TEST_CASE("scale edge cases: zero blocks, powers of two, subnormal inputs") {
  for (backend be : host_backends()) {
    const std::string backend_ = backend_name(be);
    CAPTURE(backend_);
    std::vector<float> zero(64, 0.f);
    auto r = quantize(host_f32(1, 64, zero), dtype::fp8_e4m3, 64, on(be));
    CHECK(r.s[0] == 105);  // floor 1e-4 -> 2^-22
    for (auto c : r.q) CHECK(c == 0);
    std::vector<float> pow2(64, 1.f);
    pow2[5] = -448.f * 0.03125f;  // amax exactly 448·2^-5 -> s = 2^-5, that element -> -448
    r = quantize(host_f32(1, 64, pow2), dtype::fp8_e4m3, 64, on(be));
    CHECK(r.s[0] == 122);
    CHECK(r.q[5] == 0xFE);
    CHECK(r.q[0] == 0x60);  // 1 · 32 = 32 = 2^5: exponent field 5 + 7 = 12, mantissa 0
    std::vector<float> sub(32, 1e-40f);
    r = quantize(host_f32(1, 32, sub), dtype::fp4_e2m1, 32, on(be));
    CHECK(r.s[0] == 1);  // floor 6·2^-126 -> s = 2^-126; 1e-40 / 2^-126 = 0.0085 -> 0
    for (auto c : r.q) CHECK(c == 0);
  }
}

TEST_CASE("every host backend equals ref bitwise on adversarial inputs (f32 and bf16 in, f32 and bf16 out)") {
  const std::int64_t rows = 41, k = 256;
  for (const config& c : kConfigs) {
    const std::string code_ = dtype_name(c.code);
    CAPTURE(code_);
    CAPTURE(c.block);
    const auto v = adversarial(rows, k, c.block, c.code == dtype::fp4_e2m1 ? fp4_grid() : fp8_grid(),
                               1000 + c.block);
    for (const buffer& x : {host_f32(rows, k, v), host_bf16(rows, k, v)}) {
      const auto want = quantize(x, c.code, c.block, on(backend::ref));
      for (dtype out : {dtype::f32, dtype::bf16}) {
        const auto want_rt = round_trip(x, out, c.fmt, c.block, on(backend::ref));
        for (backend be : host_backends()) {
          const std::string backend_ = backend_name(be);
    CAPTURE(backend_);
          const auto got = quantize(x, c.code, c.block, on(be));
          CHECK(got.q == want.q);
          CHECK(got.s == want.s);
          CHECK(round_trip(x, out, c.fmt, c.block, on(be)) == want_rt);
        }
      }
    }
  }
}

TEST_CASE("round trip == dequantize(quantize(x)), and in place == out of place") {
  const std::int64_t rows = 9, k = 128;
  for (const config& c : kConfigs) {
    const auto v = adversarial(rows, k, c.block, c.code == dtype::fp4_e2m1 ? fp4_grid() : fp8_grid(), 7);
    for (backend be : host_backends()) {
      const std::string backend_ = backend_name(be);
    CAPTURE(backend_);
      const buffer x = host_f32(rows, k, v);
      buffer q(c.code, {rows, k}), s(dtype::ue8m0, {rows, k / c.block}), deq(dtype::f32, {rows, k});
      ops::block_quantize(x, q, s, c.block, on(be));
      ops::dequantize(q, s, deq, 1, c.block, on(be));
      const auto rt = round_trip(x, dtype::f32, c.fmt, c.block, on(be));
      CHECK(rt == bytes_of(deq));
      const buffer inplace = host_f32(rows, k, v);
      ops::block_round_trip(inplace, inplace, c.fmt, c.block, on(be));
      CHECK(bytes_of(inplace) == rt);
      // idempotent: a round-tripped block is on the grid and maps to itself
      ops::block_round_trip(inplace, inplace, c.fmt, c.block, on(be));
      CHECK(bytes_of(inplace) == rt);
    }
  }
}

TEST_CASE("CPU backend is bitwise identical for 1 and 2 threads") {
  if (!cpu::simd_isa()) return;
  const std::int64_t rows = 1024, k = 512;
  const auto v = adversarial(rows, k, 64, fp8_grid(), 99);
  const buffer x = host_f32(rows, k, v);
  for (const config& c : kConfigs) {
    const auto one = quantize(x, c.code, c.block, on(backend::cpu, 1));
    const auto two = quantize(x, c.code, c.block, on(backend::cpu, 2));
    CHECK(one.q == two.q);
    CHECK(one.s == two.s);
    CHECK(round_trip(x, dtype::bf16, c.fmt, c.block, on(backend::cpu, 1)) ==
          round_trip(x, dtype::bf16, c.fmt, c.block, on(backend::cpu, 2)));
  }
}

TEST_CASE("non-contiguous and higher-rank views") {
  const std::int64_t rows = 6, k = 128;
  const auto v = adversarial(rows, k, 64, fp8_grid(), 5);
  const buffer dense = host_f32(rows, k, v);
  const auto want = quantize(dense, dtype::fp8_e4m3, 64, on(backend::ref));

  SUBCASE("rows with padding (row stride 2K): every backend runs, same bits") {
    buffer wide(dtype::f32, {rows, 2 * k});
    const tensor_view x = wide.view().narrow(1, k, k);
    ops::copy(dense, x);
    for (backend be : host_backends()) CHECK(quantize(x, dtype::fp8_e4m3, 64, on(be)).q == want.q);
  }
  SUBCASE("transposed storage (inner stride != 1): cpu declines with a reason, automatic falls back to ref") {
    buffer t(dtype::f32, {k, rows});
    const tensor_view x = t.view().transpose(0, 1);
    ops::copy(dense, x);
    CHECK(quantize(x, dtype::fp8_e4m3, 64, {}).q == want.q);
    if (cpu::simd_isa())
      check_error([&] { quantize(x, dtype::fp8_e4m3, 64, on(backend::cpu)); }, {"block_quantize", "innermost stride"});
  }
  SUBCASE("rank 3 whose leading dims cannot merge") {
    buffer big(dtype::f32, {2, 5, k});
    const tensor_view x = big.view().narrow(1, 1, 3);  // [2, 3, K], dim 0 stride 5K
    std::vector<float> vals(2 * 3 * k);
    for (std::size_t i = 0; i < vals.size(); ++i) vals[i] = v[i % v.size()];
    ops::copy(host_f32(3, k, std::vector<float>(vals.begin(), vals.begin() + 3 * k)), x.select(0, 0));
    ops::copy(host_f32(3, k, std::vector<float>(vals.begin() + 3 * k, vals.end())), x.select(0, 1));
    const auto flat = quantize(host_f32(6, k, vals), dtype::fp8_e4m3, 64, on(backend::ref));
    for (backend be : host_backends()) {
      const auto r = quantize(x, dtype::fp8_e4m3, 64, on(be));
      CHECK(r.q == flat.q);
      CHECK(r.s == flat.s);
    }
  }
}

TEST_CASE("dequantize: 128x128 FP8 tiles with ragged edges, FP4 per 32 along K") {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> code8(0, 255), code4(0, 255), sc(110, 140);
  const std::int64_t N = 200, K = 300;  // tiles [2, 3], both edges ragged
  buffer q(dtype::fp8_e4m3, {N, K}), s(dtype::ue8m0, {2, 3});
  auto qs = q.host_span<fp8_e4m3>();
  for (auto& c : qs) {
    c.bits = static_cast<std::uint8_t>(code8(rng));
    if ((c.bits & 0x7F) == 0x7F) c.bits ^= 1;  // no NaN codes here
  }
  for (auto& c : s.host_span<ue8m0>()) c.bits = static_cast<std::uint8_t>(sc(rng));
  for (backend be : host_backends()) {
    const std::string backend_ = backend_name(be);
    CAPTURE(backend_);
    buffer out(dtype::f32, {N, K});
    ops::dequantize(q, s, out, 128, 128, on(be));
    auto o = out.host_span<float>();
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t k = 0; k < K; ++k)
        REQUIRE(double(o[n * K + k]) == double(qs[n * K + k].to_float()) *
                                            std::ldexp(1.0, s.host_span<ue8m0>()[(n / 128) * 3 + k / 128].bits - 127));
  }
  const std::int64_t N4 = 5, K4 = 96;
  buffer q4(dtype::fp4_e2m1, {N4, K4}), s4(dtype::ue8m0, {N4, K4 / 32});
  for (auto& b : std::span<std::uint8_t>(static_cast<std::uint8_t*>(q4.data()), q4.nbytes())) b = code4(rng);
  for (auto& c : s4.host_span<ue8m0>()) c.bits = static_cast<std::uint8_t>(sc(rng));
  for (backend be : host_backends()) {
    buffer out(dtype::bf16, {N4, K4});
    ops::dequantize(q4, s4, out, 1, 32, on(be));
    const auto* bytes = static_cast<const std::uint8_t*>(q4.data());
    for (std::int64_t n = 0; n < N4; ++n)
      for (std::int64_t k = 0; k < K4; ++k) {
        const std::uint8_t b = bytes[(n * K4 + k) / 2];
        const fp4_e2m1 code{static_cast<std::uint8_t>(k % 2 == 0 ? (b & 0xF) : (b >> 4))};
        const double want = code.to_float() * std::ldexp(1.0, s4.host_span<ue8m0>()[n * 3 + k / 32].bits - 127);
        REQUIRE(double(out.host_span<bf16>()[n * K4 + k].to_float()) == want);  // exact in bf16
      }
  }
}

TEST_CASE("misuse raises dsv4::error naming the op and the problem") {
  buffer x(dtype::f32, {4, 128}), q(dtype::fp8_e4m3, {4, 128}), s(dtype::ue8m0, {4, 1});
  check_error([&] { ops::block_quantize(x, buffer(dtype::i8, {4, 128}), s, 128); },
              {"block_quantize", "fp8_e4m3 or fp4_e2m1", "i8"});
  check_error([&] { ops::block_quantize(buffer(dtype::i32, {4, 128}), q, s, 128); },
              {"block_quantize", "unsupported dtype i32"});
  check_error([&] { ops::block_quantize(x, q, s, 48); }, {"block_quantize", "block 48"});
  check_error([&] { ops::block_quantize(x, buffer(dtype::fp4_e2m1, {4, 128}), buffer(dtype::ue8m0, {4, 2}), 64); },
              {"block 64 unsupported for fp4_e2m1"});
  check_error([&] { ops::block_quantize(buffer(dtype::f32, {4, 96}), buffer(dtype::fp8_e4m3, {4, 96}), s, 64); },
              {"not a multiple of block 64"});
  check_error([&] { ops::block_quantize(x, q, buffer(dtype::ue8m0, {4, 2}), 128); }, {"expected last dim 1"});
  check_error([&] { ops::block_quantize(x, buffer(dtype::fp8_e4m3, {3, 128}), s, 128); }, {"shape mismatch"});
  const tensor_view on_gpu(x.data(), dtype::fp8_e4m3, {4, 128}, device::cuda(0));
  check_error([&] { ops::block_quantize(x, on_gpu, s, 128); }, {"different devices"});
  check_error([&] { ops::block_round_trip(x, x.view().narrow(1, 32, 64).narrow(1, 0, 64), ops::quant_format::fp8_e4m3, 64); },
              {"shape mismatch"});
  check_error([&] { ops::block_round_trip(x.view().narrow(0, 0, 2), x.view().narrow(0, 1, 2), ops::quant_format::fp8_e4m3, 64); },
              {"overlap"});
  check_error([&] { ops::dequantize(q, buffer(dtype::ue8m0, {1, 1}), buffer(dtype::f32, {4, 128}), 128, 64); },
              {"dequantize", "expected [1, 2]"});
  for (float bad : {std::numeric_limits<float>::infinity(), std::nanf("")}) {
    for (backend be : host_backends()) {
      x.host_span<float>()[200] = bad;
      check_error([&] { ops::block_quantize(x, q, s, 128, on(be)); }, {"1 block(s)", "inf or NaN"});
      check_error([&] { ops::block_round_trip(x, x, ops::quant_format::fp4_e2m1, 32, on(be)); }, {"inf or NaN"});
      x.host_span<float>()[200] = 0.f;
    }
  }
  q.host_span<fp8_e4m3>()[3].bits = 0xFF;
  for (backend be : host_backends())
    check_error([&] { ops::dequantize(q, s, buffer(dtype::f32, {4, 128}), 1, 128, on(be)); }, {"NaN code"});
}

}  // TEST_SUITE
