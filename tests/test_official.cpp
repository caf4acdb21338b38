// The `official` numerics policy (dsv4/numerics.hpp, dsv4/ref/official.hpp): each rounding point against values
// worked out by hand (the arithmetic is in the comments), the CPU backend against the reference, and the fixed order of
// the BF16 dot products against the instruction itself.
#include <cmath>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "dsv4/cpu/linear.hpp"
#include "dsv4/numerics.hpp"
#include "dsv4/ops/linear.hpp"
#include "dsv4/ref/official.hpp"
#include "harness.hpp"

using namespace dsv4;
using namespace dsv4::test;

namespace {

float bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// An FP8 weight [N, K] with every code `code` and every tile scale 2^e (scale byte 127 + e).
test_weight const_fp8(std::int64_t N, std::int64_t K, std::uint8_t code, int e) {
  test_weight tw{buffer(dtype::fp8_e4m3, {N, K}), buffer(dtype::ue8m0, {(N + 127) / 128, (K + 127) / 128}), {}};
  for (auto& c : tw.w.host_span<fp8_e4m3>()) c.bits = code;
  for (auto& s : tw.s.host_span<ue8m0>()) s.bits = static_cast<std::uint8_t>(127 + e);
  return tw;
}

// The identity as an FP8 weight [N, N] (code 0x38 = 1.0 on the diagonal, 0 elsewhere), tile scales 2^e.
test_weight eye_fp8(std::int64_t N, int e) {
  test_weight tw = const_fp8(N, N, 0, e);
  for (std::int64_t i = 0; i < N; ++i) tw.w.host_span<fp8_e4m3>()[i * N + i].bits = 0x38;
  return tw;
}

}  // namespace

