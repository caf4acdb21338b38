// src/cpu/indexer_fp4_impl.hpp — the FP4 lightning-indexer score (definition: dsv4/ref/indexer.hpp) as exact integer
// dot products with AVX512-VNNI, bit for bit the reference.
//
// q · key of FP4 operands is Σ_b I_b · 2^(eq_b + ek_b − 2) with integer block sums I_b. When the block exponents of a
// head (and of a key) lie within 3 of their minimum, every block can be brought to the common exponent exactly inside
// int8 (|2·code| · 2^3 <= 96), so one integer dot over all of c gives the exact dot: the key as unsigned bytes
// (value + 128, decoded from its nibbles by a vpshufb whose table in 128-bit lane b is already shifted for block b),
// the query as signed bytes, vpdpbusd (4 products per lane per instruction, heads in the 16 lanes), minus the bias
// 128 · Σ q, converted to fp32 (exact, |I| < 2^22) and multiplied once by 2^(eq_min + ek_min − 2): the exact dot
// rounded once, as the reference. Keys outside that envelope (exponent spread > 3, a NaN or extreme scale) come back
// flagged and the caller scores them with the reference code; so do whole tokens whose query is outside it. Without
// VNNI (or AVX-512) the same integers come from portable code, and the scores are the same bits.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cmath>
#include <cstdlib>
#include <cstring>

#if defined(__AVX512BW__)
#include <immintrin.h>
#endif

#include "attention_simd.hpp"
#include "dsv4/formats.hpp"
#include "dsv4/numerics.hpp"
#include "dsv4/ref/indexer.hpp"

namespace dsv4::cpu::detail {

#if defined(__AVX512BW__)
// fp32 -> nearest BF16 (ties to even) in every lane, for finite lanes (the kernel's dots and products are finite).
inline __m512 round_bf16_ps(__m512 v) {
  __m512i u = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd));
  return _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}
#endif

template <class Arch>
struct index_fp4_simd {
  static constexpr bool kAvx512 = std::is_same_v<Arch, xsimd::avx512bw>;

  // AVX512-VNNI present and DSV4_CPU_NO_VNNI unset or "0" (the tests run the portable kernel with it set).
  static bool vnni() {
    static const bool v = [] {
#if defined(__AVX512BW__)
      const char* off = std::getenv("DSV4_CPU_NO_VNNI");
      return __builtin_cpu_supports("avx512vnni") != 0 && !(off && *off && std::strcmp(off, "0") != 0);
#else
      return false;
#endif
    }();
    return v;
  }

  // The key's smallest scale byte when the key is inside the exact envelope (no NaN scale, block exponents within 3
  // of their minimum, every scale product normal for this query), else −1: the caller scores it with the reference.
  static int key_envelope(const fp4_qpack& q, const std::uint8_t* sc, std::int64_t nb) {
    int emin = 255, emax = 0;
    for (std::int64_t b = 0; b < nb; ++b) {
      emin = std::min<int>(emin, sc[b]);
      emax = std::max<int>(emax, sc[b]);
    }
    const bool inside = emax != 0xFF && emax - emin <= 3 && emin - 127 >= q.ek_lo && emin - 127 <= q.ek_hi;
    return inside ? emin : -1;
  }

#if defined(__AVX512BW__)
  // tables[d0 | d1 << 2 | d2 << 4 | d3 << 6]: 128-bit lane b maps a nibble x to (2·e2m1(x) << d_b) + 128 (u8).
  static const std::uint8_t* key_tables() {
    alignas(64) static std::uint8_t t[256 * 64];
    static const bool init = [] {
      for (int combo = 0; combo < 256; ++combo)
        for (int b = 0; b < 4; ++b)
          for (int x = 0; x < 16; ++x) {
            const int v = ref::fp4_twice(static_cast<std::uint8_t>(x)) * (1 << ((combo >> (2 * b)) & 3));
            t[combo * 64 + b * 16 + x] = static_cast<std::uint8_t>(v + 128);
          }
      return true;
    }();
    (void)init;
    return t;
  }

