// linear (spec §6.4, policy fp32): every stored weight format decoded exactly, ref and cpu against an independent
// decode written here (code value · 2^(scale-127) via ldexp), bitwise row independence of the CPU backend, errors.
#include <cmath>
#include <random>

#include "dsv4/ops/linear.hpp"
#include "harness.hpp"

using namespace dsv4;
using namespace dsv4::test;

namespace {

struct fmt_case {
  dtype dt;
  std::int64_t N, K;
};
// Shapes with ragged edges: FP8 tiles cut at 128 in both dims, K % 16 != 0 for the dense and FP8 tails.
const fmt_case kCases[] = {{dtype::f32, 37, 83}, {dtype::bf16, 40, 133}, {dtype::fp8_e4m3, 200, 300},
                           {dtype::fp4_e2m1, 45, 352}};

}  // namespace

TEST_SUITE("linear") {

TEST_CASE("every format and backend matches an independent exact decode") {
  for (const auto& fc : kCases)
  // 1: the decode GEMV where one exists; 17: the prefill GEMM or panel, FP4 still on the GEMV (up to 48 tokens);
  // 49: FP4 on the prefill GEMM too
  for (const std::int64_t T : {1, 17, 49}) {
    CAPTURE(dtype_name(fc.dt));
    CAPTURE(T);
    const auto tw = make_weight(fc.dt, fc.N, fc.K, 11);
    const auto xv = randn(static_cast<std::size_t>(T * fc.K), 12);
    const buffer x = host_f32(T, fc.K, xv);
    for (backend be : host_backends()) {
      CAPTURE(backend_name(be));
      buffer y(dtype::f32, {T, fc.N});
      ops::linear(x, tw.q(), y, on(be));
      const auto yv = y.host_span<float>();
      for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t n = 0; n < fc.N; ++n) {
          double exact = 0, mag = 0;
          for (std::int64_t k = 0; k < fc.K; ++k) {
            const double p = double(xv[t * fc.K + k]) * tw.exact[n * fc.K + k];
            exact += p;
            mag += std::fabs(p);
          }
          // ref: a double sum rounded once to fp32 -> half an ulp of |exact| plus the double sum's own error.
          // cpu: fp32 lanes re-associate the sum; the error of a W-lane sum with a final tree is at most
          // (K/W + log2 W + 1)·2^-24·Σ|x·w|; K/4 + 8 covers every ISA here (W >= 4).
          const double tol = be == backend::ref ? std::ldexp(std::fabs(exact), -24) + 1e-12 * mag
                                                : (fc.K / 4.0 + 8) * std::ldexp(mag, -24);
          REQUIRE(std::fabs(yv[t * fc.N + n] - exact) <= tol);
        }
    }
  }
}

TEST_CASE("decode is exact: x = identity gives W^T bit for bit on every backend") {
  for (const auto& fc : kCases) {
    CAPTURE(dtype_name(fc.dt));
    const auto tw = make_weight(fc.dt, fc.N, fc.K, 21);
    std::vector<float> eye(static_cast<std::size_t>(fc.K * fc.K), 0.f);
    for (std::int64_t k = 0; k < fc.K; ++k) eye[k * fc.K + k] = 1.f;
    const buffer x = host_f32(fc.K, fc.K, eye);
    for (backend be : host_backends()) {
      buffer y(dtype::f32, {fc.K, fc.N});
      ops::linear(x, tw.q(), y, on(be));
      const auto yv = y.host_span<float>();
      for (std::int64_t k = 0; k < fc.K; ++k)
        for (std::int64_t n = 0; n < fc.N; ++n) REQUIRE(double(yv[k * fc.N + n]) == tw.exact[n * fc.K + k]);
    }
  }
}

