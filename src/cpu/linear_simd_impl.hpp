// src/cpu/linear_simd_impl.hpp — Arch-templated weight decode, lane orders and fixed-order dot tiles of the CPU
// linear layer (the dot order is defined in linear_simd.hpp).
//
// Decode (exact, so every weight equals ref::decode_row's value bit for bit):
//   FP4 E2M1 (AVX-512): a 32-block is 16 bytes; widened to 16 dword lanes (byte i in lane i), the low nibbles are the
//             even elements and the high nibbles the odd ones, each looked up in the 16-entry table times the block
//             scale (vpermps). Lane order: per 32-block, elements 0,2,..,30 then 1,3,..,31.
//   FP8 E4M3 (AVX-512 with VBMI): 64 codes at once; two 128-entry byte tables (vpermt2b on the 7 magnitude bits)
//             give the top two bytes of the code's exact fp32 value (every E4M3 value, subnormals included, has at
//             most 4 significant bits, so the low 16 bits are zero; 0x7F gives NaN), the sign is OR-ed in, and
//             byte / word unpacks build the dwords, then times the tile scale. The unpacks work inside 128-bit lanes,
//             so vector v (of 4) holds elements 16L + 4v + i in lane 4L + i: that is the lane order of every whole
//             64-block (the K % 64 tail stays in element order). No per-element branch, no fp32 subnormal
//             arithmetic: subnormal codes cost what normal ones do.
//   FP8 without VBMI / AVX2: the 7 magnitude bits shifted to fp32 bit 20 are the fp32 whose value is the E4M3 value
//             times 2^-120; one multiply by 2^120 fixes it, the sign bit is OR-ed back, then times the tile scale.
//   BF16: widen and shift left 16. Other ISAs (SSE2) decode with ref::decode_row. All of these keep element order.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#include <xsimd/xsimd.hpp>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "dsv4/ref/linear.hpp"
#include "linear_simd.hpp"

#if defined(__AVX512BW__)
#define DSV4_VBMI __attribute__((target("avx512vbmi")))
#else
#define DSV4_VBMI
#endif

namespace dsv4::cpu::detail {

template <class Arch>
struct linear_simd {
  using F = xsimd::batch<float, Arch>;
  static constexpr int W = static_cast<int>(F::size);
  static constexpr bool kAvx512 = std::is_same_v<Arch, xsimd::avx512bw>;
  static constexpr bool kAvx2 = std::is_same_v<Arch, xsimd::fma3<xsimd::avx2>>;
  static constexpr std::int64_t kFp8Block = 64;  // codes per VBMI decode step (the FP8 lane-order block)

  // a·b + c with one rounding. xsimd 8.1 has no AVX-512 fma (its generic one is x * y + z, fused or not at the
  // compiler's discretion, e.g. fused at -O3 and not under the sanitizers), so AVX-512 calls the instruction itself:
  // the panel dots and the fused GEMV must run the very same operation to agree bit for bit.
  static F fmadd(const F& a, const F& b, const F& c) {
#if defined(__AVX512BW__)
    if constexpr (kAvx512) return F(_mm512_fmadd_ps(a, b, c));
#endif
    return xsimd::fma(a, b, c);
  }

  // ue8m0 byte -> ue8m0::to_float(), as a table the kernels broadcast from (one per Arch: no ODR sharing of code
  // compiled for different ISAs).
  static const float* scale_table() {
    static const auto t = [] {
      std::array<float, 256> a{};
      for (int i = 0; i < 256; ++i) a[static_cast<std::size_t>(i)] = ue8m0{static_cast<std::uint8_t>(i)}.to_float();
      return a;
    }();
    return t.data();
  }

  // Whether the FP8 VBMI decode is used: the CPU has AVX512_VBMI (Zen 4+, Ice Lake+) and DSV4_CPU_NO_VBMI is unset
  // or "0" (the tests run the other AVX-512 FP8 path with it set). Decided once per process.
  static bool vbmi() {
    static const bool v = [] {
#if defined(__AVX512BW__)
      const char* off = std::getenv("DSV4_CPU_NO_VBMI");
      return __builtin_cpu_supports("avx512vbmi") && !(off && *off && std::strcmp(off, "0") != 0);
#else
      return false;
#endif
    }();
    return v;
  }

  static bool permutes(const ref::weight_ref& w) {
    if constexpr (!kAvx512) return false;
    return w.fmt == ref::wfmt::fp4_b32 || (w.fmt == ref::wfmt::fp8_b128 && vbmi() && w.k >= kFp8Block);
  }

#if defined(__AVX512BW__)
  // ---- FP8 E4M3 -> fp32 byte tables: entry m (7 magnitude bits) = byte 3 (hi) / byte 2 (lo) of the fp32 value ----
  struct fp8_tables {
    alignas(64) std::uint8_t hi[128];
    alignas(64) std::uint8_t lo[128];
  };
  static const fp8_tables& fp8_bytes() {
    static const fp8_tables t = [] {
      fp8_tables r{};
      for (int m = 0; m < 128; ++m) {
        const float v = fp8_e4m3{static_cast<std::uint8_t>(m)}.to_float();  // exact; 0x7F is NaN
        std::uint32_t b;
        std::memcpy(&b, &v, 4);
        if (m == 0x7F) b = 0x7FC00000u;
        r.hi[m] = static_cast<std::uint8_t>(b >> 24);
        r.lo[m] = static_cast<std::uint8_t>(b >> 16);
      }
      return r;
    }();
    return t;
  }

  // 64 FP8 codes c to fp32 times the tile scale vs, in the FP8 lane order (header): out[v] lane 4L + i = element
  // 16L + 4v + i. th0/th1/tl0/tl1: the hi / lo byte tables (entries 0..63, 64..127).
  DSV4_VBMI static void fp8x64(__m512i c, __m512 vs, __m512i th0, __m512i th1, __m512i tl0, __m512i tl1,
                               __m512 out[4]) {
    const __m512i hi = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(th0, c, th1), c,
                                                 _mm512_set1_epi8(static_cast<char>(0x80)), 0xF8);  // hi | (c & 0x80)
    const __m512i lo = _mm512_permutex2var_epi8(tl0, c, tl1);
    const __m512i w0 = _mm512_unpacklo_epi8(lo, hi), w1 = _mm512_unpackhi_epi8(lo, hi);
    const __m512i z = _mm512_setzero_si512();
    out[0] = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(z, w0)), vs);
    out[1] = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(z, w0)), vs);
    out[2] = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpacklo_epi16(z, w1)), vs);
    out[3] = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_unpackhi_epi16(z, w1)), vs);
  }

  // 16 FP8 codes at src to fp32 times the tile scale vs, element order (the non-VBMI AVX-512 path).
  static __m512 fp8x16(const std::uint8_t* src, __m512 vs) {
    const __m512i m7f = _mm512_set1_epi32(0x7F), m80 = _mm512_set1_epi32(0x80);
    const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    const __m512i mag = _mm512_and_si512(c, m7f);
    const __mmask16 nan = _mm512_cmpeq_epi32_mask(mag, m7f);
    __m512 f = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(mag, 20)), _mm512_set1_ps(0x1p120f));
    f = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(f), _mm512_slli_epi32(_mm512_and_si512(c, m80), 24)));
    return _mm512_mul_ps(_mm512_mask_mov_ps(f, nan, _mm512_set1_ps(__builtin_nanf(""))), vs);
  }

  // E2M1 values times a block scale, as a 16-entry vpermps table.
  static __m512 fp4_lut(float s) {
    return _mm512_mul_ps(_mm512_setr_ps(0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -0.5f, -1.f, -1.5f, -2.f, -3.f,
                                        -4.f, -6.f),
                         _mm512_set1_ps(s));
  }
  // One FP4 32-block (16 bytes at src) -> out[0], out[1] times the block scale (lut = the scaled table), in the FP4
  // lane order: the 16 bytes are widened to dword lanes (vpmovzxbd), so lane i holds byte i, whose low nibble is
  // element 2i and high nibble element 2i + 1; vpermps reads only the low 4 bits of each index, so the low nibble
  // needs no mask and the high one one shift. (Broadcasting the bytes and shifting each lane by its own count saved
  // the widening but cost a second shift: 5-10% slower in a microbenchmark of the GEMV loop, 2026-12-02.)
  static void fp4x32(const std::uint8_t* src, __m512 lut, __m512 out[2]) {
    const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    out[0] = _mm512_permutexvar_ps(c, lut);
    out[1] = _mm512_permutexvar_ps(_mm512_srli_epi32(c, 4), lut);
  }