  // Scores of n keys (codes at codes + i·C/2, scale bytes at scales + i·C/32) for the packed query q; skipped[i] = 1
  // for the keys the caller must score with the reference instead. C <= 128.
  template <int G>
  __attribute__((target("avx512vnni"))) static void run(const fp4_qpack& q, const std::uint8_t* codes,
                                                         const std::uint8_t* scales, std::int64_t n, float* out,
                                                         std::uint8_t* skipped) {
    constexpr int KP = 4;  // keys per step: 4 x G accumulator chains
    const std::int64_t C = q.C, nb = C / 32, cb = C / 2;  // blocks, code bytes
    const int chunks = static_cast<int>(C / 8);           // dword chunks in each of the even / odd halves
    const __mmask64 valid = cb >= 64 ? ~__mmask64{0} : ((__mmask64{1} << cb) - 1);
    const std::uint8_t* tables = key_tables();
    const __m512i lo_mask = _mm512_set1_epi8(0x0F);
    alignas(64) std::uint8_t kbuf[KP][128];
    float kscale[KP];
    for (std::int64_t s0 = 0; s0 < n; s0 += KP) {
      const int kn = static_cast<int>(std::min<std::int64_t>(KP, n - s0));
      for (int k = 0; k < KP; ++k) {
        kscale[k] = 1.f;
        if (k >= kn) {
          std::memset(kbuf[k], 128, sizeof kbuf[k]);
          continue;
        }
        const std::int64_t s = s0 + k;
        const std::uint8_t* sc = scales + s * nb;
        const int emin = key_envelope(q, sc, nb);
        if (emin < 0) {
          skipped[s] = 1;
          std::memset(kbuf[k], 128, sizeof kbuf[k]);
          continue;
        }
        skipped[s] = 0;
        int combo = 0;
        for (std::int64_t b = 0; b < nb; ++b) combo |= (sc[b] - emin) << (2 * b);
        kscale[k] = ue8m0{static_cast<std::uint8_t>(emin)}.to_float();
        const __m512i tab = _mm512_load_si512(tables + combo * 64);
        const __m512i v = _mm512_maskz_loadu_epi8(valid, codes + s * cb);
        const __m512i lo = _mm512_and_si512(v, lo_mask), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo_mask);
        _mm512_store_si512(kbuf[k], _mm512_shuffle_epi8(tab, lo));       // even elements, byte i = element 2i
        _mm512_store_si512(kbuf[k] + 64, _mm512_shuffle_epi8(tab, hi));  // odd elements
      }
      __m512i acc[KP][G];
      for (int k = 0; k < KP; ++k)
        for (int g = 0; g < G; ++g) acc[k][g] = _mm512_setzero_si512();
      for (int half = 0; half < 2; ++half)
        for (int j = 0; j < chunks; ++j) {
          const std::int32_t* qc = q.qv.data() + (static_cast<std::size_t>(half * chunks + j) * G) * 16;
          __m512i kb[KP];
          for (int k = 0; k < KP; ++k) {
            std::int32_t d;
            std::memcpy(&d, kbuf[k] + half * 64 + 4 * j, 4);
            kb[k] = _mm512_set1_epi32(d);
          }
          for (int g = 0; g < G; ++g) {
            const __m512i qv = _mm512_loadu_si512(qc + g * 16);
            for (int k = 0; k < KP; ++k) acc[k][g] = _mm512_dpbusd_epi32(acc[k][g], kb[k], qv);
          }
        }
      for (int k = 0; k < kn; ++k) {
        __m512 part = _mm512_setzero_ps();
        const __m512 ks = _mm512_set1_ps(kscale[k]);
        for (int g = 0; g < G; ++g) {
          const __m512i I = _mm512_sub_epi32(acc[k][g], _mm512_loadu_si512(q.corr.data() + g * 16));
          const __m512 s = _mm512_mul_ps(_mm512_loadu_ps(q.qscale.data() + g * 16), ks);  // exact: powers of two
          const __m512 d = _mm512_mul_ps(_mm512_cvtepi32_ps(I), s);                       // the one rounding
          if (q.official) {  // dsv4/ref/official.hpp: bf16(ReLU(bf16(d)) · w), plain adds
            const __m512 r = _mm512_max_ps(_mm512_setzero_ps(), round_bf16_ps(d));
            part = _mm512_add_ps(part, round_bf16_ps(_mm512_mul_ps(r, _mm512_loadu_ps(q.w.data() + g * 16))));
          } else {
            const __m512 r = _mm512_max_ps(_mm512_setzero_ps(), d);                       // (0 > d) ? 0 : d
            part = _mm512_fmadd_ps(_mm512_loadu_ps(q.w.data() + g * 16), r, part);
          }
        }
        // the fixed tree: l + l+8, l + l+4, l + l+2, l + l+1
        const __m256 p8 = _mm256_add_ps(_mm512_castps512_ps256(part), _mm512_extractf32x8_ps(part, 1));
        const __m128 p4 = _mm_add_ps(_mm256_castps256_ps128(p8), _mm256_extractf128_ps(p8, 1));
        const __m128 p2 = _mm_add_ps(p4, _mm_movehl_ps(p4, p4));
        const __m128 p1 = _mm_add_ss(p2, _mm_shuffle_ps(p2, p2, 1));
        out[s0 + k] = q.official ? round_bf16(_mm_cvtss_f32(p1)) : _mm_cvtss_f32(p1);
      }
    }
  }
