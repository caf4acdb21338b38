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
#include "dsv4/ops/moe.hpp"
#include "dsv4/ref/rotary.hpp"
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
  // T = 19: token lanes, T = 70: panels; each row against T = 1 (the GEMV), so all three schemes meet.
  for (dtype dt : {dtype::fp4_e2m1, dtype::fp8_e4m3})
  for (const std::int64_t T : {19, 70}) {
    CAPTURE(T);
    const std::int64_t N = 72, K = 256;
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

TEST_CASE("q head norm in BF16 arithmetic: five roundings (worked values)") {
  // v = (3, 4): squares 9, 16 (exact); mean 12.5; + 1e-6 -> 12.500001 -> BF16 12.5; 1/sqrt(12.5) = 0.28284271
  // -> BF16 (step 2^-9 in [0.25, 0.5)): 145 · 2^-9 = 0.283203125; v·r = 0.849609375 -> BF16 (step 2^-8 in [0.5, 1)):
  // 217.5 steps, a tie -> 218 · 2^-8 = 0.8515625; 4 · r = 1.1328125, exactly BF16.
  float v[2] = {3.f, 4.f};
  ref::official::q_head_norm(v, 2, 1e-6f);
  CHECK(v[0] == 0.8515625f);
  CHECK(v[1] == 1.1328125f);
  // The fp32 policy's RMS rescale of the same vector: 3 / sqrt(12.5) = 0.84852815.
  float f[2] = {3.f, 4.f};
  ref::rms_norm(f, 2, nullptr, 1e-6);
  CHECK(f[0] == doctest::Approx(0.84852815).epsilon(1e-6));
}

TEST_CASE("index score: BF16 dot, BF16 weighted ReLU, fp32 head sum, BF16 score (worked values)") {
  // Two heads: d = 3 and 5, w = 1 + 2^-7 and 1 (BF16 values). 3 · (1 + 2^-7) = 3.0234375 -> BF16 (step 2^-6 in
  // [2, 4)): 193.5 steps, a tie -> 194 · 2^-6 = 3.03125; + 5 = 8.03125 -> BF16 (step 2^-4 in [8, 16)): 128.5 steps,
  // a tie -> 128 · 2^-4 = 8. The fp32 policy gives 8.0234375.
  const float w[2] = {1.f + 0x1p-7f, 1.f}, d[2] = {3.f, 5.f};
  CHECK(ref::official::indexer_head_sum_bf16(w, d, 2) == 8.f);
  const float r[2] = {3.f, 5.f};
  CHECK(ref::indexer_head_sum(w, r, 2) == 8.0234375f);
  // The dot is rounded to BF16 before the ReLU and the weight: 1 + 2^-8 -> 1 (a tie to even); negative dots give 0.
  const float w2[2] = {0.5f, 2.f}, d2[2] = {1.f + 0x1p-8f, -3.f};
  CHECK(ref::official::indexer_head_sum_bf16(w2, d2, 2) == 0.5f);
}

TEST_CASE("attention: P rounded to BF16 for P·V only, the sink in the denominator only (worked values)") {
  // q = (1, 0), scale 1: logits s = (0, -1) for rows k1 = (0, 1), k2 = (-1, 6); m = 0; p = (1, e^-1).
  // bf16(e^-1 = 0.36787944 = 1.4715 · 2^-2) keeps 7 mantissa bits: 1.46875 · 2^-2 = 0.3671875.
  // out[1] = bf16((1 + 6 · 0.3671875) / (1 + e^-1 + 2)) = bf16(0.9505) = 0.94921875 (step 2^-8 below 1); with the
  // unrounded P it would be bf16(0.9517) = 0.953125.
  const float q[2] = {1.f, 0.f}, k1[2] = {0.f, 1.f}, k2[2] = {-1.f, 6.f};
  const float* rows[2] = {k1, k2};
  const float sink = std::log(2.f);
  float out[2], lse;
  ref::official::attention_row(q, rows, 2, 2, 2, sink, 1.f, out, &lse);
  const float p2 = std::exp(-1.f), pb = round_bf16(p2);
  CHECK(pb == 0.3671875f);
  // acc = (1·0 + pb·(-1), 1·1 + pb·2); l = 1 + p2 (unrounded); den = l + e^(sink - 0) = l + 2.
  const float l = std::fma(0.f, 0.f, 1.f + p2), den = l + std::exp(sink);
  CHECK(out[0] == round_bf16((0.f + -pb) / den));
  CHECK(out[1] == round_bf16((1.f + 6.f * pb) / den));
  CHECK(out[1] == 0.94921875f);
  CHECK(round_bf16((1.f + 6.f * p2) / den) == 0.953125f);  // what unrounded P would give
  CHECK(lse == doctest::Approx(std::log(1.0 + std::exp(-1.0))).epsilon(1e-6));  // the sink is not in lse
}

TEST_CASE("attention: blocks of 64 restart at the compressed segment; the running max rescales earlier blocks") {
  // 70 window rows then 3 compressed rows, D = 4, random; ref::official::attention_row against the same blocked
  // recurrence written out here in double except the roundings it prescribes.
  std::mt19937_64 rng(3);
  std::normal_distribution<float> nd(0.f, 2.f);
  const std::int64_t D = 4, nw = 70, n = 73;
  std::vector<std::vector<float>> kv(n, std::vector<float>(D));
  std::vector<const float*> rows;
  for (auto& r : kv) {
    for (float& v : r) v = round_bf16(nd(rng));
    rows.push_back(r.data());
  }
  float q[4];
  for (float& v : q) v = round_bf16(nd(rng));
  float out[4];
  ref::official::attention_row(q, rows.data(), n, nw, D, 0.5f, 0.7f, out, nullptr);
  // blocks: [0, 64), [64, 70), [70, 73)
  float m = -INFINITY, l = 0.f;
  float acc[4] = {0, 0, 0, 0};
  for (auto [b0, b1] : {std::pair{0, 64}, std::pair{64, 70}, std::pair{70, 73}}) {
    float s[64], mb = m;
    for (int i = b0; i < b1; ++i) {
      double dot = 0;
      for (int d = 0; d < D; ++d) dot += double(q[d]) * rows[i][d];
      s[i - b0] = static_cast<float>(dot) * 0.7f;
      mb = std::max(mb, s[i - b0]);
    }
    const float alpha = std::exp(m - mb);
    double psum = 0, pv[4] = {0, 0, 0, 0};
    for (int i = b0; i < b1; ++i) {
      const float p = std::exp(s[i - b0] - mb);
      psum += p;
      for (int d = 0; d < D; ++d) pv[d] += double(round_bf16(p)) * rows[i][d];
    }
    l = std::fma(l, alpha, static_cast<float>(psum));
    for (int d = 0; d < D; ++d) acc[d] = acc[d] * alpha + static_cast<float>(pv[d]);
    m = mb;
  }
  for (int d = 0; d < D; ++d) CHECK(out[d] == round_bf16(acc[d] / (l + std::exp(0.5f - m))));
}

namespace {
// An FP8 weight [N, N]: code `diag` on the diagonal, `super` on the superdiagonal, scale 2^e everywhere.
test_weight band_fp8(std::int64_t N, std::uint8_t diag, std::uint8_t super, int e) {
  test_weight tw = const_fp8(N, N, 0, e);
  for (std::int64_t i = 0; i < N; ++i) {
    tw.w.host_span<fp8_e4m3>()[i * N + i].bits = diag;
    if (i + 1 < N) tw.w.host_span<fp8_e4m3>()[i * N + i + 1].bits = super;
  }
  return tw;
}
}  // namespace

TEST_CASE("MoE: route weight before w2, h rounded to BF16 and then Q8 (double rounding), worked values") {
  // D = I = 128, one expert with identity FP8 weights (code 0x38 = 1.0, scale 1). x = 20 everywhere: Q8 scale
  // 2^ceil(log2(20/448)) = 2^-4, code 320 (exact), so g = u = 20; SwiGLU: min(g, 10) = 10, clamp(u) = 10,
  // silu(10)·10 = 99.995460, times the route weight 0.01064 = 1.0639517.
  //   h -> BF16 (step 2^-7): 1.0625. Q8 of a row of 1.0625: s = 2^ceil(log2(1.0625/448)) = 2^-8, 1.0625 · 256 = 272,
  //   a tie between E4M3 256 and 288 -> 256 (even), so w2 gives exactly 1.0.
  //   Without the BF16 step, 1.0639517 · 256 = 272.4 rounds to 288: 1.125. Route weight after w2: ~106.
  const std::int64_t D = 128;
  const test_weight eye = eye_fp8(D, 0);
  const ops::ffn_weights e{eye.q(), eye.q(), eye.q()};
  buffer x(dtype::f32, {1, D}), w(dtype::f32, {1, 1}), idx(dtype::i32, {1, 1}), y(dtype::f32, {1, D});
  for (float& v : x.host_span<float>()) v = 20.f;
  w.host_span<float>()[0] = 0.01064f;
  idx.host_span<std::int32_t>()[0] = 0;
  for (backend be : host_backends()) {
    CAPTURE(backend_name(be));
    ops::moe_ffn(x, w, idx, std::span<const ops::ffn_weights>(&e, 1), nullptr, 10.f, y, on(be), numerics::official);
    for (std::int64_t d = 0; d < D; ++d) REQUIRE(y.host_span<float>()[d] == 1.f);
    ops::moe_ffn(x, w, idx, std::span<const ops::ffn_weights>(&e, 1), nullptr, 10.f, y, on(be));  // fp32 policy
    CHECK(y.host_span<float>()[0] == doctest::Approx(1.0639517).epsilon(1e-5));
  }
}

TEST_CASE("MoE: expert outputs summed in ascending expert id, not in routing order (worked values)") {
  // Three experts, identity w1 / w3, h = bf16(99.99546 · 0.01) = 1.0 for every element, Q8 code 256 at s = 2^-8.
  //   expert 0: w2 = identity · 2^20       -> +2^20
  //   expert 1: w2 = identity + 2^-7 on the superdiagonal -> 1 + 2^-7 = 1.0078125 (rows 0 .. 126), 1 (row 127)
  //   expert 2: w2 = -identity · 2^20      -> -2^20
  // Routed as [0, 2, 1]. Ascending id: (2^20 + 1.0078125) rounds to 2^20 + 1 in fp32 (step 0.125), minus 2^20: 1.
  // Routing order would give (2^20 − 2^20) + 1.0078125 = 1.0078125.
  const std::int64_t D = 128;
  const test_weight eye = eye_fp8(D, 0), big = eye_fp8(D, 20), neg = band_fp8(D, 0xB8, 0, 20),
                    fine = band_fp8(D, 0x38, 0x04, 0);  // 0x04: E4M3 subnormal 4 · 2^-9 = 2^-7
  const ops::ffn_weights ex[3] = {{eye.q(), big.q(), eye.q()}, {eye.q(), fine.q(), eye.q()}, {eye.q(), neg.q(), eye.q()}};
  buffer x(dtype::f32, {1, D}), w(dtype::f32, {1, 3}), idx(dtype::i32, {1, 3}), y(dtype::f32, {1, D});
  for (float& v : x.host_span<float>()) v = 20.f;
  const std::int32_t order[3] = {0, 2, 1};
  for (int i = 0; i < 3; ++i) {
    w.host_span<float>()[i] = 0.01f;
    idx.host_span<std::int32_t>()[i] = order[i];
  }
  for (backend be : host_backends()) {
    CAPTURE(backend_name(be));
    ops::moe_ffn(x, w, idx, std::span<const ops::ffn_weights>(ex, 3), nullptr, 10.f, y, on(be), numerics::official);
    for (std::int64_t d = 0; d < D; ++d) REQUIRE(y.host_span<float>()[d] == 1.f);
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
