// dsv4/ref/indexer.hpp — the FP4 lightning-indexer score, defined so that every backend reproduces it bit for bit
// (spec §3.5 for the formula, §6.3 for the FP4 format; the paper's §3.4: "QK activations cached, loaded and
// multiplied in FP4").
//
// score(t, s) = Σ_h w[t, h] · ReLU(q[t, h] · key_s), where both operands are FP4 E2M1 values with one UE8M0 scale per
// 32-block along c:
//   q      is rounded to FP4 here with the spec's quantizer (§6.3; idempotent, so a q that went through the model's FP4
//          round trip is unchanged); key_s comes from FP4 key pages as stored.
//   dot    q · key is an exact sum: per block b, I_b = Σ (2·q_code)(2·k_code) is an integer (|I_b| <= 32·144), and the
//          dot is Σ_b I_b · 2^(eq_b + ek_b − 2). It is summed in double in block order — exact unless two blocks'
//          scales differ by more than ~2^38 — and rounded once to fp32. (An fp32 loop over the decoded values gives
//          the same number unless the block scales are far apart, which is when it starts to round.) A NaN scale
//          byte (0xFF), or a non-finite q, makes the dot NaN.
//   relu   r = (0 > d) ? 0 : d (NaN stays NaN; the dot is never −0).
//   sum    over heads in a fixed 16-lane tree, fp32: lane l = fma chain over h ≡ l (mod 16) in increasing h, from +0;
//          then lanes l + l+8, l + l+4, l + l+2, l + l+1. Heads in vector lanes (16 on AVX-512, 2 x 8 on AVX2) is the
//          natural order of a SIMD kernel; writing it down makes ref and every backend bitwise equal.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "dsv4/cache.hpp"
#include "dsv4/formats.hpp"
#include "dsv4/ref/quant.hpp"

namespace dsv4::ref {

inline constexpr std::int64_t kIndexerBlock = 32;  // FP4 block along c (spec §6.3)
inline constexpr int kIndexerLanes = 16;           // width of the head-sum tree (see the header)

// 2·E2M1 value of a 4-bit code: {0, 1, 2, 3, 4, 6, 8, 12}, bit 3 the sign.
inline int fp4_twice(std::uint8_t code) noexcept {
  static constexpr int mag[8] = {0, 1, 2, 3, 4, 6, 8, 12};
  return (code & 8) ? -mag[code & 7] : mag[code & 7];
}

// One token's q rounded to FP4: a [H, C] = 2·code value, e [H, C/32] = scale exponent (ue8m0 bits − 127; the raw
// byte kept in sbits for the NaN check), finite[h] = the head's q was finite.
struct fp4_query {
  std::int64_t H = 0, C = 0;
  std::vector<std::int8_t> a;
  std::vector<std::uint8_t> sbits;
  std::vector<std::uint8_t> finite;
};

inline fp4_query quantize_query(const float* q, std::int64_t H, std::int64_t C) {
  fp4_query r;
  r.H = H;
  r.C = C;
  r.a.resize(static_cast<std::size_t>(H * C));
  r.sbits.resize(static_cast<std::size_t>(H * (C / kIndexerBlock)));
  r.finite.assign(static_cast<std::size_t>(H), 1);
  for (std::int64_t h = 0; h < H; ++h) {
    bool ok = true;
    for (std::int64_t b = 0; b < C / kIndexerBlock; ++b) {
      const float* x = q + h * C + b * kIndexerBlock;
      std::int8_t* a = r.a.data() + h * C + b * kIndexerBlock;
      r.sbits[static_cast<std::size_t>(h * (C / kIndexerBlock) + b)] = detail::quantize_block<fp4_e2m1>(
          static_cast<int>(kIndexerBlock), [&](int i) { return x[i]; },
          [&](int i, fp4_e2m1 c, float) { a[i] = static_cast<std::int8_t>(fp4_twice(c.code)); }, ok);
    }
    r.finite[static_cast<std::size_t>(h)] = ok ? 1 : 0;
  }
  return r;
}

// The exact dot of head h of q with one FP4 key (codes: C/2 bytes, element 2c in the low nibble; scales: C/32 bytes),
// rounded once to fp32 (see the header).
inline float fp4_dot(const fp4_query& q, std::int64_t h, const std::uint8_t* codes, const std::uint8_t* scales) {
  const std::int64_t C = q.C, nb = C / kIndexerBlock;
  if (!q.finite[static_cast<std::size_t>(h)]) return std::numeric_limits<float>::quiet_NaN();
  const std::int8_t* a = q.a.data() + h * C;
  double d = 0;
  for (std::int64_t b = 0; b < nb; ++b) {
    const std::uint8_t sq = q.sbits[static_cast<std::size_t>(h * nb + b)], sk = scales[b];
    if (sq == 0xFF || sk == 0xFF) return std::numeric_limits<float>::quiet_NaN();
    long I = 0;
    for (std::int64_t i = 0; i < kIndexerBlock; i += 2) {
      const std::uint8_t pair = codes[(b * kIndexerBlock + i) / 2];
      I += long(a[b * kIndexerBlock + i]) * fp4_twice(pair & 0xF) + long(a[b * kIndexerBlock + i + 1]) * fp4_twice(pair >> 4);
    }
    d += std::ldexp(double(I), int(sq) - 127 + int(sk) - 127 - 2);
  }
  return static_cast<float>(d);
}

inline float indexer_relu(float d) noexcept { return (0.f > d) ? 0.f : d; }

// Σ_h w[h] · r[h] in the fixed 16-lane tree (see the header).
inline float indexer_head_sum(const float* w, const float* r, std::int64_t H) noexcept {
  float p[kIndexerLanes] = {};
  for (std::int64_t h = 0; h < H; ++h) p[h % kIndexerLanes] = std::fma(w[h], r[h], p[h % kIndexerLanes]);
  for (int width = kIndexerLanes / 2; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) p[l] = p[l] + p[l + width];
  return p[0];
}

// The per-head exact dots of q with the key in `slot` of FP4 key pages: d [q.H].
inline std::vector<float> fp4_key_dots(const fp4_query& q, const cache::key_pages& kp, std::int64_t slot) {
  const cache::key_geometry& g = kp.geo;
  const std::uint8_t* page = kp.page(slot / g.page_tokens);
  const std::int64_t e = slot % g.page_tokens;
  std::vector<float> d(static_cast<std::size_t>(q.H));
  for (std::int64_t h = 0; h < q.H; ++h)
    d[static_cast<std::size_t>(h)] = fp4_dot(q, h, page + g.code_offset(e), page + g.scale_offset(e));
  return d;
}

// The score of the key in `slot` of FP4 key pages.
inline float fp4_score(const fp4_query& q, const float* w, const cache::key_pages& kp, std::int64_t slot) {
  std::vector<float> r = fp4_key_dots(q, kp, slot);
  for (float& v : r) v = indexer_relu(v);
  return indexer_head_sum(w, r.data(), q.H);
}

}  // namespace dsv4::ref
