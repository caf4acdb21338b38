// Number formats (spec §6.1): exact decode of every code, RNE encode at every tie, saturation, the block-scale rule.
// Everything here is exact: decoded values are compared with values built independently from the bit fields with
// std::ldexp, and encodes with the nearest grid value found by search.
#include <cmath>
#include <limits>

#include "dsv4/formats.hpp"
#include "harness.hpp"

using namespace dsv4;

TEST_SUITE("formats") {

TEST_CASE("every E4M3FN code decodes exactly") {
  for (int c = 0; c < 256; ++c) {
    const int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
    const float got = fp8_e4m3{static_cast<std::uint8_t>(c)}.to_float();
    if (e == 15 && m == 7) {
      CHECK(std::isnan(got));
      continue;
    }
    // subnormal: m·2^-9; normal: (8 + m)·2^(e - 10) = (1 + m/8)·2^(e - 7)
    const double mag = e == 0 ? std::ldexp(double(m), -9) : std::ldexp(double(8 + m), e - 10);
    CHECK(double(got) == (s ? -mag : mag));
    CHECK(std::signbit(got) == bool(s));
  }
  CHECK(fp8_e4m3{0x7E}.to_float() == 448.f);
  CHECK(fp8_e4m3{0x08}.to_float() == 0.015625f);
  CHECK(fp8_e4m3{0x01}.to_float() == 0.001953125f);
  CHECK(fp8_e4m3{0x38}.to_float() == 1.f);
}

TEST_CASE("every E2M1 code decodes exactly; even element in the low nibble") {
  const float table[8] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};
  for (int c = 0; c < 16; ++c) {
    const float got = fp4_e2m1{static_cast<std::uint8_t>(c)}.to_float();
    CHECK(got == (c & 8 ? -table[c & 7] : table[c & 7]));
    CHECK(std::signbit(got) == bool(c & 8));
  }
  const fp4x2 b = fp4x2::pack(fp4_e2m1{0x3}, fp4_e2m1{0xC});
  CHECK(b.bits == 0xC3);
  CHECK(b.lo().to_float() == 1.5f);
  CHECK(b.hi().to_float() == -2.f);  // 0xC: sign, exponent field 2, mantissa 0
}

TEST_CASE("UE8M0 and BF16 decode") {
  for (int u = 0; u < 255; ++u) CHECK(double(ue8m0{static_cast<std::uint8_t>(u)}.to_float()) == std::ldexp(1.0, u - 127));
  CHECK(std::isnan(ue8m0{255}.to_float()));
  CHECK(bf16{0x3F80}.to_float() == 1.f);
  CHECK(bf16{0xC040}.to_float() == -3.f);
  // RNE: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 -> 1 (even); 1 + 3·2^-8 -> 1 + 2^-6 (even)
  CHECK(bf16::from_float(1.f + std::ldexp(1.f, -8)).bits == 0x3F80);
  CHECK(bf16::from_float(1.f + 3 * std::ldexp(1.f, -8)).bits == 0x3F82);
  CHECK(bf16::from_float(std::numeric_limits<float>::infinity()).bits == 0x7F80);
  CHECK(std::isnan(bf16::from_float(std::nanf("")).to_float()));
  CHECK(f16{0x3C00}.to_float() == 1.f);
  CHECK(f16{0x0001}.to_float() == std::ldexp(1.f, -24));
  CHECK(f16{0xFBFF}.to_float() == -65504.f);
  CHECK(f16::from_float(1.f + std::ldexp(1.f, -11)).bits == 0x3C00);  // tie -> even
}

TEST_CASE("E4M3 encode: every code round-trips, every midpoint ties to even, neighbours round to nearest") {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7F) == 0x7F) continue;
    CHECK(fp8_e4m3::from_float(fp8_e4m3{static_cast<std::uint8_t>(c)}.to_float()).bits == c);
  }
  for (int c = 0; c < 0x7E; ++c) {
    const float a = fp8_e4m3{static_cast<std::uint8_t>(c)}.to_float();
    const float b = fp8_e4m3{static_cast<std::uint8_t>(c + 1)}.to_float();
    const float mid = 0.5f * (a + b);  // exact in fp32
    const int even = (c % 2 == 0) ? c : c + 1;
    CHECK(fp8_e4m3::from_float(mid).bits == even);
    CHECK(fp8_e4m3::from_float(std::nextafter(mid, 0.f)).bits == c);
    CHECK(fp8_e4m3::from_float(std::nextafter(mid, 1e9f)).bits == c + 1);
    CHECK(fp8_e4m3::from_float(-mid).bits == (0x80 | even));
  }
}

TEST_CASE("E4M3 encode saturates at ±448 and keeps the sign of zero") {
  for (float v : {448.f, 449.f, 464.f, 480.f, 1e30f, std::numeric_limits<float>::infinity()}) {
    CHECK(fp8_e4m3::from_float(v).bits == 0x7E);
    CHECK(fp8_e4m3::from_float(-v).bits == 0xFE);
  }
  CHECK(fp8_e4m3::from_float(0.f).bits == 0x00);
  CHECK(fp8_e4m3::from_float(-0.f).bits == 0x80);
  CHECK(fp8_e4m3::from_float(-1e-6f).bits == 0x80);  // rounds to -0
  CHECK(fp8_e4m3::from_float(0.0009765625f).bits == 0x00);  // 2^-10: tie between 0 and 2^-9 -> 0 (even)
  CHECK(fp8_e4m3::from_float(0.0029296875f).bits == 0x02);  // 1.5·2^-9: tie between codes 1 and 2 -> 2
}

