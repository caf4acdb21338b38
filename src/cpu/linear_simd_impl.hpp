// src/cpu/linear_simd_impl.hpp — Arch-templated weight decode and fixed-order dot tiles of the CPU linear layer.
//
// Decode (exact, so it equals ref::decode_row bit for bit):
//   FP8 E4M3: the 7 magnitude bits shifted to fp32 bit 20 give the fp32 whose value is the E4M3 value times 2^-120
//             for normals and subnormals alike (exponent bias 127 vs 7); one multiply by 2^120 fixes it, the sign bit
//             is OR-ed back, then times the tile scale. Codes S.1111.111 are NaN: counted as bad.
//   FP4 E2M1: 16 codes, so a 16-entry table permute (AVX-512) or 8-entry magnitude permute plus sign (AVX2).
//   BF16: widen and shift left 16.
// Other ISAs (SSE2) decode with ref::decode_row.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <utility>

#include <xsimd/xsimd.hpp>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "dsv4/ref/linear.hpp"
#include "linear_simd.hpp"

namespace dsv4::cpu::detail {

template <class Arch>
struct linear_simd {
  using F = xsimd::batch<float, Arch>;
  static constexpr int W = static_cast<int>(F::size);
  static constexpr bool kAvx512 = std::is_same_v<Arch, xsimd::avx512bw>;
  static constexpr bool kAvx2 = std::is_same_v<Arch, xsimd::fma3<xsimd::avx2>>;

  // a·b + c with one rounding. xsimd 8.1 has no AVX-512 fma (its generic one is x * y + z, fused or not at the
  // compiler's discretion, e.g. fused at -O3 and not under the sanitizers), so AVX-512 calls the instruction itself:
  // the panel dots and the fused GEMV must run the very same operation to agree bit for bit.
  static F fmadd(const F& a, const F& b, const F& c) {
#if defined(__AVX512BW__)
    if constexpr (kAvx512) return F(_mm512_fmadd_ps(a, b, c));
#endif
    return xsimd::fma(a, b, c);
  }

#if defined(__AVX512BW__)
  // 16 FP8 codes at src to fp32 times the tile scale vs; the NaN codes S.1111.111 come back NaN and in *nan.
  static __m512 fp8x16(const std::uint8_t* src, __m512 vs, __mmask16* nan) {
    const __m512i m7f = _mm512_set1_epi32(0x7F), m80 = _mm512_set1_epi32(0x80);
    const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    const __m512i mag = _mm512_and_si512(c, m7f);
    *nan = _mm512_cmpeq_epi32_mask(mag, m7f);
    __m512 f = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(mag, 20)), _mm512_set1_ps(0x1p120f));
    f = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(f), _mm512_slli_epi32(_mm512_and_si512(c, m80), 24)));
    return _mm512_mul_ps(_mm512_mask_mov_ps(f, *nan, _mm512_set1_ps(__builtin_nanf(""))), vs);
  }
  // 16 FP4 values (8 bytes at src, element 2c in the low nibble) to fp32 times the block scale vs.
  static __m512 fp4x16(const std::uint8_t* src, __m512 vs) {
    const __m512 lut = _mm512_setr_ps(0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -0.5f, -1.f, -1.5f, -2.f, -3.f,
                                      -4.f, -6.f);
    const __m512i shift = _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
    __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src));
    b = _mm_unpacklo_epi8(b, b);  // byte c twice: lanes 2c (low nibble) and 2c+1 (high nibble)
    const __m512i code = _mm512_and_si512(_mm512_srlv_epi32(_mm512_cvtepu8_epi32(b), shift), _mm512_set1_epi32(0xF));
    return _mm512_mul_ps(_mm512_permutexvar_ps(code, lut), vs);
  }