TEST_CASE("FP4 block scales at both ends of the UE8M0 range decode exactly in the GEMV and the prefill GEMM") {
  // The CPU FP4 GEMV loads the E2M1 table multiplied by the scale for one token; for 2-4 tokens it adds the exponent
  // while every scale byte of a 64-block chunk is in [2, 252] and loads the table otherwise; each must give the exact
  // value e2m1 · 2^(s-127). Rows 0-7 keep every chunk in range; rows 8-15 have their second chunk (blocks 64-127)
  // cycle through 0, 1, 2, 251, 252, 120 (subnormal weights for 0 and 1; 253 and above would overflow 6 · 2^(s-127)
  // in fp32).
  const std::int64_t N = 16, K = 4096, nb = K / 32;
  buffer w(dtype::fp4_e2m1, {N, K}), s(dtype::ue8m0, {N, nb});
  std::mt19937_64 rng(71);
  auto* bytes = static_cast<std::uint8_t*>(w.data());
  for (std::int64_t i = 0; i < N * K / 2; ++i) bytes[i] = static_cast<std::uint8_t>(rng());
  const std::uint8_t ends[] = {0, 1, 2, 251, 252, 120};
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t b = 0; b < nb; ++b)
      s.host_span<ue8m0>()[n * nb + b].bits =
          n >= 8 && b >= 64 ? ends[(n + b) % 6] : static_cast<std::uint8_t>(118 + (n + b) % 9);
  const auto exact = [&](std::int64_t n, std::int64_t k) {
    return fp4_exact(bytes, n * K + k, s.host_span<ue8m0>()[n * nb + k / 32].bits);
  };
  const ops::qweight q{w.view(), s.view()};
  // one-hot tokens: the GEMV (1 token) and the prefill GEMM (49 tokens: FP4 stays on the GEMV up to 48) return
  // column k of W exactly. The chunk and block edges first, then columns spread over K.
  constexpr int B = 49;
  std::vector<float> onehot(static_cast<std::size_t>(B * K), 0.f);
  std::int64_t ks[B] = {0, 1, 31, 1000, 2047, 2048, 2049, 3001, 4095, 2, 63, 64, 2050, 2111, 2112, 4064, 4094};
  for (int t = 17; t < B; ++t) ks[t] = (t * 613) % K;
  for (int t = 0; t < B; ++t) onehot[t * K + ks[t]] = 1.f;
  const buffer x1 = host_f32(B, K, onehot);
  buffer panel(dtype::f32, {B, N});
  ops::linear(x1, q, panel, on(backend::cpu));
  for (int t = 0; t < B; ++t) {
    buffer y(dtype::f32, {1, N});
    ops::linear(x1.view().narrow(0, t, 1), q, y, on(backend::cpu));
    for (std::int64_t n = 0; n < N; ++n) {
      CAPTURE(n);
      CAPTURE(ks[t]);
      REQUIRE(double(y.host_span<float>()[n]) == exact(n, ks[t]));
      REQUIRE(double(panel.host_span<float>()[t * N + n]) == exact(n, ks[t]));
    }
  }
  // the same tokens 4 at a time (the GEMV's 4-token pass: the added table on rows 0-7, the loaded one on rows 8-15's
  // second chunk)
  for (int t0 = 0; t0 + 4 <= B; t0 += 4) {
    buffer y(dtype::f32, {4, N});
    ops::linear(x1.view().narrow(0, t0, 4), q, y, on(backend::cpu));
    for (int t = t0; t < t0 + 4; ++t)
      for (std::int64_t n = 0; n < N; ++n) {
        CAPTURE(n);
        CAPTURE(ks[t]);
        REQUIRE(double(y.host_span<float>()[(t - t0) * N + n]) == exact(n, ks[t]));
      }
  }
  // random tokens: each alone (GEMV) bitwise equal to its row of the prefill GEMM
  const buffer x = host_f32(B, K, randn(B * K, 72));
  ops::linear(x, q, panel, on(backend::cpu));
  for (int t = 0; t < B; ++t) {
    buffer y(dtype::f32, {1, N});
    ops::linear(x.view().narrow(0, t, 1), q, y, on(backend::cpu));
    for (std::int64_t n = 0; n < N; ++n)
      REQUIRE(f32_to_bits(y.host_span<float>()[n]) == f32_to_bits(panel.host_span<float>()[t * N + n]));
  }
}