#endif

  // Without VNNI: the same integers in portable code (the int8 x int8 -> int32 dot over c vectorizes for the ISA it is
  // compiled for), then the same scale, ReLU and tree in scalar fp32: bitwise the same scores.
  static void run_portable(const fp4_qpack& q, const std::uint8_t* codes, const std::uint8_t* scales, std::int64_t n,
                           float* out, std::uint8_t* skipped) {
    const std::int64_t C = q.C, nb = C / 32, cb = C / 2, H = static_cast<std::int64_t>(q.groups) * 16;
    std::int8_t kv[128];  // evens then odds, as qh (C <= 128)
    for (std::int64_t s = 0; s < n; ++s) {
      const std::uint8_t* sc = scales + s * nb;
      const int emin = key_envelope(q, sc, nb);
      skipped[s] = emin < 0;
      if (emin < 0) continue;
      for (std::int64_t i = 0; i < cb; ++i) {
        const std::uint8_t pair = codes[s * cb + i];
        const int scale = 1 << (sc[i / 16] - emin);
        kv[i] = static_cast<std::int8_t>(ref::fp4_twice(pair & 0xF) * scale);
        kv[cb + i] = static_cast<std::int8_t>(ref::fp4_twice(static_cast<std::uint8_t>(pair >> 4)) * scale);
      }
      const float ks = ue8m0{static_cast<std::uint8_t>(emin)}.to_float();
      float p[16] = {};
      for (std::int64_t h = 0; h < H; ++h) {
        const std::int8_t* a = q.qh.data() + h * C;
        std::int32_t I = 0;
        for (std::int64_t c = 0; c < C; ++c) I += std::int32_t{a[c]} * std::int32_t{kv[c]};
        const std::size_t g = static_cast<std::size_t>(h / 16), l = static_cast<std::size_t>(h % 16);
        const float d = static_cast<float>(I) * (q.qscale[g * 16 + l] * ks);
        if (q.official) {
          const float b = round_bf16(d);
          p[l] = p[l] + round_bf16(((0.f > b) ? 0.f : b) * q.w[g * 16 + l]);
        } else {
          p[l] = std::fma(q.w[g * 16 + l], (0.f > d) ? 0.f : d, p[l]);
        }
      }
      for (int width = 8; width >= 1; width /= 2)
        for (int l = 0; l < width; ++l) p[l] = p[l] + p[l + width];
      out[s] = q.official ? round_bf16(p[0]) : p[0];
    }
  }

  static bool scores(const fp4_qpack& q, const std::uint8_t* codes, const std::uint8_t* scales, std::int64_t n,
                     float* out, std::uint8_t* skipped) {
    if (q.C > 128 || q.C % 32 != 0 || q.groups > 4) return false;
#if defined(__AVX512BW__)
    if constexpr (kAvx512) {
      if (vnni()) {
        switch (q.groups) {
          case 1: run<1>(q, codes, scales, n, out, skipped); return true;
          case 2: run<2>(q, codes, scales, n, out, skipped); return true;
          case 3: run<3>(q, codes, scales, n, out, skipped); return true;
          default: run<4>(q, codes, scales, n, out, skipped); return true;
        }
      }
    }
#endif
    run_portable(q, codes, scales, n, out, skipped);
    return true;
  }
};

}  // namespace dsv4::cpu::detail