TEST_SUITE("official") {

TEST_CASE("BF16 rounding is nearest-even, ties included") {
  // BF16 keeps 7 mantissa bits: in [1, 2) the step is 2^-7.
  CHECK(round_bf16(1.f + 0x1p-8f) == 1.f);                          // tie between 1 and 1 + 2^-7: even is 1
  CHECK(round_bf16(1.f + 3 * 0x1p-8f) == 1.f + 0x1p-6f);            // tie between 1 + 2^-7 (odd) and 1 + 2^-6 (even)
  CHECK(round_bf16(1.f + 0x1p-8f + 0x1p-20f) == 1.f + 0x1p-7f);     // just above the tie: up
  CHECK(round_bf16(-(1.f + 0x1p-8f)) == -1.f);                      // symmetric
  CHECK(round_bf16(bits(0x7F7FFFFFu)) == INFINITY);                 // FLT_MAX rounds past the largest BF16
  CHECK(std::isnan(round_bf16(NAN)));
  CHECK(round_bf16(bits(0x00010000u)) == bits(0x00010000u));        // a subnormal that is BF16 stays
}

TEST_CASE("Q8: the UE8M0 scale at the 1e-4 floor, at powers of two and just above them") {
  float x[256] = {}, q[256], s[2];
  // Block 0 all zero: amax floored to 1e-4; 1e-4 · fp32(1/448) = 2.2321e-7 = 2^-22.095 -> s = 2^-22.
  // Block 1: amax = 448 · 2^3 exactly -> s = 2^3, the top code exactly 448.
  for (int i = 128; i < 256; ++i) x[i] = (i % 2 ? -1.f : 1.f) * 448.f * 8.f * static_cast<float>(i - 127) / 129.f;
  x[255] = 448.f * 8.f;
  REQUIRE(ref::official::act_quant_fp8(x, 256, q, s));
  CHECK(s[0] == 0x1p-22f);
  for (int i = 0; i < 128; ++i) CHECK(q[i] == 0.f);
  CHECK(s[1] == 8.f);
  CHECK(q[255] == 448.f);
  // amax one BF16 step above 448 · 2^3 (3612): the scale doubles to 16 and the top value 3612 / 16 = 225.75 rounds to
  // the E4M3 grid (step 16 in [128, 256)) at 224.
  x[255] = 448.f * 8.f * (1.f + 0x1p-7f);
  REQUIRE(ref::official::act_quant_fp8(x, 256, q, s));
  CHECK(s[1] == 16.f);
  CHECK(q[255] == 224.f);
  // Values below the amax round to E4M3 after division: with s = 1 (amax 448), 0.3 -> 0.3125 (9.6 steps of 2^-5 -> 10).
  float y[128] = {}, qy[128], sy[1];
  y[0] = 448.f;
  y[1] = 0.3f;
  y[2] = 0.001f;  // subnormal E4M3: 0.001 / 2^-9 = 0.512 -> 1 · 2^-9
  REQUIRE(ref::official::act_quant_fp8(y, 128, qy, sy));
  CHECK(sy[0] == 1.f);
  CHECK(qy[1] == 0.3125f);
  CHECK(qy[2] == 0x1p-9f);
  float bad[128] = {};
  bad[5] = NAN;
  CHECK_FALSE(ref::official::act_quant_fp8(bad, 128, qy, sy));
}

TEST_CASE("promoted FP8 GEMM: Q8 of x, per-tile partials promoted in k order, BF16 output (worked values)") {
  // W [1, 256]: every code 1.0; tile 0 scale 2^-3, tile 1 scale 2^2 (one scale row: N = 1).
  test_weight tw = const_fp8(1, 256, 0x38, 0);
  tw.s.host_span<ue8m0>()[0].bits = 127 - 3;
  tw.s.host_span<ue8m0>()[1].bits = 127 + 2;
  // x block 0: 448 and 127 values 0.3 (Q8: s = 1, 0.3 -> 0.3125); block 1: 1.0 and 127 zeros (s = 2^-8, code 256).
  std::vector<float> xv(256, 0.f);
  xv[0] = 448.f;
  for (int i = 1; i < 128; ++i) xv[i] = 0.3f;
  xv[128] = 1.f;
  // P_0 = 448 + 127 · 0.3125 = 487.6875, times 2^-3 = 60.9609375; P_1 = 256, times 2^-8 · 2^2 = 4.
  // acc = 64.9609375 -> BF16 (step 0.5 in [64, 128)): 65.0.
  const buffer x = host_f32(1, 256, xv);
  for (backend be : host_backends()) {
    CAPTURE(backend_name(be));
    buffer y(dtype::f32, {1, 1});
    ops::linear(x, tw.q(), y, on(be), numerics::official);
    CHECK(y.host_span<float>()[0] == 65.f);
    ops::linear(x, tw.q(), y, on(be), numerics::fp32);  // the fp32 policy: 448/8 + 127·0.3/8 + 4 = 64.7625
    CHECK(y.host_span<float>()[0] == doctest::Approx(64.7625).epsilon(1e-6));
  }
}

TEST_CASE("promoted FP4 GEMM: 32-blocks with their own scales under one 128-block activation scale") {
  // W [16, 128] FP4: every code 1.0 (0x2); block b of row n has scale 2^(b - n % 3).
  const std::int64_t N = 16, K = 128;
  test_weight tw{buffer(dtype::fp4_e2m1, {N, K}), buffer(dtype::ue8m0, {N, K / 32}), {}};
  std::memset(tw.w.data(), 0x22, tw.w.nbytes());
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t b = 0; b < K / 32; ++b)
      tw.s.host_span<ue8m0>()[n * (K / 32) + b].bits = static_cast<std::uint8_t>(127 + b - n % 3);
  // x: 6 in element 0 (amax 6 -> s = 2^ceil(log2(6/448)) = 2^-6, code 384 exact), 1 elsewhere (code 64, exact).
  std::vector<float> xv(K, 1.f);
  xv[0] = 6.f;
  // P_0 = (384 + 31·64)·2^-6 = 37, P_b = 32 (b > 0). y_n = Σ_b P_b·2^(b - n%3) = (37 + 64 + 128 + 256)·2^-(n%3)
  // = 485·2^-(n%3) -> BF16 (step 2 in [256, 512)): 484 · 2^-(n%3).
  const buffer x = host_f32(1, K, xv);
  for (backend be : host_backends()) {
    buffer y(dtype::f32, {1, N});
    ops::linear(x, tw.q(), y, on(be), numerics::official);
    for (std::int64_t n = 0; n < N; ++n) CHECK(y.host_span<float>()[n] == std::ldexp(484.f, -static_cast<int>(n % 3)));
  }
}