#endif

  // x rows in W's lane order (see permutes).
  static void order_x(const ref::weight_ref& w, const float* x, std::int64_t T, std::int64_t ldx, float* out) {
    const std::int64_t K = w.k;
    for (std::int64_t t = 0; t < T; ++t) {
      const float* xr = x + t * ldx;
      float* o = out + t * K;
      std::int64_t k = 0;
#if defined(__AVX512BW__)
      if constexpr (kAvx512) {
        if (w.fmt == ref::wfmt::fp4_b32) {  // lane i of the two halves: elements 2i and 2i + 1
          const __m512i i0 = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
          const __m512i i1 = _mm512_add_epi32(i0, _mm512_set1_epi32(1));
          for (; k + 32 <= K; k += 32) {
            const __m512 a = _mm512_loadu_ps(xr + k), b = _mm512_loadu_ps(xr + k + 16);
            _mm512_storeu_ps(o + k, _mm512_permutex2var_ps(a, i0, b));
            _mm512_storeu_ps(o + k + 16, _mm512_permutex2var_ps(a, i1, b));
          }
        } else if (w.fmt == ref::wfmt::fp8_b128 && permutes(w)) {
          for (; k + kFp8Block <= K; k += kFp8Block) {  // a 4x4 transpose of 128-bit chunks
            const __m512 a0 = _mm512_loadu_ps(xr + k), a1 = _mm512_loadu_ps(xr + k + 16),
                         a2 = _mm512_loadu_ps(xr + k + 32), a3 = _mm512_loadu_ps(xr + k + 48);
            const __m512 t0 = _mm512_shuffle_f32x4(a0, a1, 0x44), t1 = _mm512_shuffle_f32x4(a0, a1, 0xEE),
                         t2 = _mm512_shuffle_f32x4(a2, a3, 0x44), t3 = _mm512_shuffle_f32x4(a2, a3, 0xEE);
            _mm512_storeu_ps(o + k, _mm512_shuffle_f32x4(t0, t2, 0x88));
            _mm512_storeu_ps(o + k + 16, _mm512_shuffle_f32x4(t0, t2, 0xDD));
            _mm512_storeu_ps(o + k + 32, _mm512_shuffle_f32x4(t1, t3, 0x88));
            _mm512_storeu_ps(o + k + 48, _mm512_shuffle_f32x4(t1, t3, 0xDD));
          }
        }
      }
#endif
      std::memcpy(o + k, xr + k, static_cast<std::size_t>(K - k) * sizeof(float));
    }
  }

  static void decode_row(const ref::weight_ref& w, std::int64_t n, float* out) {
    const std::int64_t K = w.k;
    switch (w.fmt) {
      case ref::wfmt::f32:
        std::memcpy(out, &w.f32(n, 0), static_cast<std::size_t>(K) * sizeof(float));
        return;
      case ref::wfmt::bf16: {
        std::int64_t k = 0;
        [[maybe_unused]] const auto* src = reinterpret_cast<const std::uint16_t*>(&w.bf(n, 0));
#if defined(__AVX512BW__)
        if constexpr (kAvx512)
          for (; k + 16 <= K; k += 16) {
            const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k)));
            _mm512_storeu_ps(out + k, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
          }
#endif
#if defined(__AVX2__)
        if constexpr (kAvx2)
          for (; k + 8 <= K; k += 8) {
            const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k)));
            _mm256_storeu_ps(out + k, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
          }
#endif
        if (k < K) ref::decode_row(w, n, k, K, out + k);
        return;
      }
      case ref::wfmt::fp8_b128:
#if defined(__AVX512BW__)
        if constexpr (kAvx512)
          if (permutes(w)) return decode_fp8_vbmi(w, n, out);
#endif
        return decode_fp8(w, n, out);
      case ref::wfmt::fp4_b32:
        return decode_fp4(w, n, out);
    }
  }

#if defined(__AVX512BW__)
  DSV4_VBMI static void decode_fp8_vbmi(const ref::weight_ref& w, std::int64_t n, float* out) {
    const std::int64_t K = w.k, tile = ref::kFp8WeightTile;
    const auto* src = reinterpret_cast<const std::uint8_t*>(&w.f8(n, 0));
    const fp8_tables& tb = fp8_bytes();
    const __m512i th0 = _mm512_load_si512(tb.hi), th1 = _mm512_load_si512(tb.hi + 64),
                  tl0 = _mm512_load_si512(tb.lo), tl1 = _mm512_load_si512(tb.lo + 64);
    const float* st = scale_table();
    std::int64_t k = 0;
    for (; k + kFp8Block <= K; k += kFp8Block) {
      __m512 v[4];
      fp8x64(_mm512_loadu_si512(src + k), _mm512_set1_ps(st[w.scale(n / tile, k / tile).bits]), th0, th1, tl0, tl1, v);
      for (int i = 0; i < 4; ++i) _mm512_storeu_ps(out + k + 16 * i, v[i]);
    }
    if (k < K) ref::decode_row(w, n, k, K, out + k);
  }
#endif

  static void decode_fp8(const ref::weight_ref& w, std::int64_t n, float* out) {
    const std::int64_t K = w.k;
    std::int64_t k = 0;
    [[maybe_unused]] const auto* src = reinterpret_cast<const std::uint8_t*>(&w.f8(n, 0));
    if constexpr (kAvx512 || kAvx2) {
      constexpr std::int64_t tile = ref::kFp8WeightTile;
      for (; k + tile <= K; k += tile) {
        const float s = scale_table()[w.scale(n / tile, k / tile).bits];
#if defined(__AVX512BW__)
        if constexpr (kAvx512) {
          const __m512 vs = _mm512_set1_ps(s);
          for (std::int64_t i = 0; i < tile; i += 16) _mm512_storeu_ps(out + k + i, fp8x16(src + k + i, vs));
        }
#endif
#if defined(__AVX2__)
        if constexpr (kAvx2) {
          const __m256 two120 = _mm256_set1_ps(0x1p120f), vs = _mm256_set1_ps(s);
          const __m256i m7f = _mm256_set1_epi32(0x7F), m80 = _mm256_set1_epi32(0x80);
          for (std::int64_t i = 0; i < tile; i += 8) {
            const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + k + i)));
            const __m256i mag = _mm256_and_si256(c, m7f);
            const __m256i isnan = _mm256_cmpeq_epi32(mag, m7f);
            __m256 f = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(mag, 20)), two120);
            f = _mm256_castsi256_ps(
                _mm256_or_si256(_mm256_castps_si256(f), _mm256_slli_epi32(_mm256_and_si256(c, m80), 24)));
            f = _mm256_blendv_ps(f, _mm256_set1_ps(__builtin_nanf("")), _mm256_castsi256_ps(isnan));
            _mm256_storeu_ps(out + k + i, _mm256_mul_ps(f, vs));
          }
        }