TEST_CASE("E2M1 encode: the spec's worked ties and saturation") {
  struct tie { float in, out; };
  for (tie t : {tie{0.25f, 0.f}, tie{0.75f, 1.f}, tie{1.25f, 1.f}, tie{1.75f, 2.f}, tie{2.5f, 2.f}, tie{3.5f, 4.f},
                tie{5.f, 4.f}, tie{5.01f, 6.f}, tie{6.f, 6.f}, tie{7.f, 6.f}, tie{1e30f, 6.f},
                tie{std::numeric_limits<float>::infinity(), 6.f}}) {
    CAPTURE(t.in);
    CHECK(fp4_e2m1::from_float(t.in).to_float() == t.out);
    CHECK(fp4_e2m1::from_float(-t.in).to_float() == -t.out);
  }
  CHECK(fp4_e2m1::from_float(std::nextafter(0.25f, 1.f)).to_float() == 0.5f);
  CHECK(fp4_e2m1::from_float(std::nextafter(5.f, 0.f)).to_float() == 4.f);
  CHECK(fp4_e2m1::from_float(-0.1f).code == 0x8);  // -0 keeps its sign
  for (int c = 0; c < 16; ++c) CHECK(fp4_e2m1::from_float(fp4_e2m1{static_cast<std::uint8_t>(c)}.to_float()).code == c);
}

TEST_CASE("integer encoders (the device reference) == from_float on every float of a sweep") {
  // Every high half of the fp32 pattern (sign, exponent, 7 mantissa bits) with the low 16 bits at 0, 1, 0x7FFF,
  // 0x8000, 0x8001 and 0xFFFF: every tie of both formats (normal and subnormal: a tie clears every bit below the
  // rounding position, which is bit 16 or higher) and its neighbours one unit away; then stride 97 over all 2^32
  // patterns (NaNs, infinities and fp32 subnormals included). Exact: codes compared as bytes.
  std::int64_t checked = 0, bad8 = 0, bad4 = 0;
  auto check = [&](std::uint32_t u) {
    const float f = bits_to_f32(u);
    bad8 += encode_e4m3_int(f) != fp8_e4m3::from_float(f).bits;
    bad4 += encode_e2m1_int(f) != fp4_e2m1::from_float(f).code;
    ++checked;
  };
  for (std::uint32_t hi = 0; hi < 0x10000u; ++hi)
    for (std::uint32_t lo : {0x0000u, 0x0001u, 0x7FFFu, 0x8000u, 0x8001u, 0xFFFFu}) check(hi << 16 | lo);
  for (std::uint64_t u = 0; u <= 0xFFFFFFFFull; u += 97) check(static_cast<std::uint32_t>(u));
  for (std::uint32_t u : {0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00001u, 0x00000001u, 0x80000001u, 0u,
                          0x80000000u, 0x43E00000u, 0x43DFFFFFu, 0x40C00000u, 0x40BFFFFFu, 0x3A800000u, 0x3A000000u})
    check(u);
  CHECK(checked > 40'000'000);
  CHECK(bad8 == 0);
  CHECK(bad4 == 0);
}

TEST_CASE("block scale: 2^ceil(log2(max(amax, floor) · fp32(1/max))) from the fp32 bits") {
  using t8 = block_quant_traits<fp8_e4m3>;
  using t4 = block_quant_traits<fp4_e2m1>;
  CHECK(t8::kInvMax == 0.0022321429569274187f);
  CHECK(t4::kInvMax == 0.1666666716337204f);
  // exact at powers of two: amax = 448·2^k -> s = 2^k
  for (int k = -20; k <= 20; ++k) {
    CHECK(ue8m0_ceil_scale(std::ldexp(448.f, k), t8::kAmaxFloor, t8::kInvMax) == 127 + k);
    CHECK(ue8m0_ceil_scale(std::nextafter(std::ldexp(448.f, k), 1e30f), t8::kAmaxFloor, t8::kInvMax) == 128 + k);
  }
  // zero and tiny blocks use the floor: FP8 1e-4/448 = 2.23e-7 -> 2^-22; FP4 6·2^-126/6 -> 2^-126
  CHECK(ue8m0_ceil_scale(0.f, t8::kAmaxFloor, t8::kInvMax) == 127 - 22);
  CHECK(ue8m0_ceil_scale(1e-40f, t8::kAmaxFloor, t8::kInvMax) == 127 - 22);
  CHECK(ue8m0_ceil_scale(0.f, t4::kAmaxFloor, t4::kInvMax) == 1);
  // fp32(6 · fp32(1/6)) rounds to exactly 1, so amax = 6 gives s = 1 (not 2)
  CHECK(ue8m0_ceil_scale(6.f, t4::kAmaxFloor, t4::kInvMax) == 127);
  // against an independent ceil(log2) of the fp32 product, over many magnitudes
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> mant(1.f, 2.f);
  std::uniform_int_distribution<int> ex(-60, 60);
  for (int i = 0; i < 20000; ++i) {
    const float amax = std::ldexp(mant(rng), ex(rng));
    for (auto [floor, inv] : {std::pair{t8::kAmaxFloor, t8::kInvMax}, std::pair{t4::kAmaxFloor, t4::kInvMax}}) {
      const float p = std::max(amax, floor) * inv;
      const int want = 127 + static_cast<int>(std::ceil(std::log2(static_cast<double>(p))));
      CHECK(ue8m0_ceil_scale(amax, floor, inv) == want);
    }
  }
}

}  // TEST_SUITE