TEST_CASE("cpu vs ref: bitwise for FP4 blocks whose fp32 partial sums are exact, within block rounding for FP8") {
  if (!cpu::simd_isa()) return;
  for (const auto& [dt, N, K] : {std::tuple{dtype::fp4_e2m1, std::int64_t{70}, std::int64_t{512}},
                                 std::tuple{dtype::fp8_e4m3, std::int64_t{200}, std::int64_t{384}},
                                 std::tuple{dtype::fp8_e4m3, std::int64_t{45}, std::int64_t{301}}}) {
    CAPTURE(dtype_name(dt));
    CAPTURE(K);
    const auto tw = make_weight(dt, N, K, 71);
    for (const std::int64_t T : {1, 7, 13}) {
      CAPTURE(T);
      const auto xv = randn(static_cast<std::size_t>(T * K), 72);
      const buffer x = host_f32(T, K, xv);
      buffer yr(dtype::f32, {T, N}), yc(dtype::f32, {T, N});
      ops::linear(x, tw.q(), yr, on(backend::ref), numerics::official);
      ops::linear(x, tw.q(), yc, on(backend::cpu), numerics::official);
      const auto r = yr.host_span<float>(), c = yc.host_span<float>();
      for (std::int64_t i = 0; i < T * N; ++i) {
        CHECK(r[i] == round_bf16(r[i]));  // BF16 outputs
        if (dt == dtype::fp4_e2m1) {
          // Gaussian x: |q| <= 448 with most mass far below; Σ|q·c| over 32 codes stays under 2^14 here, so the
          // fp32 partial sums are exact and cpu is the reference bit for bit.
          REQUIRE(c[i] == r[i]);
        } else {
          // FP8 blocks of 128: the fp32 pair sums round (relative 2^-24 per add, |P| <= Σ|q·c|); the promoted
          // accumulator then differs by far less than a BF16 step, so outputs differ by at most one BF16 step.
          REQUIRE(std::fabs(c[i] - r[i]) <= std::ldexp(std::fabs(r[i]), -7) + 1e-30f);
        }
      }
    }
  }
}

TEST_CASE("cpu: official outputs do not depend on the batch or the thread count") {
  if (!cpu::simd_isa()) return;
  for (dtype dt : {dtype::fp4_e2m1, dtype::fp8_e4m3}) {
    const std::int64_t N = 72, K = 256, T = 19;
    const auto tw = make_weight(dt, N, K, 81);
    const auto xv = randn(static_cast<std::size_t>(T * K), 82, 3.f);
    buffer all(dtype::f32, {T, N});
    ops::linear(host_f32(T, K, xv), tw.q(), all, on(backend::cpu), numerics::official);
    for (std::int64_t t = 0; t < T; ++t)
      for (int threads : {1, 2}) {
        std::vector<float> row(xv.begin() + t * K, xv.begin() + (t + 1) * K);
        buffer one(dtype::f32, {1, N});
        ops::linear(host_f32(1, K, row), tw.q(), one, on(backend::cpu, threads), numerics::official);
        for (std::int64_t n = 0; n < N; ++n) REQUIRE(one.host_span<float>()[n] == all.host_span<float>()[t * N + n]);
      }
  }
}

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bf16"))) static void dp_bf16(const std::uint16_t* a, const std::uint16_t* b,
                                                                   float* acc) {
  const __m512bh va = (__m512bh)_mm512_loadu_si512(a), vb = (__m512bh)_mm512_loadu_si512(b);
  _mm512_storeu_ps(acc, _mm512_dpbf16_ps(_mm512_loadu_ps(acc), va, vb));
}

TEST_CASE("vdpbf16ps adds the odd product first, then the even one, each rounded: the order the portable code uses") {
  if (!__builtin_cpu_supports("avx512bf16")) return;
  std::mt19937_64 rng(5);
  long same = 0, n = 0;
  for (int it = 0; it < 20000; ++it) {
    std::uint16_t a[32], b[32];
    float acc[16], want[16];
    for (int i = 0; i < 32; ++i) {  // E4M3-like values: 4 significant bits, exponents over 40 binades, both signs
      a[i] = static_cast<std::uint16_t>((rng() & 1) << 15 | (107 + rng() % 40) << 7 | (rng() % 8) << 4);
      b[i] = static_cast<std::uint16_t>((rng() & 1) << 15 | (107 + rng() % 40) << 7 | (rng() % 8) << 4);
    }
    for (int i = 0; i < 16; ++i) {
      acc[i] = std::ldexp(static_cast<float>(static_cast<std::int64_t>(rng() % 2000001) - 1000000),
                          static_cast<int>(rng() % 30) - 25);
      const float p1 = bits(std::uint32_t{a[2 * i + 1]} << 16) * bits(std::uint32_t{b[2 * i + 1]} << 16);
      const float p0 = bits(std::uint32_t{a[2 * i]} << 16) * bits(std::uint32_t{b[2 * i]} << 16);
      volatile float s = acc[i] + p1;
      want[i] = s + p0;
    }
    dp_bf16(a, b, acc);
    for (int i = 0; i < 16; ++i, ++n) same += acc[i] == want[i];
  }
  CHECK(same == n);
}
#endif

}  // TEST_SUITE