#endif
      }
    }
    if (k < K) ref::decode_row(w, n, k, K, out + k);
  }

  static void decode_fp4(const ref::weight_ref& w, std::int64_t n, float* out) {
    const std::int64_t K = w.k;
    std::int64_t k = 0;
    [[maybe_unused]] const auto* src = reinterpret_cast<const std::uint8_t*>(&w.f4(n, 0));
    [[maybe_unused]] constexpr std::int64_t blk = ref::kFp4WeightBlock;
#if defined(__AVX512BW__)
    if constexpr (kAvx512) {
      const float* luts = fp4_scaled_luts();
      for (; k + blk <= K; k += blk) {
        __m512 v[2];
        fp4x32(src + k / 2, _mm512_load_ps(luts + 16 * w.scale(n, k / blk).bits), v);
        _mm512_storeu_ps(out + k, v[0]);
        _mm512_storeu_ps(out + k + 16, v[1]);
      }
    }
#endif
#if defined(__AVX2__)
    if constexpr (kAvx2) {
      const __m256 lut = _mm256_setr_ps(0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f);
      const __m256i shift = _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4);
      const __m256i m7 = _mm256_set1_epi32(7), m8 = _mm256_set1_epi32(8);
      for (; k + blk <= K; k += blk) {
        const __m256 vs = _mm256_set1_ps(scale_table()[w.scale(n, k / blk).bits]);
        for (std::int64_t i = 0; i < blk; i += 8) {
          std::int32_t four;
          std::memcpy(&four, src + (k + i) / 2, 4);
          __m128i b = _mm_cvtsi32_si128(four);
          b = _mm_unpacklo_epi8(b, b);
          const __m256i code = _mm256_srlv_epi32(_mm256_cvtepu8_epi32(b), shift);
          const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(code, m8), 28);
          const __m256 mag = _mm256_permutevar8x32_ps(lut, _mm256_and_si256(code, m7));
          const __m256 v = _mm256_castsi256_ps(_mm256_or_si256(_mm256_castps_si256(mag), sign));
          _mm256_storeu_ps(out + k + i, _mm256_mul_ps(v, vs));
        }
      }
    }
#endif
    if (k < K) ref::decode_row(w, n, k, K, out + k);
  }

  template <int MT, int NT>
  static void dots_tile(const float* x, std::int64_t ldx, const float* w, std::int64_t ldw, std::int64_t K,
                        float* out, std::int64_t ldo) {
    F acc[MT][NT];
    for (int i = 0; i < MT; ++i)
      for (int j = 0; j < NT; ++j) acc[i][j] = F(0.f);
    const std::int64_t Kv = K / W * W;
    for (std::int64_t k = 0; k < Kv; k += W) {
      F xv[MT];
      for (int i = 0; i < MT; ++i) xv[i] = F::load_unaligned(x + i * ldx + k);
      for (int j = 0; j < NT; ++j) {
        const F wv = F::load_unaligned(w + j * ldw + k);
        for (int i = 0; i < MT; ++i) acc[i][j] = fmadd(xv[i], wv, acc[i][j]);
      }
    }
    for (int i = 0; i < MT; ++i)
      for (int j = 0; j < NT; ++j) {
        float r = xsimd::hadd(acc[i][j]);
        for (std::int64_t k = Kv; k < K; ++k) r += x[i * ldx + k] * w[j * ldw + k];
        out[i * ldo + j] = r;
      }
  }