TEST_CASE("cpu: an output row does not depend on the batch it is in, or on the thread count") {
  if (!cpu::simd_isa()) return;
  // Every format; FP8 with K % 64 == 0 (the decode GEMV in the VBMI lane order) and with a tail (panel only), rows
  // crossing a 128-row scale tile; FP4 with N % 8 != 0 (a short last GEMV tile); BF16 and F32 with K % 16 == 0 (their
  // decode GEMV) and with a tail (panel only).
  const fmt_case cases[] = {{dtype::fp4_e2m1, 70, 512}, {dtype::fp8_e4m3, 136, 1024}, {dtype::fp8_e4m3, 200, 300},
                            {dtype::bf16, 40, 133},     {dtype::f32, 37, 83},         {dtype::bf16, 45, 1024},
                            {dtype::f32, 19, 272}};
  for (const auto& fc : cases) {
    CAPTURE(dtype_name(fc.dt));
    CAPTURE(fc.K);
    const std::int64_t N = fc.N, K = fc.K, T = 53;
    const auto tw = make_weight(fc.dt, N, K, 31);
    const auto xv = randn(static_cast<std::size_t>(T * K), 32);
    const buffer x = host_f32(T, K, xv);
    buffer all(dtype::f32, {T, N}), two(dtype::f32, {T, N});
    ops::linear(x, tw.q(), all, on(backend::cpu, 1));
    ops::linear(x, tw.q(), two, on(backend::cpu, 2));
    CHECK(bytes_of(all) == bytes_of(two));
    // each token alone (decode), small batches (the GEMV of 2-4 tokens, of 7 and 11 in token groups), slices past
    // 16 tokens (the prefill GEMM, or the panel; FP4 on the GEMV up to 48) and past 48, all against the result for
    // all 53 tokens (the prefill GEMM)
    const std::pair<std::int64_t, std::int64_t> slices[] = {{0, 1}, {52, 1}, {3, 2}, {8, 3},  {11, 4},
                                                            {5, 7}, {12, 11}, {2, 19}, {30, 23}, {1, 50}};
    for (const auto& [t0, len] : slices) {
      CAPTURE(t0);
      CAPTURE(len);
      for (int threads : {1, 2}) {
        buffer y(dtype::f32, {len, N});
        ops::linear(x.view().narrow(0, t0, len), tw.q(), y, on(backend::cpu, threads));
        for (std::int64_t i = 0; i < len * N; ++i)
          REQUIRE(f32_to_bits(y.host_span<float>()[i]) == f32_to_bits(all.host_span<float>()[t0 * N + i]));
      }
    }
  }
}

TEST_CASE("cpu: the prefill GEMM's edges (K chunks, token blocks, short tiles and panels, tails) equal the GEMV") {
  if (!cpu::simd_isa()) return;
  // More than 16 tokens (FP4: 48) take the prefill GEMM on AVX-512 (x packed in tiles of 6 tokens, 64-row panels, K
  // in chunks of 128 x 16, tokens in equal blocks of at most 516); one token takes the decode GEMV, or the dot panel
  // where the format has none (tails). Both must give the same bits for every token. Shapes: FP8 with K' = K/16 =
  // 144 (a chunk of 16 after one of 128) and 200 rows (a last panel of 8), FP4 with K' = 260 (three chunks) and 70
  // rows, BF16 with a K % 16 tail, F32 with K < 16 (the tail alone), and 35 row blocks (tasks of 4-block panels, the
  // last one of 3). 517 tokens: two token blocks (264 + 253), a last tile of 1.
  const fmt_case cases[] = {{dtype::fp8_e4m3, 200, 2304}, {dtype::fp4_e2m1, 70, 4160}, {dtype::bf16, 45, 2100},
                            {dtype::f32, 19, 10},         {dtype::fp4_e2m1, 560, 256}};
  const std::int64_t T = 517;
  for (const auto& fc : cases) {
    CAPTURE(dtype_name(fc.dt));
    const std::int64_t N = fc.N, K = fc.K;
    const auto tw = make_weight(fc.dt, N, K, 41);
    const buffer x = host_f32(T, K, randn(static_cast<std::size_t>(T * K), 42));
    buffer one(dtype::f32, {T, N}), two(dtype::f32, {T, N});
    ops::linear(x, tw.q(), one, on(backend::cpu, 1));
    ops::linear(x, tw.q(), two, on(backend::cpu, 2));
    CHECK(bytes_of(one) == bytes_of(two));
    for (const std::int64_t t : {0, 5, 6, 263, 264, 265, 510, 516}) {  // block edge at 264
      CAPTURE(t);
      buffer y(dtype::f32, {1, N});
      ops::linear(x.view().narrow(0, t, 1), tw.q(), y, on(backend::cpu));
      for (std::int64_t n = 0; n < N; ++n)
        REQUIRE(f32_to_bits(y.host_span<float>()[n]) == f32_to_bits(one.host_span<float>()[t * N + n]));
    }
  }
}

TEST_CASE("FP8 rows narrowed on tile boundaries (weight rows + scale rows) give those rows of the full product") {
  // How the attention layer runs wo_a per group: the narrowed views must address the same codes and scales.
  const auto tw = make_weight(dtype::fp8_e4m3, 384, 256, 61);
  const buffer x = host_f32(3, 256, randn(3 * 256, 62));
  for (backend be : host_backends()) {
    buffer full(dtype::f32, {3, 384});
    ops::linear(x, tw.q(), full, on(be));
    for (std::int64_t g = 0; g < 3; ++g) {
      const std::int64_t t = be == backend::ref ? 3 : 1;  // cpu: one token (the decode GEMV) against the batch
      buffer part(dtype::f32, {t, 128});
      ops::linear(x.view().narrow(0, 0, t), {tw.w.view().narrow(0, g * 128, 128), tw.s.view().narrow(0, g, 1)}, part,
                  on(be));
      for (std::int64_t i = 0; i < t; ++i)
        for (std::int64_t n = 0; n < 128; ++n)
          REQUIRE(f32_to_bits(part.host_span<float>()[i * 128 + n]) ==
                  f32_to_bits(full.host_span<float>()[i * 384 + g * 128 + n]));
    }
  }
}