#endif

  static std::int64_t decode_row(const ref::weight_ref& w, std::int64_t n, float* out) {
    const std::int64_t K = w.k;
    switch (w.fmt) {
      case ref::wfmt::f32:
        std::memcpy(out, &w.f32(n, 0), static_cast<std::size_t>(K) * sizeof(float));
        return 0;
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
        return k < K ? ref::decode_row(w, n, k, K, out + k) : 0;
      }
      case ref::wfmt::fp8_b128:
        return decode_fp8(w, n, out);
      case ref::wfmt::fp4_b32:
        return decode_fp4(w, n, out);
    }
    return 0;
  }

  static std::int64_t decode_fp8(const ref::weight_ref& w, std::int64_t n, float* out) {
    const std::int64_t K = w.k;
    std::int64_t bad = 0, k = 0;
    [[maybe_unused]] const auto* src = reinterpret_cast<const std::uint8_t*>(&w.f8(n, 0));
    if constexpr (kAvx512 || kAvx2) {
      constexpr std::int64_t tile = ref::kFp8WeightTile;
      for (; k + tile <= K; k += tile) {
        const std::uint8_t sb = w.scale(n / tile, k / tile).bits;
        bad += sb == 0xFF ? tile : 0;  // every weight of the tile row is NaN (codes are not counted again)
        const float s = ue8m0{sb}.to_float();
#if defined(__AVX512BW__)
        if constexpr (kAvx512) {
          const __m512 vs = _mm512_set1_ps(s);
          for (std::int64_t i = 0; i < tile; i += 16) {
            __mmask16 nan;
            _mm512_storeu_ps(out + k + i, fp8x16(src + k + i, vs, &nan));
            if (sb != 0xFF) bad += __builtin_popcount(nan);
          }
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
            if (sb != 0xFF) bad += __builtin_popcount(static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(isnan))));
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
    return bad + (k < K ? ref::decode_row(w, n, k, K, out + k) : 0);
  }

  static std::int64_t decode_fp4(const ref::weight_ref& w, std::int64_t n, float* out) {
    const std::int64_t K = w.k;
    std::int64_t bad = 0, k = 0;
    [[maybe_unused]] const auto* src = reinterpret_cast<const std::uint8_t*>(&w.f4(n, 0));
    [[maybe_unused]] constexpr std::int64_t blk = ref::kFp4WeightBlock;
#if defined(__AVX512BW__)
    if constexpr (kAvx512) {
      for (; k + blk <= K; k += blk) {
        const std::uint8_t sb = w.scale(n, k / blk).bits;
        bad += sb == 0xFF ? blk : 0;
        const __m512 vs = _mm512_set1_ps(ue8m0{sb}.to_float());
        for (std::int64_t i = 0; i < blk; i += 16) _mm512_storeu_ps(out + k + i, fp4x16(src + (k + i) / 2, vs));
      }
    }
#endif
#if defined(__AVX2__)
    if constexpr (kAvx2) {
      const __m256 lut = _mm256_setr_ps(0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f);
      const __m256i shift = _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4);
      const __m256i m7 = _mm256_set1_epi32(7), m8 = _mm256_set1_epi32(8);
      for (; k + blk <= K; k += blk) {
        const std::uint8_t sb = w.scale(n, k / blk).bits;
        bad += sb == 0xFF ? blk : 0;
        const __m256 vs = _mm256_set1_ps(ue8m0{sb}.to_float());
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
    return bad + (k < K ? ref::decode_row(w, n, k, K, out + k) : 0);
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

  // Decode-time GEMV (AVX-512, FP8 with K a multiple of 128 or FP4): rows decoded 16 weights at a time into
  // registers with the decode_fp8 / decode_fp4 arithmetic and multiplied into one accumulator per row, exactly the
  // chain of dots_tile<1, nt>, then xsimd::hadd. Weight bytes are read once and nothing is written: this is the
  // bandwidth-bound decode case.
  static bool gemv(const float* x, const ref::weight_ref& w, std::int64_t n0, int nt, float* out,
                   std::int64_t* bad_out) {
#if defined(__AVX512BW__)
    if constexpr (kAvx512) {
      const std::int64_t K = w.k;
      std::int64_t bad = 0;
      __m512 acc[kMaxTileN];
      for (int j = 0; j < nt; ++j) acc[j] = _mm512_setzero_ps();
      if (w.fmt == ref::wfmt::fp8_b128 && K % ref::kFp8WeightTile == 0) {
        constexpr std::int64_t tile = ref::kFp8WeightTile;
        const std::uint8_t* src[kMaxTileN];
        for (int j = 0; j < nt; ++j) src[j] = reinterpret_cast<const std::uint8_t*>(&w.f8(n0 + j, 0));
        for (std::int64_t k0 = 0; k0 < K; k0 += tile) {
          std::uint8_t sb[kMaxTileN];
          __m512 vs[kMaxTileN];
          for (int j = 0; j < nt; ++j) {
            sb[j] = w.scale((n0 + j) / tile, k0 / tile).bits;
            bad += sb[j] == 0xFF ? tile : 0;
            vs[j] = _mm512_set1_ps(ue8m0{sb[j]}.to_float());
          }
          for (std::int64_t i = 0; i < tile; i += 16) {
            const __m512 xv = _mm512_loadu_ps(x + k0 + i);
            for (int j = 0; j < nt; ++j) {
              __mmask16 nan;
              acc[j] = _mm512_fmadd_ps(xv, fp8x16(src[j] + k0 + i, vs[j], &nan), acc[j]);
              if (sb[j] != 0xFF) bad += __builtin_popcount(nan);
            }
          }
        }
      } else if (w.fmt == ref::wfmt::fp4_b32 && K % ref::kFp4WeightBlock == 0) {
        constexpr std::int64_t blk = ref::kFp4WeightBlock;
        const std::uint8_t* src[kMaxTileN];
        for (int j = 0; j < nt; ++j) src[j] = reinterpret_cast<const std::uint8_t*>(&w.f4(n0 + j, 0));
        for (std::int64_t k0 = 0; k0 < K; k0 += blk) {
          __m512 vs[kMaxTileN];
          for (int j = 0; j < nt; ++j) {
            const std::uint8_t sb = w.scale(n0 + j, k0 / blk).bits;
            bad += sb == 0xFF ? blk : 0;
            vs[j] = _mm512_set1_ps(ue8m0{sb}.to_float());
          }
          for (std::int64_t i = 0; i < blk; i += 16) {
            const __m512 xv = _mm512_loadu_ps(x + k0 + i);
            for (int j = 0; j < nt; ++j)
              acc[j] = _mm512_fmadd_ps(xv, fp4x16(src[j] + (k0 + i) / 2, vs[j]), acc[j]);
          }
        }
      } else {
        return false;
      }
      for (int j = 0; j < nt; ++j) out[j] = xsimd::hadd(F(acc[j]));
      *bad_out += bad;
      return true;
    }
#endif
    (void)x, (void)w, (void)n0, (void)nt, (void)out, (void)bad_out;
    return false;
  }

  using dots_fn = void (*)(const float*, std::int64_t, const float*, std::int64_t, std::int64_t, float*,
                           std::int64_t);

  template <int MT, std::size_t... J>
  static constexpr std::array<dots_fn, sizeof...(J)> row_of(std::index_sequence<J...>) {
    return {&dots_tile<MT, static_cast<int>(J) + 1>...};
  }

  static void dots(const float* x, std::int64_t ldx, int mt, const float* w, std::int64_t ldw, int nt,
                   std::int64_t K, float* out, std::int64_t ldo) {
    static constexpr auto t1 = row_of<1>(std::make_index_sequence<kMaxTileN>{});
    static constexpr auto t2 = row_of<2>(std::make_index_sequence<4>{});
    static constexpr auto t3 = row_of<3>(std::make_index_sequence<4>{});
    static constexpr auto t4 = row_of<4>(std::make_index_sequence<4>{});
    switch (mt) {
      case 1: return t1[nt - 1](x, ldx, w, ldw, K, out, ldo);
      case 2: return t2[nt - 1](x, ldx, w, ldw, K, out, ldo);
      case 3: return t3[nt - 1](x, ldx, w, ldw, K, out, ldo);
      default: return t4[nt - 1](x, ldx, w, ldw, K, out, ldo);
    }
  }
};

template <class Arch>
linear_kernels select_linear_kernels::operator()(Arch) const {
  return linear_kernels{Arch::name(), &linear_simd<Arch>::decode_row, &linear_simd<Arch>::dots,
                        &linear_simd<Arch>::gemv};
}

}  // namespace dsv4::cpu::detail