#if defined(__AVX512BW__)
  // ---- decode GEMVs (AVX-512): NT rows decoded in registers once for MT tokens (1-4), one accumulator per token
  // and row, the dot order of dots_tile<1, NT> on the lane-ordered x and panel; weight bytes are read once and nothing
  // is written but the MT x NT outputs. ----

  // The GEMVs stream NT rows side by side, 64 bytes of each per step. The hardware prefetcher alone leaves a core at
  // ~0.5 of its read bandwidth on those streams. Each step prefetches lines of the next group (below), so the whole
  // next group is in cache when this one ends. Against prefetching kPrefetch bytes ahead in every row (what the last
  // group still does), bench_linear interleaved, fractions of the read bandwidth: FP4 experts 0.34-0.58 -> 0.44-0.74,
  // FP8 0.54-0.86 -> 0.74-1.0, BF16 0.70-0.79 -> 0.79-0.90 (2026-12-01, all in memory order).
  static constexpr std::int64_t kPrefetch = 256;
  static void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

  // Where a GEMV prefetches: before reading bytes [off, off + 64) of each of its NT rows (off % 64 == 0) it
  // prefetches the NT lines at base + off·mul + j·step, j < NT. Three plans:
  // - memory order (mul = NT, step = 64): the next NT lines of the next group, when its rows follow this group's in
  //   memory (row-major weights, every linear of a model); the next group's row j is asked for j/NT of a group ahead
  //   of its first line's use, so its last row only 1/NT of a group (NT rows' bytes) ahead;
  // - column order (mul = 1, step = the row stride): the same line of every row of the next group, each asked for one
  //   whole group ahead. FP4 takes it: its groups are short (8 rows of 1-2 KiB), so memory order asked for the last
  //   rows only 1-2 KiB ahead. Against memory order, FP4 [2048 x 4096] from DRAM, one thread (a harness of the FP4
  //   loop, interleaved, 2026-12-02): 21.5-24.0 -> 22.2-24.9 GB/s. FP8 stays in memory order: its groups of 8-64
  //   KiB, asked for whole in advance, outgrow L1 (bench_linear, 2 threads: 0.91-1.11 -> 0.77-0.97 of the read
  //   bandwidth in column order);
  // - when there is no next group: kPrefetch bytes ahead in every row (mul = 1, step = the row stride).
  // One formula rather than a branch between loops: with the branch, GCC 12 dropped every prefetch from the GEMVs.
  struct prefetch_plan {
    const std::uint8_t* base;
    std::int64_t mul, step;
  };
  // Points src at rows n0 .. n0+NT-1 of a matrix of n rows of row_bytes each, `stride` bytes apart, the first at
  // `first`, and says where to prefetch (Column: the column order above). (src stays a local array of the GEMV: held
  // in a struct, the compiler reloaded the pointers in the inner loop.)
  template <int NT, bool Column = false>
  static prefetch_plan group_rows(const std::uint8_t* first, std::int64_t stride, std::int64_t row_bytes,
                                  std::int64_t n0, std::int64_t n, const std::uint8_t* (&src)[NT]) {
    for (int j = 0; j < NT; ++j) src[j] = first + j * stride;
    if (Column && n0 + 2 * NT <= n) return {first + NT * stride, 1, stride};
    if (stride == row_bytes && n0 + 2 * NT <= n) return {first + NT * row_bytes, NT, 64};
    return {first + kPrefetch, 1, stride};
  }
  template <int NT>
  static void stream_step(const prefetch_plan& pf, std::int64_t off) {
    const std::uint8_t* p = pf.base + off * pf.mul;
    for (int j = 0; j < NT; ++j) prefetch(p + j * pf.step);
  }

  // The E2M1 table times every possible block scale: entry [b][q] = e2m1(q) · ue8m0{b}.to_float(), the very
  // product decode_row computes (16 KiB, L1/L2-resident while a GEMV runs).
  static const float* fp4_scaled_luts() {
    alignas(64) static float t[256 * 16];
    static const bool init = [] {
      for (int b = 0; b < 256; ++b) _mm512_store_ps(t + 16 * b, fp4_lut(scale_table()[b]));
      return true;
    }();
    (void)init;
    return t;
  }

  // vpermb (AVX512_VBMI) by name: this file is built for AVX-512BW, and only code that checked vbmi() runs it. (An
  // intrinsic would need the target attribute on every function and lambda it is inlined into.)
  static __m512i permute_bytes(__m512i idx, __m512i table) {
    __m512i r;
    asm("vpermb %2, %1, %0" : "=v"(r) : "v"(idx), "v"(table));
    return r;
  }

  // FP4, K % 32 == 0: per 32-block and row, the block's scaled table, two vpermps and 2·MT fmas. The scales of the NT
  // rows are staged 64 blocks at a time as dwords at fixed offsets, so the inner loop needs one pointer per row.
  // - The table: with one token, the scaled table of fp4_scaled_luts, loaded (a 64-byte load, no arithmetic). With
  //   2-4 tokens, when every scale byte of the chunk is in [2, 252], the table of scale 1 (in a register) with the
  //   scale's exponent added to the fp32 exponent field of its nonzero entries (one integer add that never leaves the
  //   normal range there, so it equals e2m1 · 2^(s-127) bit for bit); otherwise the loaded one.
  // - The codes reach the fp4x32 lane order (lane i: byte i of the block): with one token and VBMI (Vbmi), one vpermb
  //   per 4 blocks and row spreads 64 code bytes so that dword lane i holds byte i of block q in its byte q, and block
  //   q's indices are that vector shifted right by 8q (vpermps reads the low 4 bits); otherwise (and for the last
  //   K % 128 codes) one vpmovzxbd per block.
  // Why: with one token the loop is bound by the vector pipes (on Zen 5 vpermps and vpmovzxbd share two, one of them
  // with the fmas), so every shuffle or add taken out of it shows. A harness of this loop (one token, 8 rows in L1,
  // interleaved, 2026-12-02) ran 28.5 GB/s of codes with the added table and vpmovzxbd, 30.9 with the loaded table,
  // 34.3 with the loaded table and vpermb. With 2-4 tokens the fmas bound the loop: there the added table ran 3-4%
  // faster than the loaded one (linear_f32, one thread, 4 and 12 tokens, best of 30), and vpermb, whose spread
  // vectors cost registers, 10-40% slower, so only one-token calls take it (gemv_kernel).
  template <int NT, int MT, bool Vbmi>
  static void gemv_fp4(const float* x, std::int64_t ldx, const ref::weight_ref& w, std::int64_t n0, float* out,
                       std::int64_t ldo) {
    constexpr std::int64_t blk = ref::kFp4WeightBlock, chunk = 64;  // blocks per staging round
    const std::int64_t K = w.k, nblk = K / blk;
    const float* luts = fp4_scaled_luts();
    const __m512i unit = _mm512_castps_si512(_mm512_load_ps(luts + 16 * 127));  // UE8M0 127 = 2^0
    constexpr __mmask16 nonzero = 0xFEFE;                                      // entries 0 and 8 are +0 and -0
    const std::uint8_t* src[NT];
    const prefetch_plan pf =
        group_rows<NT, MT == 1>(reinterpret_cast<const std::uint8_t*>(&w.f4(n0, 0)), w.f4.stride[0], K / 2, n0, w.n,
                                src);
    // The next group's scale bytes (one stream beside the codes: nblk bytes per row, NT rows in a row), so its first
    // chunk does not wait on them.
    if (w.scale.stride[1] == 1 && w.scale.stride[0] == nblk && n0 + 2 * NT <= w.n) {
      const auto* s0 = reinterpret_cast<const std::uint8_t*>(&w.scale(n0 + NT, 0));
      for (std::int64_t off = 0; off < NT * nblk; off += 64) prefetch(s0 + off);
    }
    // byte 4i + q of the spread vector = byte 16q + i of the 64 code bytes
    const __m512i spread = _mm512_set_epi8(63, 47, 31, 15, 62, 46, 30, 14, 61, 45, 29, 13, 60, 44, 28, 12, 59, 43, 27,
                                           11, 58, 42, 26, 10, 57, 41, 25, 9, 56, 40, 24, 8, 55, 39, 23, 7, 54, 38,
                                           22, 6, 53, 37, 21, 5, 52, 36, 20, 4, 51, 35, 19, 3, 50, 34, 18, 2, 49, 33,
                                           17, 1, 48, 32, 16, 0);
    __m512 acc[MT][NT] = {};                 // all zero
    alignas(64) std::int32_t se[NT][chunk];  // per block: the table offset 16 s, or (added) (s - 127) << 23
    // One block of every row: x's two vectors for MT tokens, then per row the table, two vpermps, 2·MT fmas (c: the
    // row's indices in lane order, low nibbles in the low 4 bits).
    const auto block = [&](std::int64_t k, std::int64_t b, const __m512i (&c)[NT], auto added, __m512 (&a)[MT][NT]) {
      __m512 x0[MT], x1[MT];
#pragma GCC unroll 8
      for (int i = 0; i < MT; ++i) {
        x0[i] = _mm512_loadu_ps(x + i * ldx + k);
        x1[i] = _mm512_loadu_ps(x + i * ldx + k + 16);
      }
#pragma GCC unroll 8
      for (int j = 0; j < NT; ++j) {
        __m512 lut;
        if constexpr (decltype(added)::value)
          lut = _mm512_castsi512_ps(_mm512_mask_add_epi32(unit, nonzero, unit, _mm512_set1_epi32(se[j][b])));
        else
          lut = _mm512_load_ps(luts + se[j][b]);
        const __m512 d0 = _mm512_permutexvar_ps(c[j], lut), d1 = _mm512_permutexvar_ps(_mm512_srli_epi32(c[j], 4), lut);
#pragma GCC unroll 8
        for (int i = 0; i < MT; ++i) {
          a[i][j] = _mm512_fmadd_ps(x0[i], d0, a[i][j]);
          a[i][j] = _mm512_fmadd_ps(x1[i], d1, a[i][j]);
        }
      }
    };
    // Blocks b0 .. b0+nb-1 of every row. Local copies of the accumulators and row pointers, and the row loops
    // unrolled early (the pragmas): without both, GCC 12 kept the accumulators in a stack array, stored every one of
    // them on each block and reloaded the row pointers.
    const auto blocks = [&](std::int64_t b0, std::int64_t nb, auto added) {
      __m512 a[MT][NT];
      const std::uint8_t* r[NT];
      for (int j = 0; j < NT; ++j) {
        r[j] = src[j];
        for (int i = 0; i < MT; ++i) a[i][j] = acc[i][j];
      }
      std::int64_t b = 0;
      if constexpr (Vbmi) {
        for (; b + 4 <= nb; b += 4) {
          const std::int64_t k = (b0 + b) * blk;
          stream_step<NT>(pf, k / 2);  // a cache line of every row per 4 blocks
          __m512i v[NT], c[NT];
#pragma GCC unroll 8
          for (int j = 0; j < NT; ++j) c[j] = v[j] = permute_bytes(spread, _mm512_loadu_si512(r[j] + k / 2));
          block(k, b, c, added, a);
#pragma GCC unroll 4
          for (int q = 1; q < 4; ++q) {
#pragma GCC unroll 8
            for (int j = 0; j < NT; ++j) c[j] = _mm512_srli_epi32(v[j], 8 * q);
            block(k + q * blk, b + q, c, added, a);
          }
        }
      }
      for (; b < nb; ++b) {
        const std::int64_t k = (b0 + b) * blk;
        if ((b0 + b) % 4 == 0) stream_step<NT>(pf, k / 2);
        __m512i c[NT];
#pragma GCC unroll 8
        for (int j = 0; j < NT; ++j)
          c[j] = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r[j] + k / 2)));
        block(k, b, c, added, a);
      }
      for (int j = 0; j < NT; ++j)
        for (int i = 0; i < MT; ++i) acc[i][j] = a[i][j];
    };
    for (std::int64_t b0 = 0; b0 < nblk; b0 += chunk) {
      const std::int64_t nb = std::min(chunk, nblk - b0);
      const __mmask64 live = nb == chunk ? ~__mmask64{0} : (__mmask64{1} << nb) - 1;
      __m512i sv[NT];
      __mmask64 out_of_range = 0;
      for (int j = 0; j < NT; ++j) {
        if (w.scale.stride[1] == 1) {
          sv[j] = _mm512_maskz_loadu_epi8(live, &w.scale(n0 + j, b0));
        } else {
          alignas(64) std::uint8_t tmp[chunk] = {};
          for (std::int64_t b = 0; b < nb; ++b) tmp[b] = w.scale(n0 + j, b0 + b).bits;
          sv[j] = _mm512_load_si512(tmp);
        }
        out_of_range |= _mm512_mask_cmplt_epu8_mask(live, sv[j], _mm512_set1_epi8(2)) |
                        _mm512_mask_cmpgt_epu8_mask(live, sv[j], _mm512_set1_epi8(static_cast<char>(252)));
      }
      const bool added = MT > 1 && out_of_range == 0;
      for (int j = 0; j < NT; ++j) {
        const __m512i s32[4] = {_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(sv[j], 0)),  // (immediates)
                                _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(sv[j], 1)),
                                _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(sv[j], 2)),
                                _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(sv[j], 3))};
        const __m512i bias = _mm512_set1_epi32(127);
        for (int q = 0; q < 4; ++q)
          _mm512_store_si512(se[j] + 16 * q, added ? _mm512_slli_epi32(_mm512_sub_epi32(s32[q], bias), 23)
                                                   : _mm512_slli_epi32(s32[q], 4));
      }
      if constexpr (MT > 1) {
        if (added) {
          blocks(b0, nb, std::true_type{});
          continue;
        }
      }
      blocks(b0, nb, std::false_type{});
    }
    reduce<NT, MT>(acc, out, ldo);
  }

  // out[i·ldo + j] = the fixed horizontal add of acc[i][j] (panel_dots' final step).
  template <int NT, int MT>
  static void reduce(const __m512 (&acc)[MT][NT], float* out, std::int64_t ldo) {
    for (int i = 0; i < MT; ++i)
      for (int j = 0; j < NT; ++j) out[i * ldo + j] = xsimd::hadd(F(acc[i][j]));
  }

  // FP8 with VBMI, K % 64 == 0: the NT rows share each tile scale (linear_blocks starts a call at a multiple of
  // gemv_rows(MT), 4 or 8, with NT at most that, so the rows never cross a 128-row tile).
  template <int NT, int MT>
  DSV4_VBMI static void gemv_fp8_vbmi(const float* x, std::int64_t ldx, const ref::weight_ref& w, std::int64_t n0,
                                      float* out, std::int64_t ldo) {
    const std::int64_t K = w.k, tile = ref::kFp8WeightTile;
    const float* st = scale_table();
    const fp8_tables& tb = fp8_bytes();
    const __m512i th0 = _mm512_load_si512(tb.hi), th1 = _mm512_load_si512(tb.hi + 64),
                  tl0 = _mm512_load_si512(tb.lo), tl1 = _mm512_load_si512(tb.lo + 64);
    const std::uint8_t* src[NT];
    const prefetch_plan pf =
        group_rows<NT>(reinterpret_cast<const std::uint8_t*>(&w.f8(n0, 0)), w.f8.stride[0], K, n0, w.n, src);
    __m512 acc[MT][NT] = {};  // all zero
    __m512 vs = _mm512_setzero_ps();
    for (std::int64_t k = 0; k < K; k += kFp8Block) {
      if (k % tile == 0) vs = _mm512_set1_ps(st[w.scale(n0 / tile, k / tile).bits]);
      stream_step<NT>(pf, k);  // a cache line of every row
#pragma GCC unroll 8
      for (int j = 0; j < NT; ++j) {
        __m512 v[4];
        fp8x64(_mm512_loadu_si512(src[j] + k), vs, th0, th1, tl0, tl1, v);
#pragma GCC unroll 8
        for (int i = 0; i < MT; ++i)  // x from L1 (the compiler keeps it in registers where they suffice)
#pragma GCC unroll 8
          for (int q = 0; q < 4; ++q)
            acc[i][j] = _mm512_fmadd_ps(_mm512_loadu_ps(x + i * ldx + k + 16 * q), v[q], acc[i][j]);
      }
    }
    reduce<NT, MT>(acc, out, ldo);
  }

  // BF16 (widened by a shift) and F32 rows, K % 16 == 0: 16 values at a time in increasing k, one accumulator per
  // row, then the fixed horizontal add — panel_dots' order on the decoded rows, so decode rows equal batch rows
  // bitwise (a K % 16 tail stays on the panel path: its scalar sum is left to one compiled site). The panel path
  // decoded the rows into a panel first and read them back: three times the bytes moved per BF16 weight.
  template <int NT, int MT, bool BF>
  static void gemv_wide(const float* x, std::int64_t ldx, const ref::weight_ref& w, std::int64_t n0, float* out,
                        std::int64_t ldo) {
    const std::int64_t Kv = w.k;
    constexpr std::int64_t bytes = BF ? 2 : 4;
    const std::uint8_t* src[NT];
    const std::uint8_t* first = BF ? reinterpret_cast<const std::uint8_t*>(&w.bf(n0, 0))
                                   : reinterpret_cast<const std::uint8_t*>(&w.f32(n0, 0));
    const std::int64_t stride = (BF ? w.bf.stride[0] : w.f32.stride[0]) * bytes;
    const prefetch_plan pf = group_rows<NT>(first, stride, Kv * bytes, n0, w.n, src);
    __m512 acc[MT][NT] = {};  // all zero
    for (std::int64_t k = 0; k < Kv; k += 16) {
      __m512 xv[MT];
#pragma GCC unroll 8
      for (int i = 0; i < MT; ++i) xv[i] = _mm512_loadu_ps(x + i * ldx + k);
      if (k % (64 / bytes) == 0) stream_step<NT>(pf, k * bytes);  // a cache line of every row
#pragma GCC unroll 8
      for (int j = 0; j < NT; ++j) {
        __m512 v;
        if constexpr (BF)
          v = _mm512_castsi512_ps(_mm512_slli_epi32(
              _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src[j] + 2 * k))), 16));
        else
          v = _mm512_loadu_ps(reinterpret_cast<const float*>(src[j]) + k);