TEST_CASE("bf16 in and out: the fp32 result rounded once") {
  const auto tw = make_weight(dtype::fp8_e4m3, 130, 256, 41);
  const auto xv = randn(3 * 256, 42);
  const buffer x16 = host_bf16(3, 256, xv);
  buffer x32(dtype::f32, {3, 256});
  for (int i = 0; i < 3 * 256; ++i) x32.host_span<float>()[i] = x16.host_span<bf16>()[i].to_float();
  for (backend be : host_backends()) {
    buffer y32(dtype::f32, {3, 130}), y16(dtype::bf16, {3, 130});
    ops::linear(x32, tw.q(), y32, on(be));
    ops::linear(x16, tw.q(), y16, on(be));
    for (int i = 0; i < 3 * 130; ++i)
      REQUIRE(y16.host_span<bf16>()[i].bits == bf16::from_float(y32.host_span<float>()[i]).bits);
  }
}

TEST_CASE("errors: shapes, scale layout, dtypes, NaN codes and scales") {
  auto fp8 = make_weight(dtype::fp8_e4m3, 130, 256, 51);
  auto fp4 = make_weight(dtype::fp4_e2m1, 8, 64, 52);
  const buffer x = host_f32(2, 256, randn(512, 53));
  buffer y(dtype::f32, {2, 130});
  const buffer x17 = host_f32(17, 256, randn(17 * 256, 55));
  buffer y17(dtype::f32, {17, 130});
  check_error([&] { ops::linear(x.view().narrow(1, 0, 128), fp8.q(), y); }, {"linear", "expected [130, 128]"});
  check_error([&] { ops::linear(x, {fp8.w.view(), fp4.s.view()}, y); }, {"linear", "scale", "ue8m0[2, 2]"});
  check_error([&] { ops::linear(x, {fp8.w.view(), tensor_view()}, y); }, {"need a ue8m0 scale"});
  buffer wi(dtype::i32, {130, 256});
  check_error([&] { ops::linear(x, {wi.view(), tensor_view()}, y); }, {"unsupported weight dtype"});
  buffer y8(dtype::f32, {2, 8});
  const buffer x48 = host_f32(2, 48, randn(96, 54));
  buffer w48(dtype::fp4_e2m1, {8, 48}), s48(dtype::ue8m0, {8, 1});
  check_error([&] { ops::linear(x48, {w48.view(), s48.view()}, y8); }, {"multiple of 32"});
  for (backend be : host_backends()) {
    fp8.s.host_span<ue8m0>()[1].bits = 0xFF;
    check_error([&] { ops::linear(x, fp8.q(), y, on(be)); }, {"linear", "16384 weights decode to NaN"});
    // one token: the decode GEMV, which counts NaN weights only on the rows whose output came out NaN
    check_error([&] { ops::linear(x.view().narrow(0, 0, 1), fp8.q(), y.view().narrow(0, 0, 1), on(be)); },
                {"linear", "16384 weights decode to NaN"});
    // 17 tokens: the prefill GEMM (or panel), which finds the NaN rows by scanning the outputs
    check_error([&] { ops::linear(x17, fp8.q(), y17, on(be)); }, {"linear", "16384 weights decode to NaN"});
    fp8.s.host_span<ue8m0>()[1].bits = 127;
    fp8.w.host_span<fp8_e4m3>()[5].bits = 0xFF;
    fp8.w.host_span<fp8_e4m3>()[300].bits = 0x7F;
    check_error([&] { ops::linear(x, fp8.q(), y, on(be)); }, {"2 weights decode to NaN"});
    fp8.w.host_span<fp8_e4m3>()[5].bits = 0;
    fp8.w.host_span<fp8_e4m3>()[300].bits = 0;
    fp4.s.host_span<ue8m0>()[3].bits = 0xFF;
    check_error([&] { ops::linear(x.view().narrow(1, 0, 64), fp4.q(), y8, on(be)); }, {"32 weights decode to NaN"});
    check_error([&] { ops::linear(x.view().narrow(0, 0, 1).narrow(1, 0, 64), fp4.q(), y8.view().narrow(0, 0, 1), on(be)); },
                {"32 weights decode to NaN"});
    fp4.s.host_span<ue8m0>()[3].bits = 127;
  }
}

}  // TEST_SUITE