#pragma GCC unroll 8
        for (int i = 0; i < MT; ++i) acc[i][j] = _mm512_fmadd_ps(xv[i], v, acc[i][j]);
      }
    }
    reduce<NT, MT>(acc, out, ldo);
  }

  // FP8 without VBMI, K % 128 == 0: element order, 16 codes at a time.
  template <int NT, int MT>
  static void gemv_fp8(const float* x, std::int64_t ldx, const ref::weight_ref& w, std::int64_t n0, float* out,
                       std::int64_t ldo) {
    const std::int64_t K = w.k, tile = ref::kFp8WeightTile;
    const float* st = scale_table();
    const std::uint8_t* src[NT];
    const prefetch_plan pf =
        group_rows<NT>(reinterpret_cast<const std::uint8_t*>(&w.f8(n0, 0)), w.f8.stride[0], K, n0, w.n, src);
    __m512 acc[MT][NT] = {};  // all zero
    for (std::int64_t k0 = 0; k0 < K; k0 += tile) {
      const __m512 vs = _mm512_set1_ps(st[w.scale(n0 / tile, k0 / tile).bits]);
      for (std::int64_t i = 0; i < tile; i += 16) {
        if (i % 64 == 0) stream_step<NT>(pf, k0 + i);  // a cache line of every row
        __m512 xv[MT];
#pragma GCC unroll 8
        for (int t = 0; t < MT; ++t) xv[t] = _mm512_loadu_ps(x + t * ldx + k0 + i);
#pragma GCC unroll 8
        for (int j = 0; j < NT; ++j) {
          const __m512 v = fp8x16(src[j] + k0 + i, vs);
#pragma GCC unroll 8
          for (int t = 0; t < MT; ++t) acc[t][j] = _mm512_fmadd_ps(xv[t], v, acc[t][j]);
        }
      }
    }
    reduce<NT, MT>(acc, out, ldo);
  }
#endif

  // The decode GEMV kernels, one per stored format, behind one signature.
  enum class gemv_kind { fp4, fp4_vbmi, fp8_vbmi, fp8, bf16, f32 };
  using gemv_fn = void (*)(const float*, std::int64_t, const ref::weight_ref&, std::int64_t, float*, std::int64_t);
#if defined(__AVX512BW__)
  template <gemv_kind G, int NT, int MT>
  static void gemv_kernel(const float* x, std::int64_t ldx, const ref::weight_ref& w, std::int64_t n0, float* out,
                          std::int64_t ldo) {
    if constexpr (G == gemv_kind::fp4) gemv_fp4<NT, MT, false>(x, ldx, w, n0, out, ldo);
    if constexpr (G == gemv_kind::fp4_vbmi) gemv_fp4<NT, MT, MT == 1>(x, ldx, w, n0, out, ldo);  // vpermb: 1 token
    if constexpr (G == gemv_kind::fp8_vbmi) gemv_fp8_vbmi<NT, MT>(x, ldx, w, n0, out, ldo);
    if constexpr (G == gemv_kind::fp8) gemv_fp8<NT, MT>(x, ldx, w, n0, out, ldo);
    if constexpr (G == gemv_kind::bf16) gemv_wide<NT, MT, true>(x, ldx, w, n0, out, ldo);
    if constexpr (G == gemv_kind::f32) gemv_wide<NT, MT, false>(x, ldx, w, n0, out, ldo);
  }
  // One row of a kind's table: the kernels of MT tokens and 1 .. gemv_rows(MT) rows (the rest null, never called).
  template <gemv_kind G, int MT, std::size_t... J>
  static constexpr std::array<gemv_fn, kMaxTileN> gemv_row(std::index_sequence<J...>) {
    return {&gemv_kernel<G, static_cast<int>(J) + 1, MT>...};
  }
  template <gemv_kind G>
  static constexpr std::array<std::array<gemv_fn, kMaxTileN>, kMaxGemvTokens> gemv_table() {
    static_assert(kMaxGemvTokens == 4);
    return {gemv_row<G, 1>(std::make_index_sequence<gemv_rows(1)>{}),
            gemv_row<G, 2>(std::make_index_sequence<gemv_rows(2)>{}),
            gemv_row<G, 3>(std::make_index_sequence<gemv_rows(3)>{}),
            gemv_row<G, 4>(std::make_index_sequence<gemv_rows(4)>{})};
  }
#endif

  static bool gemv(const float* x, std::int64_t ldx, int mt, const ref::weight_ref& w, std::int64_t n0, int nt,
                   float* out, std::int64_t ldo) {
#if defined(__AVX512BW__)
    if constexpr (kAvx512) {
      static constexpr std::array<std::array<std::array<gemv_fn, kMaxTileN>, kMaxGemvTokens>, 6> tables = {
          gemv_table<gemv_kind::fp4>(),  gemv_table<gemv_kind::fp4_vbmi>(), gemv_table<gemv_kind::fp8_vbmi>(),
          gemv_table<gemv_kind::fp8>(),  gemv_table<gemv_kind::bf16>(),     gemv_table<gemv_kind::f32>()};
      int kind = -1;
      if (w.fmt == ref::wfmt::fp4_b32 && w.k % ref::kFp4WeightBlock == 0)
        kind = static_cast<int>(vbmi() ? gemv_kind::fp4_vbmi : gemv_kind::fp4);
      else if (w.fmt == ref::wfmt::bf16 && w.k % 16 == 0 && w.bf.stride[1] == 1)
        kind = static_cast<int>(gemv_kind::bf16);
      else if (w.fmt == ref::wfmt::f32 && w.k % 16 == 0 && w.f32.stride[1] == 1)
        kind = static_cast<int>(gemv_kind::f32);
      else if (w.fmt == ref::wfmt::fp8_b128 && permutes(w) && w.k % kFp8Block == 0)
        kind = static_cast<int>(gemv_kind::fp8_vbmi);
      else if (w.fmt == ref::wfmt::fp8_b128 && !permutes(w) && w.k % ref::kFp8WeightTile == 0)
        kind = static_cast<int>(gemv_kind::fp8);
      if (kind >= 0) {
        tables[static_cast<std::size_t>(kind)][static_cast<std::size_t>(mt - 1)][static_cast<std::size_t>(nt - 1)](
            x, ldx, w, n0, out, ldo);
        return true;
      }
    }
#endif
    (void)x, (void)ldx, (void)mt, (void)w, (void)n0, (void)nt, (void)out, (void)ldo;
    return false;
  }

  using dots_fn = void (*)(const float*, std::int64_t, const float*, std::int64_t, std::int64_t, float*,
                           std::int64_t);

  template <int MT, std::size_t... J>
  static constexpr std::array<dots_fn, sizeof...(J)> row_of(std::index_sequence<J...>) {
    return {&dots_tile<MT, static_cast<int>(J) + 1>...};
  }

  // Portable panel path: register tiles of up to 4 tokens x 4 rows (x 8 rows for one token) over the whole K.
  static void panel_dots_tiles(const float* x, std::int64_t ldx, std::int64_t T, const float* w, std::int64_t ldw,
                               int nrows, std::int64_t K, float* y, std::int64_t ldy) {
    static constexpr auto t1 = row_of<1>(std::make_index_sequence<8>{});
    static constexpr auto t2 = row_of<2>(std::make_index_sequence<4>{});
    static constexpr auto t3 = row_of<3>(std::make_index_sequence<4>{});
    static constexpr auto t4 = row_of<4>(std::make_index_sequence<4>{});
    float out[4 * 8];
    for (std::int64_t t0 = 0; t0 < T; t0 += 4) {
      const int mt = static_cast<int>(std::min<std::int64_t>(4, T - t0));
      const int step = mt == 1 ? 8 : 4;
      for (int j0 = 0; j0 < nrows; j0 += step) {
        const int nt = std::min(step, nrows - j0);
        const float* xt = x + t0 * ldx;
        const float* wt = w + j0 * ldw;
        switch (mt) {
          case 1: t1[nt - 1](xt, ldx, wt, ldw, K, out, nt); break;
          case 2: t2[nt - 1](xt, ldx, wt, ldw, K, out, nt); break;
          case 3: t3[nt - 1](xt, ldx, wt, ldw, K, out, nt); break;
          default: t4[nt - 1](xt, ldx, wt, ldw, K, out, nt); break;
        }
        for (int i = 0; i < mt; ++i)
          for (int j = 0; j < nt; ++j) y[(t0 + i) * ldy + j0 + j] = out[i * nt + j];
      }
    }
  }

#if defined(__AVX512BW__)
  // ---- AVX-512 panel path: 6 tokens x 4 rows of accumulators (24 of the 32 registers; 10 loads per 24 fmas), K
  // in chunks of kChunkK so the 6 x rows of a chunk (24 KiB) stay in L1 and the panel rows of the chunk (up to 64:
  // 256 KiB) in L2 while the 4-row tiles run over them (1024: measured best of 256 .. whole K on these shapes); the
  // accumulators are parked in memory between chunks (exactly: the same fma chain per output). ----
  static constexpr int kTileT = 6, kTileN = 4;
  static constexpr std::int64_t kChunkK = 1024;

  template <int MT, int NT>
  static void micro(const float* x, std::int64_t ldx, const float* w, std::int64_t ldw, std::int64_t k0,
                    std::int64_t k1, float* park) {  // park[(i·kMaxPanelRows + j)·16 ..]: token i, row j
    __m512 acc[MT][NT];
    for (int i = 0; i < MT; ++i)
      for (int j = 0; j < NT; ++j) acc[i][j] = _mm512_load_ps(park + (i * kMaxPanelRows + j) * 16);
    for (std::int64_t k = k0; k < k1; k += 16) {
      __m512 xv[MT];
      for (int i = 0; i < MT; ++i) xv[i] = _mm512_loadu_ps(x + i * ldx + k);
      for (int j = 0; j < NT; ++j) {
        const __m512 wv = _mm512_loadu_ps(w + j * ldw + k);
        for (int i = 0; i < MT; ++i) acc[i][j] = _mm512_fmadd_ps(xv[i], wv, acc[i][j]);
      }
    }
    for (int i = 0; i < MT; ++i)
      for (int j = 0; j < NT; ++j) _mm512_store_ps(park + (i * kMaxPanelRows + j) * 16, acc[i][j]);
  }
  using micro_fn = void (*)(const float*, std::int64_t, const float*, std::int64_t, std::int64_t, std::int64_t,
                            float*);
  template <int MT, std::size_t... J>
  static constexpr std::array<micro_fn, sizeof...(J)> micro_row(std::index_sequence<J...>) {
    return {&micro<MT, static_cast<int>(J) + 1>...};
  }

  static void panel_dots_avx512(const float* x, std::int64_t ldx, std::int64_t T, const float* w, std::int64_t ldw,
                                int nrows, std::int64_t K, float* y, std::int64_t ldy) {
    static constexpr std::array<std::array<micro_fn, kTileN>, kTileT> table = {
        micro_row<1>(std::make_index_sequence<kTileN>{}), micro_row<2>(std::make_index_sequence<kTileN>{}),
        micro_row<3>(std::make_index_sequence<kTileN>{}), micro_row<4>(std::make_index_sequence<kTileN>{}),
        micro_row<5>(std::make_index_sequence<kTileN>{}), micro_row<6>(std::make_index_sequence<kTileN>{})};
    const std::int64_t Kv = K / 16 * 16;
    alignas(64) float park[kTileT * kMaxPanelRows * 16];
    for (std::int64_t t0 = 0; t0 < T; t0 += kTileT) {
      const int mt = static_cast<int>(std::min<std::int64_t>(kTileT, T - t0));
      const float* xt = x + t0 * ldx;
      for (int i = 0; i < mt; ++i) std::fill_n(park + i * kMaxPanelRows * 16, nrows * 16, 0.f);
      for (std::int64_t k0 = 0; k0 < Kv; k0 += kChunkK) {
        const std::int64_t k1 = std::min(Kv, k0 + kChunkK);
        for (int j0 = 0; j0 < nrows; j0 += kTileN) {
          const int nt = std::min(kTileN, nrows - j0);
          table[static_cast<std::size_t>(mt - 1)][static_cast<std::size_t>(nt - 1)](xt, ldx, w + j0 * ldw, ldw, k0, k1,
                                                                                    park + j0 * 16);
        }
      }
      for (int i = 0; i < mt; ++i)
        for (int j = 0; j < nrows; ++j) {  // the fixed horizontal add, then the K % 16 tail in order (dots_tile's)
          float r = xsimd::hadd(F(_mm512_load_ps(park + (i * kMaxPanelRows + j) * 16)));
          for (std::int64_t k = Kv; k < K; ++k) r += xt[i * ldx + k] * w[j * ldw + k];
          y[(t0 + i) * ldy + j] = r;
        }
    }
  }
#endif

#if defined(__AVX512BW__)
  // ---- AVX-512 prefill GEMM, the same dot order as 16 GEMMs. Output (t, n)'s lane j sums x[t, 16m + j]·w[n, 16m + j]
  // over m = 0 .. K' - 1 (K' = K / 16, K in lane order) in increasing m, one fma each: per lane a plain sequential-k
  // GEMM of depth K'. Each lane runs as a register-blocked outer product (16 rows across the vector, one broadcast x
  // value per token and step: 4 x 16 rows x 6 tokens of accumulators, 4 vector loads and 6 broadcasts per 24 fmas,
  // all contiguous), and an output's 16 lane sums are added in the fixed horizontal add's tree (xsimd::hadd on
  // AVX-512: lanes i and i + 8, then i and i + 4, then (0 + 1) + (2 + 3)) on vectors of 16 rows: the dot kernels'
  // bits. The dot tiles instead keep a 16-lane accumulator per output and load both operands as vectors (10 streams
  // of power-of-two stride that share L1 sets); in bench_linear (T = 512, 2 threads, 2026-12-02) this took the
  // prefill GEMMs from 150-250 to 265-340 GFLOP/s.
  //   x: packed once per linear call (pack_x, packed_at): per lane, per chunk of kGemmChunkSteps steps, per tile of
  //      kPackTokens tokens, [step][token];
  //   w: a 64-row panel, decoded 16 rows at a time and transposed to [lane][step][row] (wt);
  //   partial sums: [lane][token][row], per block of kGemmTokenBlock tokens. ----
  static constexpr std::int64_t kGemmTokenBlock = 86 * kPackTokens;  // tokens per pass at most (partial sums: 2 MiB)
  static constexpr std::int64_t kGemmChunkSteps = 128;  // steps per micro call: a lane's 64 rows are 32 KiB (L1)
  // x prefetched this many floats (~43 steps) ahead: without it K = 8192 ran at 100-145 GFLOP/s on one thread in a
  // harness of panel_gemm alone, with it 180-196 (128 and 512 did about as well)
  static constexpr std::int64_t kGemmPrefetch = 256;

  static std::int64_t packed_x_floats(std::int64_t T, std::int64_t K) {
    return pack_tiles(T) * 16 * (K / 16) * kPackTokens;
  }
  // Where step m of lane j and tile i starts in the packed x of `tiles` tiles: per lane, per chunk of
  // kGemmChunkSteps steps, per tile, the chunk's steps of kPackTokens floats, so that one lane-chunk pass over all
  // tiles reads one stream.
  static std::int64_t packed_at(std::int64_t Kp, std::int64_t tiles, std::int64_t j, std::int64_t i, std::int64_t m) {
    const std::int64_t m0 = m / kGemmChunkSteps * kGemmChunkSteps, nm = std::min(kGemmChunkSteps, Kp - m0);
    return ((j * Kp + m0) * tiles + i * nm + (m - m0)) * kPackTokens;
  }
  // Tiles [i0, i1) of the packed x of all T tokens (x in element order; zero past T): each tile put in W's lane
  // order first (order_x), then scattered to the lanes.
  static void pack_x(const ref::weight_ref& w, const float* x, std::int64_t ldx, std::int64_t T, std::int64_t i0,
                     std::int64_t i1, float* out) {
    const std::int64_t K = w.k, Kp = K / 16, tiles = pack_tiles(T);
    std::vector<float, xsimd::aligned_allocator<float, 64>> lane;  // the tile in lane order, where W permutes
    if (permutes(w)) lane.resize(static_cast<std::size_t>(kPackTokens * K));
    for (std::int64_t i = i0; i < i1; ++i) {
      const std::int64_t t0 = i * kPackTokens, mt = std::min<std::int64_t>(kPackTokens, T - t0);
      const float* xo = x + t0 * ldx;
      std::int64_t ld = ldx;
      if (!lane.empty()) {
        order_x(w, xo, mt, ldx, lane.data());
        xo = lane.data();
        ld = K;
      }
      for (std::int64_t m = 0; m < Kp; ++m) {  // the tile's 16-lane vectors transposed: lane j's 6 tokens
        __m512 r[16];
        for (int t = 0; t < 16; ++t) r[t] = t < mt ? _mm512_loadu_ps(xo + t * ld + 16 * m) : _mm512_setzero_ps();
        transpose16(r);
        for (int j = 0; j < 16; ++j)
          _mm512_mask_storeu_ps(out + packed_at(Kp, tiles, j, i, m), (1u << kPackTokens) - 1, r[j]);
      }
    }
  }

  // acc[t][g] (token t, rows 16g .. 16g + 15 of one lane) over nm steps: from zero (first) or from p, stored to p
  // (p + t·pst + 16g).
  template <int MT, int RG>
  static void gemm_micro(const float* xp, const float* wt, std::int64_t ldr, std::int64_t nm, float* p,
                         std::int64_t pst, bool first) {
    __m512 acc[MT][RG];  // (every loop over the tile unrolled, so no accumulator lives on the stack)
#pragma GCC unroll 8
    for (int t = 0; t < MT; ++t)
#pragma GCC unroll 4
      for (int g = 0; g < RG; ++g) acc[t][g] = first ? _mm512_setzero_ps() : _mm512_load_ps(p + t * pst + 16 * g);
    for (std::int64_t m = 0; m < nm; ++m) {
      _mm_prefetch(reinterpret_cast<const char*>(xp + m * kPackTokens + kGemmPrefetch), _MM_HINT_T0);
      __m512 wv[RG];
      for (int g = 0; g < RG; ++g) wv[g] = _mm512_load_ps(wt + m * ldr + 16 * g);
      for (int t = 0; t < MT; ++t) {
        const __m512 xb = _mm512_set1_ps(xp[m * kPackTokens + t]);
        for (int g = 0; g < RG; ++g) acc[t][g] = _mm512_fmadd_ps(xb, wv[g], acc[t][g]);
      }
    }
#pragma GCC unroll 8
    for (int t = 0; t < MT; ++t)
#pragma GCC unroll 4
      for (int g = 0; g < RG; ++g) _mm512_store_ps(p + t * pst + 16 * g, acc[t][g]);
  }
  using gemm_micro_fn = void (*)(const float*, const float*, std::int64_t, std::int64_t, float*, std::int64_t, bool);
  template <int MT, std::size_t... G>
  static constexpr std::array<gemm_micro_fn, sizeof...(G)> gemm_row(std::index_sequence<G...>) {
    return {&gemm_micro<MT, static_cast<int>(G) + 1>...};
  }

  // r[0 .. 15] (16 rows of 16) transposed in place: r[j] lane i = old r[i] lane j.
  static void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; ++i) {
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);      // per 128-bit lane: a0 b0 a1 b1
      t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);  // a2 b2 a3 b3
    }
    for (int i = 0; i < 4; ++i) {
      u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);  // a0 b0 c0 d0
      u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);  // a1 b1 c1 d1
      u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    // u[4i + c] lane L = column 4L + c of rows 4i .. 4i + 3: a 4 x 4 transpose of 128-bit lanes per c
    for (int c = 0; c < 4; ++c) {
      const __m512 p0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44), p1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
      const __m512 p2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44),
                   p3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
      r[c] = _mm512_shuffle_f32x4(p0, p2, 0x88);
      r[4 + c] = _mm512_shuffle_f32x4(p0, p2, 0xDD);
      r[8 + c] = _mm512_shuffle_f32x4(p1, p3, 0x88);
      r[12 + c] = _mm512_shuffle_f32x4(p1, p3, 0xDD);
    }
  }

  // y[t·ldy + j] = x_t · w_j (panel_dots' contract and bits) from x packed by pack_x (xp). x itself (element
  // order) is read for the K % 16 tail only: every lane order leaves those positions in element order (FP4 has no
  // tail, FP8 permutes whole 64-blocks only, the others keep element order).
  static void panel_gemm(const float* xp, const float* x, std::int64_t ldx, std::int64_t T, const ref::weight_ref& w,
                         std::int64_t n0, int nrows, float* y, std::int64_t ldy) {
    static constexpr std::array<std::array<gemm_micro_fn, 4>, kPackTokens> table = {
        gemm_row<1>(std::make_index_sequence<4>{}), gemm_row<2>(std::make_index_sequence<4>{}),
        gemm_row<3>(std::make_index_sequence<4>{}), gemm_row<4>(std::make_index_sequence<4>{}),
        gemm_row<5>(std::make_index_sequence<4>{}), gemm_row<6>(std::make_index_sequence<4>{})};
    static_assert(kPackTokens == 6 && kMaxPanelRows == 64);
    const int rg = (nrows + 15) / 16;
    const std::int64_t K = w.k, ldw = panel_ld(K);
    const std::int64_t ldr = 16 * rg, Kp = K / 16, Kv = Kp * 16, tiles = pack_tiles(T);
    const std::int64_t chunk = kGemmChunkSteps;
    // rows: 16 decoded rows (L2-resident at every V4 K), transposed into wt before the next 16 are decoded; tails:
    // each row's K % 16 tail values. Per thread and kept between calls: up to 0.5 + 2 + 2 MiB at K = 8192.
    thread_local std::vector<float, xsimd::aligned_allocator<float, 64>> rows, wt, part;
    alignas(64) float tails[kMaxPanelRows * 16];
    rows.resize(static_cast<std::size_t>(16 * ldw));
    // lane j's weights at wt + j·wj: one cache line more than K'·ldr, so the 16 stores of a transpose (one per lane)
    // do not all map to one L1 set (K'·ldr·4 bytes is a multiple of 4 KiB at every V4 K)
    const std::int64_t wj = Kp * ldr + 16;
    wt.resize(static_cast<std::size_t>(16 * wj));
    // token blocks of equal size (whole tiles): one for T = 512, not 510 and 2
    const std::int64_t nblk = (T + kGemmTokenBlock - 1) / kGemmTokenBlock;
    const std::int64_t tb = ((T + nblk - 1) / nblk + kPackTokens - 1) / kPackTokens * kPackTokens;
    const std::int64_t pj = (tb + kPackTokens) * ldr;  // partial sums: [j][t][ldr]
    part.resize(static_cast<std::size_t>(16 * pj));
    for (int g = 0; g < rg; ++g) {
      const int ng = std::min(16, nrows - 16 * g);
      for (int i = 0; i < ng; ++i) {
        decode_row(w, n0 + 16 * g + i, rows.data() + i * ldw);
        std::copy(rows.data() + i * ldw + Kv, rows.data() + i * ldw + K, tails + (16 * g + i) * 16);
      }
      for (std::int64_t m = 0; m < Kp; ++m) {  // wt[j·wj + m·ldr + 16g + i] = row 16g + i at 16m + j
        __m512 r[16];
        for (int i = 0; i < 16; ++i)
          r[i] = i < ng ? _mm512_load_ps(rows.data() + i * ldw + 16 * m) : _mm512_setzero_ps();
        transpose16(r);
        for (int j = 0; j < 16; ++j) _mm512_store_ps(wt.data() + j * wj + m * ldr + 16 * g, r[j]);
      }
    }
    for (std::int64_t b0 = 0; b0 < T; b0 += tb) {
      const std::int64_t b1 = std::min(T, b0 + tb);
      if (Kp == 0)  // K < 16: the tail alone, after a zero sum
        std::fill(part.begin(), part.end(), 0.f);
      for (int j = 0; j < 16; ++j)  // lane j's GEMM, its weights in chunks of K' that stay in L1 for every tile
        for (std::int64_t m0 = 0; m0 < Kp; m0 += chunk) {
          const std::int64_t nm = std::min(chunk, Kp - m0);
          for (std::int64_t t0 = b0; t0 < b1; t0 += kPackTokens) {
            const int mt = static_cast<int>(std::min<std::int64_t>(kPackTokens, b1 - t0));
            table[static_cast<std::size_t>(mt - 1)][static_cast<std::size_t>(rg - 1)](
                xp + packed_at(Kp, tiles, j, t0 / kPackTokens, m0), wt.data() + j * wj + m0 * ldr, ldr, nm,
                part.data() + j * pj + (t0 - b0) * ldr, ldr, m0 == 0);
          }
        }
      for (std::int64_t t0 = b0; t0 < b1; t0 += kPackTokens) {
        const int mt = static_cast<int>(std::min<std::int64_t>(kPackTokens, b1 - t0));
        reduce_tile(part.data() + (t0 - b0) * ldr, pj, ldr, mt, x + t0 * ldx, ldx, tails, nrows, Kv, K,
                    y + t0 * ldy, ldy);
      }
    }
  }

  // The 16 lane sums of mt tokens x nrows outputs (p: [t][j][ldr]) added by the fixed horizontal add's tree, then
  // the K % 16 tail in order (dots_tile's), to y.
  static void reduce_tile(const float* p, std::int64_t pj, std::int64_t ldr, int mt, const float* x,
                          std::int64_t ldx, const float* tails, int nrows, std::int64_t Kv, std::int64_t K, float* y,
                          std::int64_t ldy) {
    for (int t = 0; t < mt; ++t)
      for (std::int64_t g = 0; g < ldr; g += 16) {
        const float* q = p + t * ldr + g;
        __m512 s[8];
        for (int i = 0; i < 8; ++i) s[i] = _mm512_add_ps(_mm512_load_ps(q + (i + 8) * pj), _mm512_load_ps(q + i * pj));
        for (int i = 0; i < 4; ++i) s[i] = _mm512_add_ps(s[i], s[i + 4]);
        const __m512 r = _mm512_add_ps(_mm512_add_ps(s[0], s[1]), _mm512_add_ps(s[2], s[3]));
        const int n = std::min<int>(16, nrows - static_cast<int>(g));
        if (Kv == K) {
          _mm512_mask_storeu_ps(y + t * ldy + g, static_cast<__mmask16>((1u << n) - 1), r);
        } else {
          alignas(64) float o[16];
          _mm512_store_ps(o, r);
          for (int i = 0; i < n; ++i) {
            float v = o[i];
            for (std::int64_t k = Kv; k < K; ++k) v += x[t * ldx + k] * tails[(g + i) * 16 + (k - Kv)];
            y[t * ldy + g + i] = v;
          }
        }
      }
  }
#endif

  static void panel_dots(const float* x, std::int64_t ldx, std::int64_t T, const float* w, std::int64_t ldw,
                         int nrows, std::int64_t K, float* y, std::int64_t ldy) {
#if defined(__AVX512BW__)
    if constexpr (kAvx512) return panel_dots_avx512(x, ldx, T, w, ldw, nrows, K, y, ldy);
#endif
    panel_dots_tiles(x, ldx, T, w, ldw, nrows, K, y, ldy);
  }
};

template <class Arch>
linear_kernels select_linear_kernels::operator()(Arch) const {
  using L = linear_simd<Arch>;
  linear_kernels k{Arch::name(), &L::permutes, &L::order_x, &L::decode_row, &L::panel_dots, &L::gemv};
#if defined(__AVX512BW__)
  if constexpr (L::kAvx512) {
    k.packed_x_floats = &L::packed_x_floats;
    k.pack_x = &L::pack_x;
    k.panel_gemm = &L::panel_gemm;
  }
#endif
  return k;
}

}  // namespace dsv4::cpu::detail
