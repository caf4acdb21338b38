// src/cpu/linear_official.cpp — CPU backend of the `official` policy's promoted FP8 / FP4 GEMM
// (reference: dsv4/ref/official.hpp, linear), on BF16 dot products.
//
// After Q8 an activation is an E4M3 value and a weight code an E4M3 or E2M1 value: both are exactly BF16 numbers and
// their product is exact in fp32, so AVX512-BF16's vdpbf16ps (two products per lane per instruction, twice the fp32
// FMA rate) computes the block partial sums. The order is fixed and written down, so the portable fallback gives the
// same bits:
//   lane = output n; a block's partial P starts at +0 and takes the K pairs (2j, 2j+1) in increasing j as
//   P = (P + q[2j+1]·c[2j+1]) + q[2j]·c[2j]   (each add rounded to fp32: what vdpbf16ps does on Zen 5 and in
//   Intel's definition; checked against it in tests/test_official.cpp), then acc = fma(P, sa·sw, acc), y = bf16(acc).
// The reference sums a block exactly; the two agree whenever the block's fp32 partial sums are exact (e.g. FP4 blocks
// with Σ|q·c| < 2^14) and otherwise differ by fp32 rounding inside a block (tests state the tolerance).
// Every output depends only on its own x row and W row, in the same instruction sequence whatever T, the tile and the
// thread count: official outputs are batch-invariant here as the fp32 ones are.
//
// Structure: x rows quantized to Q8 once (BF16 pairs as dwords, scales per 128), then by T:
//   T > 32     oneTBB over panels of 32 weight rows; each task packs its panel per 512-pair chunk as [pairs][32]
//              dwords of BF16 code pairs (FP8 by arithmetic + a subnormal table, FP4 by a 16-entry table, then a
//              16x16 dword transpose) and runs every 6-token x 32-row tile against it (lanes = rows);
//   2..32      token lanes: 8 tokens x 2 rows per vector, rows decoded per chunk without a transpose, 14-15 chains
//              with their totals in registers (tile_tl);
//   1          six panels at once, one token against 12 vectors of rows (gemv_bf16).
// In all three a lane runs the same instruction sequence for its (token, row), so the outputs are the same bits.
#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// GCC 12 reports the _mm512_undefined_* inside the inlined intrinsics of target("...") functions as maybe-uninitialized
// (a false positive: every lane is written before use).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#include "dsv4/cpu/linear.hpp"
#include "dsv4/cpu/quant.hpp"
#include "dsv4/numerics.hpp"
#include "dsv4/ref/official.hpp"
#include "f32_rows.hpp"
#include "parallel.hpp"

namespace dsv4::cpu {
namespace {

constexpr std::int64_t kPanel = 32;  // weight rows per panel: two 16-lane vectors
constexpr int kTileT = 6;            // tokens per register tile: 6 x 2 partial + 6 x 2 total accumulators
// K pairs per packed panel chunk (whole promotion blocks): 64 KiB of panel stays in L2 and a tile's x rows of it
// (6 x 2 KiB) in L1 while every tile runs over it; the accumulators wait between chunks.
constexpr std::int64_t kChunkPairs = 512;

std::uint16_t bf16_bits(float v) { return bf16::from_float(v).bits; }

// BF16 bits of every E4M3 code and of every E2M1 code (exact).
struct code_tables {
  std::uint16_t e4m3[256];
  std::uint32_t e2m1[16];
  code_tables() {
    for (int c = 0; c < 256; ++c) e4m3[c] = bf16_bits(fp8_e4m3{static_cast<std::uint8_t>(c)}.to_float());
    for (int c = 0; c < 16; ++c) e2m1[c] = bf16_bits(fp4_e2m1{static_cast<std::uint8_t>(c)}.to_float());
  }
};
const code_tables& tables() {
  static const code_tables t;
  return t;
}

// Every UE8M0 byte's value (exact; 0xFF is NaN, which count_bad keeps away from the kernels).
const float* scale_lut() {
  static const auto lut = [] {
    std::array<float, 256> t{};
    for (int i = 0; i < 256; ++i) t[static_cast<std::size_t>(i)] = ue8m0{static_cast<std::uint8_t>(i)}.to_float();
    return t;
  }();
  return lut.data();
}

float bf16_value(std::uint32_t bits16) {
  return bits_to_f32(bits16 << 16);
}

// One K pair of BF16 codes as a dword (element 2j in the low half): FP8 codes row[2j], row[2j + 1] of a row of k codes
// (the odd element past k is 0), or the two nibbles of one FP4 byte.
std::uint32_t fp8_pair(const std::uint8_t* row, std::int64_t j, std::int64_t k) {
  const auto& tb = tables();
  return std::uint32_t{tb.e4m3[row[2 * j]]} | (2 * j + 1 < k ? std::uint32_t{tb.e4m3[row[2 * j + 1]]} << 16 : 0u);
}
std::uint32_t fp4_pair(std::uint8_t byte) {
  const auto& tb = tables();
  return tb.e2m1[byte & 0xF] | tb.e2m1[byte >> 4] << 16;
}
// Pair j of row n of an FP8 or FP4 weight; 0 for a row past N.
std::uint32_t weight_pair(const ref::weight_ref& w, std::int64_t n, std::int64_t j) {
  if (n >= w.n) return 0;
  if (w.fmt == ref::wfmt::fp4_b32) return fp4_pair(w.f4(n, j).bits);
  return fp8_pair(reinterpret_cast<const std::uint8_t*>(&w.f8(n, 0)), j, w.k);
}

// ---- the fixed-order block dot (portable: the definition the SIMD kernel matches) --------------------------------
struct geometry {
  std::int64_t K2 = 0;        // K pairs (K rounded up to even)
  std::int64_t pblock = 0;    // pairs per promotion block (64 for FP8, 16 for FP4)
  std::int64_t nblocks = 0;   // promotion blocks along K
  bool fp4 = false;
};

// One token row against the 32 lanes of a panel chunk starting at pair c0, blocks [b0, b1): tot[32] accumulates.
void row_portable(const std::uint32_t* xp, const float* sa, const std::uint32_t* panel, std::int64_t c0,
                  const float* sw, const geometry& g, std::int64_t b0, std::int64_t b1, float* tot) {
  for (std::int64_t b = b0; b < b1; ++b) {
    const std::int64_t j0 = b * g.pblock, j1 = std::min(g.K2, j0 + g.pblock);
    const float s_a = sa[(b * g.pblock * 2) / ref::official::kActBlock];
    for (int n = 0; n < kPanel; ++n) {
      float p = 0.f;
      for (std::int64_t j = j0; j < j1; ++j) {
        const std::uint32_t a = xp[j], c = panel[(j - c0) * kPanel + n];
        p = p + bf16_value(a >> 16) * bf16_value(c >> 16);
        p = p + bf16_value(a & 0xFFFF) * bf16_value(c & 0xFFFF);
      }
      const float s_w = g.fp4 ? sw[b * kPanel + n] : sw[b];
      tot[n] = std::fma(p, s_a * s_w, tot[n]);
    }
  }
}

#if defined(__x86_64__)
#define DSV4_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))
#define DSV4_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
// Small helpers of the pack loops: always inlined (a call passes the 16 transposed vectors through memory).
#define DSV4_AVX512_INLINE inline __attribute__((always_inline, target("avx512f,avx512bw,avx512dq,avx512vl")))

bool has_bf16() {
  static const bool v = [] {
    const char* off = std::getenv("DSV4_CPU_NO_BF16");
    return __builtin_cpu_supports("avx512bf16") != 0 && __builtin_cpu_supports("avx512bw") != 0 &&
           !(off && *off && std::strcmp(off, "0") != 0);
  }();
  return v;
}
bool has_avx512bw() {
  static const bool v = __builtin_cpu_supports("avx512bw") != 0 && __builtin_cpu_supports("avx512dq") != 0;
  return v;
}

// Blocks [b0, b1) of R token rows against the panel chunk that starts at pair `c0`; tot[r] (32 floats) carries the
// promoted accumulators between chunks (stored and reloaded exactly: the sequence of operations is unchanged).
template <int R>
DSV4_BF16_TARGET void tile_bf16(const std::uint32_t* const* xp, const float* const* sa, const std::uint32_t* panel,
                                std::int64_t c0, const float* sw, const geometry& g, std::int64_t b0, std::int64_t b1,
                                float* const* tot_io) {
  __m512 tot[R][2];
  for (int r = 0; r < R; ++r) {
    tot[r][0] = _mm512_loadu_ps(tot_io[r]);
    tot[r][1] = _mm512_loadu_ps(tot_io[r] + 16);
  }
  for (std::int64_t b = b0; b < b1; ++b) {
    const std::int64_t j0 = b * g.pblock, j1 = std::min(g.K2, j0 + g.pblock);
    __m512 part[R][2];
    for (int r = 0; r < R; ++r) part[r][0] = part[r][1] = _mm512_setzero_ps();
    const std::uint32_t* pw = panel + (j0 - c0) * kPanel;
    for (std::int64_t j = j0; j < j1; ++j, pw += kPanel) {
      const __m512bh w0 = (__m512bh)_mm512_load_si512(pw), w1 = (__m512bh)_mm512_load_si512(pw + 16);
      for (int r = 0; r < R; ++r) {
        const __m512bh xb = (__m512bh)_mm512_set1_epi32(static_cast<int>(xp[r][j]));
        part[r][0] = _mm512_dpbf16_ps(part[r][0], xb, w0);
        part[r][1] = _mm512_dpbf16_ps(part[r][1], xb, w1);
      }
    }
    __m512 s0, s1;
    if (g.fp4) {
      s0 = _mm512_loadu_ps(sw + b * kPanel);
      s1 = _mm512_loadu_ps(sw + b * kPanel + 16);
    } else {
      s0 = s1 = _mm512_set1_ps(sw[b]);
    }
    const std::int64_t ab = (j0 * 2) / ref::official::kActBlock;
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(sa[r][ab]);
      tot[r][0] = _mm512_fmadd_ps(part[r][0], _mm512_mul_ps(a, s0), tot[r][0]);
      tot[r][1] = _mm512_fmadd_ps(part[r][1], _mm512_mul_ps(a, s1), tot[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(tot_io[r], tot[r][0]);
    _mm512_storeu_ps(tot_io[r] + 16, tot[r][1]);
  }
}

// One token against V vectors of 16 rows (V / 2 panels of the prefill layout), blocks [b0, b1) of the chunk at pair
// c0: the decode GEMV. A lane computes what tile_bf16's lane computes for that row (same pairs, same order, same
// promotion), so decode rows are bitwise the prefill rows; V = 12 independent chains hide the dot's latency, which a
// single token's one chain per 16 rows cannot.
template <int V>
DSV4_BF16_TARGET void gemv_bf16(const std::uint32_t* xp, const float* sa, const std::uint32_t* const* panels,
                                std::int64_t c0, const float* const* sws, const geometry& g, std::int64_t b0,
                                std::int64_t b1, float* tot_io) {
  __m512 tot[V], part[V];
#pragma GCC unroll 12
  for (int v = 0; v < V; ++v) tot[v] = _mm512_loadu_ps(tot_io + 16 * v);
  for (std::int64_t b = b0; b < b1; ++b) {
    const std::int64_t j0 = b * g.pblock, j1 = std::min(g.K2, j0 + g.pblock);
#pragma GCC unroll 12
    for (int v = 0; v < V; ++v) part[v] = _mm512_setzero_ps();
    for (std::int64_t j = j0; j < j1; ++j) {
      const __m512bh xb = (__m512bh)_mm512_set1_epi32(static_cast<int>(xp[j]));
#pragma GCC unroll 12
      for (int v = 0; v < V; ++v)
        part[v] = _mm512_dpbf16_ps(part[v], xb,
                                   (__m512bh)_mm512_load_si512(panels[v / 2] + (j - c0) * kPanel + (v % 2) * 16));
    }
    const __m512 a = _mm512_set1_ps(sa[(j0 * 2) / ref::official::kActBlock]);
#pragma GCC unroll 12
    for (int v = 0; v < V; ++v) {
      const __m512 sv = g.fp4 ? _mm512_loadu_ps(sws[v / 2] + b * kPanel + (v % 2) * 16) : _mm512_set1_ps(sws[v / 2][b]);
      tot[v] = _mm512_fmadd_ps(part[v], _mm512_mul_ps(a, sv), tot[v]);
    }
  }
#pragma GCC unroll 12
  for (int v = 0; v < V; ++v) _mm512_storeu_ps(tot_io + 16 * v, tot[v]);
}

// 16 x 16 dword transpose: in[i] holds row i's 16 dwords; out[j] gets dword j of every row.
DSV4_AVX512_INLINE void transpose16(__m512i* v) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    v[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    v[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    v[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    v[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // v[4a + c] now holds, in each 128-bit lane L, dwords 4L .. 4L+3 of column c' of rows 4a .. 4a+3 (c' = the c-th of
  // the orders 0, 1, 2, 3 → columns 0, 1, 2, 3 inside each group of four).
  for (int i = 0; i < 4; ++i) {
    // gather 128-bit lanes: rows 0-3 / 4-7 / 8-11 / 12-15 for column group i
    const __m512i a = _mm512_shuffle_i32x4(v[i], v[4 + i], 0x88), b = _mm512_shuffle_i32x4(v[8 + i], v[12 + i], 0x88);
    const __m512i c = _mm512_shuffle_i32x4(v[i], v[4 + i], 0xDD), d = _mm512_shuffle_i32x4(v[8 + i], v[12 + i], 0xDD);
    t[i] = _mm512_shuffle_i32x4(a, b, 0x88);
    t[8 + i] = _mm512_shuffle_i32x4(a, b, 0xDD);
    t[4 + i] = _mm512_shuffle_i32x4(c, d, 0x88);
    t[12 + i] = _mm512_shuffle_i32x4(c, d, 0xDD);
  }
  for (int i = 0; i < 16; ++i) v[i] = t[i];
}

// 16 kpairs (32 codes) of one weight row as BF16 pair dwords.
DSV4_AVX512_INLINE __m512i pairs_fp8(const std::uint8_t* codes) {
  const __m512i c = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes)));
  const __m512i mag = _mm512_and_si512(c, _mm512_set1_epi16(0x7F));
  const __m512i normal = _mm512_add_epi16(_mm512_slli_epi16(mag, 4), _mm512_set1_epi16(0x3C00));  // (e+120)<<7 | m<<4
  alignas(64) static std::uint16_t sub[32];
  static const bool init = [] {
    for (int m = 0; m < 32; ++m) sub[m] = bf16_bits(static_cast<float>(m & 7) * 0.001953125f);  // m · 2^-9
    return true;
  }();
  (void)init;
  const __m512i subv = _mm512_permutexvar_epi16(mag, _mm512_load_si512(sub));  // index m (exponent 0 there)
  const __mmask32 is_sub = _mm512_testn_epi16_mask(mag, _mm512_set1_epi16(0x78));
  __m512i v = _mm512_mask_blend_epi16(is_sub, normal, subv);
  v = _mm512_or_si512(v, _mm512_slli_epi16(_mm512_and_si512(c, _mm512_set1_epi16(0x80)), 8));
  return v;  // word 2j = code 2j, word 2j+1 = code 2j+1: dword j is the pair
}

DSV4_AVX512_TARGET void store_pairs_fp8(const std::uint8_t* codes, std::uint32_t* out) {
  _mm512_storeu_si512(out, pairs_fp8(codes));
}

// The dwords of a and b interleaved in order: lo = a0 b0 a1 b1 .. a7 b7, hi = a8 b8 .. a15 b15 (unpack works within
// 128-bit lanes; the 64-bit permutes put the lanes back in order).
DSV4_AVX512_INLINE void interleave32(__m512i a, __m512i b, __m512i& lo, __m512i& hi) {
  const __m512i l = _mm512_unpacklo_epi32(a, b), h = _mm512_unpackhi_epi32(a, b);
  lo = _mm512_permutex2var_epi64(l, _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), h);
  hi = _mm512_permutex2var_epi64(l, _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15), h);
}

// tab: the 16 BF16 bits of the E2M1 codes as dwords (fp4_table(), loaded once by the caller: a load of tables()
// inside the loop kept a static-guard test in it).
DSV4_AVX512_INLINE __m512i fp4_table() { return _mm512_loadu_si512(tables().e2m1); }
DSV4_AVX512_INLINE __m512i pairs_fp4(const std::uint8_t* bytes, __m512i tab) {
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)));
  const __m512i lo = _mm512_permutexvar_epi32(_mm512_and_si512(b, _mm512_set1_epi32(0xF)), tab);
  const __m512i hi = _mm512_permutexvar_epi32(_mm512_srli_epi32(b, 4), tab);
  return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
}

// Rows [n0, n0 + 16) ∩ [0, N) of W into panel columns [col, col + 16) for pairs [c0, c1) (c0 a multiple of 16),
// 16 pairs at a time; panel row 0 is pair c0.
DSV4_AVX512_TARGET void pack16_avx512(const ref::weight_ref& w, std::int64_t n0, std::int64_t c0, std::int64_t c1,
                                      std::uint32_t* panel, int col) {
  const std::int64_t full = std::min(c1, (w.k / 32) * 16);  // pairs covered by whole 32-code groups
  const __m512i tab4 = fp4_table();
  __m512i v[16];
  for (std::int64_t j0 = c0; j0 < full; j0 += 16) {
    for (int i = 0; i < 16; ++i) {
      const std::int64_t n = n0 + i;
      if (n >= w.n) {
        v[i] = _mm512_setzero_si512();
        continue;
      }
      v[i] = w.fmt == ref::wfmt::fp4_b32 ? pairs_fp4(reinterpret_cast<const std::uint8_t*>(&w.f4(n, j0)), tab4)
                                         : pairs_fp8(reinterpret_cast<const std::uint8_t*>(&w.f8(n, 2 * j0)));
    }
    transpose16(v);
    for (int j = 0; j < 16; ++j) _mm512_store_si512(panel + (j0 - c0 + j) * kPanel + col, v[j]);
  }
  // tail pairs (FP8 with K not a multiple of 32)
  for (std::int64_t j = std::max(c0, full); j < c1; ++j)
    for (int i = 0; i < 16; ++i) panel[(j - c0) * kPanel + col + i] = weight_pair(w, n0 + i, j);
}

// ---- token lanes (small T: MoE experts, decode) --------------------------------------------------------------------
// The transpose of the panel scheme for few tokens: a vector holds 8 tokens x 2 weight rows (lane 2t + s = token t,
// row 2p + s), x pairs duplicated per token ([K2][16] per group of 8 tokens) and one 64-bit broadcast bringing the
// pair of rows (2p, 2p+1). Each lane computes exactly what the panel kernel's lane computes for that (token, row):
// the same pairs in the same order, products commuting, so both schemes give the same bits and the choice by T keeps
// batch invariance. Weights are decoded a chunk of a row pair at a time (rows read sequentially, no transpose).
constexpr std::int64_t kChunkTL = 512;  // pairs of each row decoded at once
// Dwords between row pairs in the decode buffer: 2·512 + 16, not 1024. With a 4 KiB stride the 24 row pairs of a
// step all map to one L1 set (12 ways) and every broadcast misses: 2.6 instead of 7.9 dp/ns in a micro-benchmark.
constexpr std::int64_t kStrideTL = 2 * kChunkTL + 16;
constexpr int kMaxChainsTL = 15;  // P·G of a tile: its partial and total accumulators take 30 of the 32 registers
constexpr int kMaxPairsTL = 14;   // P of the 8-token tile (the most row pairs of any tile: the decode buffer's size)

// Pairs [c0, c1) of rows n0 + 2p + s (p < P, s < 2; rows >= N decode as zeros) interleaved by row pair:
// wb[p · kStrideTL + (j − c0) · 2 + s]. c0 is a multiple of 16.
DSV4_AVX512_TARGET void decode_row_pairs(const ref::weight_ref& w, std::int64_t n0, int P, std::int64_t c0,
                                         std::int64_t c1, std::uint32_t* wb) {
  const __m512i tab4 = fp4_table();
  alignas(64) std::uint32_t tmp[2][kChunkTL];  // one row pair's chunk before interleaving
  for (int p = 0; p < P; ++p) {
    for (int sr = 0; sr < 2; ++sr) {
      const std::int64_t n = n0 + 2 * p + sr;
      std::uint32_t* out = tmp[sr] - c0;
      std::int64_t j = c0;
      if (n >= w.n) {
        std::fill(tmp[sr], tmp[sr] + (c1 - c0), 0u);
        continue;
      }
      if (w.fmt == ref::wfmt::fp4_b32) {
        const auto* row = reinterpret_cast<const std::uint8_t*>(&w.f4(n, 0));
        for (; j + 16 <= c1; j += 16) _mm512_store_si512(out + j, pairs_fp4(row + j, tab4));
      } else {
        const auto* row = reinterpret_cast<const std::uint8_t*>(&w.f8(n, 0));
        for (; j + 16 <= c1 && 2 * j + 32 <= w.k; j += 16) _mm512_store_si512(out + j, pairs_fp8(row + 2 * j));
        for (; j < c1; ++j) out[j] = fp8_pair(row, j, w.k);
      }
    }
    std::uint32_t* dst = wb + p * kStrideTL;
    std::int64_t j = 0;
    const std::int64_t n = c1 - c0;
    for (; j + 16 <= n; j += 16) {  // interleave the two rows' dwords
      __m512i o0, o1;
      interleave32(_mm512_load_si512(tmp[0] + j), _mm512_load_si512(tmp[1] + j), o0, o1);
      _mm512_storeu_si512(dst + 2 * j, o0);
      _mm512_storeu_si512(dst + 2 * j + 16, o1);
    }
    for (; j < n; ++j) {
      dst[2 * j] = tmp[0][j];
      dst[2 * j + 1] = tmp[1][j];
    }
  }
}

// 16 UE8M0 bytes as their float values: byte << 23 (exact for 1 .. 254), 0 -> 2^-127 (the subnormal ue8m0 gives);
// 0xFF (NaN) never reaches here (count_bad skips those rows).
DSV4_AVX512_INLINE __m512 scale_floats(const ue8m0* s) {
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
  const __m512i v = _mm512_slli_epi32(b, 23);
  return _mm512_castsi512_ps(_mm512_mask_mov_epi32(v, _mm512_cmpeq_epi32_mask(b, _mm512_setzero_si512()),
                                                   _mm512_set1_epi32(0x00400000)));
}

// Rows [n0, n0 + 2P) for G groups of 8 tokens: xt [G][K2][16] (duplicated pairs), sat [G][nb_a][16], out [P][G][16].
template <int P, int G>
DSV4_BF16_TARGET void tile_tl(const std::uint32_t* xt, const float* sat, std::int64_t nb_a, const ref::weight_ref& w,
                              std::int64_t n0, const geometry& g, std::uint32_t* wb, float* out) {
  // P·G partial accumulators (independent dot chains) and the promoted totals all stay in registers: 14-15 chains
  // keep the dot units busy, and the per-block promotion then costs no memory round trip (measured: the V4-Flash MoE
  // at T = 512 1.27x -> 1.35x the fp32 policy, against 24 chains with the totals in memory).
  static_assert(P * G <= kMaxChainsTL, "P·G partial + P·G total accumulators must fit the 32 vector registers");
  __m512 part[P][G], tot[P][G];
#pragma GCC unroll 24
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int q = 0; q < G; ++q) tot[p][q] = _mm512_setzero_ps();
  const std::int64_t chunk_blocks = kChunkTL / g.pblock, xs = g.K2 * 16;
  // The scales of each row pair for the chunk's blocks, as the (row 2p, row 2p+1) float pair one broadcast reads.
  const float* lut = scale_lut();
  const ue8m0* srow[2 * P];
  for (int r = 0; r < 2 * P; ++r) {
    const std::int64_t n = std::min(n0 + r, w.n - 1);  // rows past N: any valid row (their weights decode to 0)
    srow[r] = g.fp4 ? &w.scale(n, 0) : &w.scale(n / ref::kFp8WeightTile, 0);
  }
  alignas(64) float swp[P][kChunkTL / 16][2];  // [row pair][block of the chunk][row]; 16 = the smallest pblock
  for (std::int64_t cb = 0; cb < g.nblocks; cb += chunk_blocks) {
    const std::int64_t c0 = cb * g.pblock, c1 = std::min(g.K2, (cb + chunk_blocks) * g.pblock);
    decode_row_pairs(w, n0, P, c0, c1, wb);
    const std::int64_t nbc = std::min(g.nblocks, cb + chunk_blocks) - cb;
    for (int p = 0; p < P; ++p) {
      const bool ra = n0 + 2 * p < w.n, rb = n0 + 2 * p + 1 < w.n;
      std::int64_t b = 0;
      if (w.scale.stride[1] == 1 && ra && rb)  // 16 blocks at a time: bytes -> floats (exact, see scale_floats)
        for (; b + 16 <= nbc; b += 16) {
          __m512i lo, hi;  // (row a, row b) float pairs in block order
          interleave32(_mm512_castps_si512(scale_floats(&srow[2 * p][cb + b])),
                       _mm512_castps_si512(scale_floats(&srow[2 * p + 1][cb + b])), lo, hi);
          _mm512_store_si512(&swp[p][b][0], lo);
          _mm512_store_si512(&swp[p][b + 8][0], hi);
        }
      for (; b < nbc; ++b) {
        swp[p][b][0] = ra ? lut[srow[2 * p][(cb + b) * w.scale.stride[1]].bits] : 0.f;
        swp[p][b][1] = rb ? lut[srow[2 * p + 1][(cb + b) * w.scale.stride[1]].bits] : 0.f;
      }
    }
    // Prefetch the next chunk of these rows while this one computes (2P short sequential streams, which the hardware
    // prefetchers pick up too late); on the last chunk, the first chunk of the next row group instead (a task's groups
    // are consecutive: without it a group's first decode waited on DRAM for every row, a fifth of the kernel's time in
    // the V4 MoE). The lines are spread over the chunk's blocks, a few per block: issued in one burst, most of them
    // were dropped with the miss buffers full.
    const bool last_chunk = c1 >= g.K2;
    const std::int64_t pn0 = last_chunk ? n0 + 2 * P : n0, pc = last_chunk ? 0 : c1;
    const std::int64_t pf_rows = std::max<std::int64_t>(0, std::min<std::int64_t>(2 * P, w.n - pn0));
    const std::int64_t pf_bytes = std::max<std::int64_t>(
        0, std::min<std::int64_t>(g.fp4 ? kChunkTL : 2 * kChunkTL, g.fp4 ? g.K2 - pc : w.k - 2 * pc));
    const std::int64_t pf_lines = (pf_bytes + 63) / 64, pf_total = pf_rows * pf_lines;
    const std::int64_t pf_per_block = (pf_total + nbc - 1) / std::max<std::int64_t>(nbc, 1);
    std::int64_t pf = 0;
    auto prefetch_some = [&] {
      for (std::int64_t i = 0; i < pf_per_block && pf < pf_total; ++i, ++pf) {
        const std::int64_t r = pf / pf_lines, l = pf % pf_lines;
        const auto* row = g.fp4 ? reinterpret_cast<const char*>(&w.f4(pn0 + r, 0)) + pc
                                : reinterpret_cast<const char*>(&w.f8(pn0 + r, 0)) + 2 * pc;
        _mm_prefetch(row + 64 * l, _MM_HINT_T0);
      }
    };
    for (std::int64_t b = cb; b < cb + nbc; ++b) {
      const std::int64_t j0 = b * g.pblock, j1 = std::min(g.K2, j0 + g.pblock);
      prefetch_some();
      // Every loop over p and q is unrolled so that part[][] lives in registers (otherwise GCC keeps the array on
      // the stack and each dp waits on a store-to-load round trip).
#pragma GCC unroll 24
      for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
        for (int q = 0; q < G; ++q) part[p][q] = _mm512_setzero_ps();
      for (std::int64_t j = j0; j < j1; ++j) {
        __m512bh xv[G];
#pragma GCC unroll 4
        for (int q = 0; q < G; ++q) xv[q] = (__m512bh)_mm512_loadu_si512(xt + q * xs + j * 16);
        const std::uint32_t* wj = wb + (j - c0) * 2;
#pragma GCC unroll 24
        for (int p = 0; p < P; ++p) {
          long long pair;
          std::memcpy(&pair, wj + p * kStrideTL, 8);
          const __m512bh wv = (__m512bh)_mm512_set1_epi64(pair);
#pragma GCC unroll 4
          for (int q = 0; q < G; ++q) part[p][q] = _mm512_dpbf16_ps(part[p][q], xv[q], wv);
        }
      }
      const std::int64_t ab = (j0 * 2) / ref::official::kActBlock;
#pragma GCC unroll 24
      for (int p = 0; p < P; ++p) {
        long long pair;
        std::memcpy(&pair, swp[p][b - cb], 8);
        const __m512 swv = _mm512_castsi512_ps(_mm512_set1_epi64(pair));
#pragma GCC unroll 4
        for (int q = 0; q < G; ++q) {
          const __m512 s = _mm512_mul_ps(_mm512_loadu_ps(sat + (q * nb_a + ab) * 16), swv);  // sa_t · sw_n
          tot[p][q] = _mm512_fmadd_ps(part[p][q], s, tot[p][q]);
        }
      }
    }
  }
#pragma GCC unroll 24
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int q = 0; q < G; ++q) _mm512_storeu_ps(out + (p * G + q) * 16, tot[p][q]);
}

// xt [G][K2][16] from x pairs xq [T][K2]: lane 2t + s of group q = token 8q + t (zero past T), 16 pairs at a time
// through the 16 x 16 transpose (rows 8..15 zero), then each token's dword duplicated into its two lanes.
DSV4_AVX512_TARGET void build_token_lanes(const std::uint32_t* xq, std::int64_t T, std::int64_t K2, std::uint32_t* xt) {
  const std::int64_t G = (T + 7) / 8;
  const __m512i dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  for (std::int64_t q = 0; q < G; ++q) {
    std::uint32_t* out = xt + q * K2 * 16;
    std::int64_t j = 0;
    for (; j + 16 <= K2; j += 16) {
      __m512i v[16];
      for (int t = 0; t < 16; ++t)
        v[t] = t < 8 && q * 8 + t < T ? _mm512_loadu_si512(xq + (q * 8 + t) * K2 + j) : _mm512_setzero_si512();
      transpose16(v);
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(out + (j + i) * 16, _mm512_permutexvar_epi32(dup, v[i]));
    }
    for (; j < K2; ++j)
      for (int l = 0; l < 16; ++l) {
        const std::int64_t t = q * 8 + l / 2;
        out[j * 16 + l] = t < T ? xq[t * K2 + j] : 0u;
      }
  }
}

// NaN codes among FP8 bytes [p, p + n).
DSV4_AVX512_TARGET std::int64_t count_nan_fp8(const std::uint8_t* p, std::int64_t n) {
  std::int64_t bad = 0, i = 0;
  const __m512i m = _mm512_set1_epi8(0x7F);
  for (; i + 64 <= n; i += 64)
    bad += __builtin_popcountll(_mm512_cmpeq_epi8_mask(_mm512_and_si512(_mm512_loadu_si512(p + i), m), m));
  for (; i < n; ++i) bad += (p[i] & 0x7F) == 0x7F;
  return bad;
}
#else
bool has_bf16() { return false; }
bool has_avx512bw() { return false; }
#endif

void pack16_portable(const ref::weight_ref& w, std::int64_t n0, std::int64_t c0, std::int64_t c1, std::uint32_t* panel,
                     int col) {
  for (int i = 0; i < 16; ++i)
    for (std::int64_t j = c0; j < c1; ++j) panel[(j - c0) * kPanel + col + i] = weight_pair(w, n0 + i, j);
}

// NaN weights of rows [n0, n1) (ref::official::decode_codes' count).
std::int64_t count_bad(const ref::weight_ref& w, std::int64_t n0, std::int64_t n1) {
  std::int64_t bad = 0;
  for (std::int64_t n = n0; n < n1; ++n) {
    if (w.fmt == ref::wfmt::fp4_b32) {
      for (std::int64_t b = 0; b < w.k / ref::kFp4WeightBlock; ++b) bad += w.scale(n, b).bits == 0xFF ? ref::kFp4WeightBlock : 0;
    } else {
#if defined(__x86_64__)
      if (has_avx512bw()) {
        bad += count_nan_fp8(reinterpret_cast<const std::uint8_t*>(&w.f8(n, 0)), w.k);
      } else
#endif
        for (std::int64_t k = 0; k < w.k; ++k) bad += (w.f8(n, k).bits & 0x7F) == 0x7F;
      if (n % ref::kFp8WeightTile == 0 || n == n0)
        for (std::int64_t b = 0; b * ref::kFp8WeightTile < w.k; ++b) bad += w.scale(n / ref::kFp8WeightTile, b).bits == 0xFF;
    }
  }
  return bad;
}

// The weight scales of the panel of rows [n0, n0 + 32) as the kernels read them: FP4 [block][32 rows] (0 past N),
// FP8 [block] (the panel lies in one 128-row tile). Rows are read along their contiguous scale bytes.
void panel_scales(const ref::weight_ref& w, std::int64_t n0, const geometry& g, std::vector<float>& sw) {
  const float* lut = scale_lut();
  sw.assign(static_cast<std::size_t>(g.nblocks * (g.fp4 ? kPanel : 1)), 0.f);
  if (!g.fp4) {
    for (std::int64_t b = 0; b < g.nblocks; ++b)
      sw[static_cast<std::size_t>(b)] = lut[w.scale(n0 / ref::kFp8WeightTile, b).bits];
    return;
  }
  const std::int64_t st = w.scale.stride[1];
  for (std::int64_t n = n0; n < std::min(w.n, n0 + kPanel); ++n) {
    const ue8m0* row = &w.scale(n, 0);
    for (std::int64_t b = 0; b < g.nblocks; ++b) sw[static_cast<std::size_t>(b * kPanel + (n - n0))] = lut[row[b * st].bits];
  }
}

// Growable per-thread scratch (never shrinks, contents undefined on get).
template <class T>
struct scratch {
  std::vector<T> v;
  T* get(std::size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  }
};
struct aligned_u32 {
  std::uint32_t* p = nullptr;
  std::size_t n = 0;
  void need(std::size_t m) {
    if (m <= n) return;
    std::free(p);
    p = static_cast<std::uint32_t*>(std::aligned_alloc(64, (m * 4 + 63) / 64 * 64));
    n = m;
  }
  ~aligned_u32() { std::free(p); }
};

}  // namespace

bool official_bf16_dot() { return has_bf16(); }

std::int64_t linear_official_f32(const float* x, std::int64_t T, std::int64_t ldx, const ref::weight_ref& w, float* y,
                                 std::int64_t ldy, const exec& ex) {

  if (T <= 0 || w.n <= 0) return 0;
  const std::int64_t K = w.k, N = w.n;
  if (w.fmt == ref::wfmt::f32 || w.fmt == ref::wfmt::bf16) {
    // The BF16 GEMM: x rounded to BF16, the fp32 policy's dot (fixed order), the output rounded to BF16.
    std::vector<float> xr(static_cast<std::size_t>(T * K));
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t k = 0; k < K; ++k) xr[static_cast<std::size_t>(t * K + k)] = round_bf16(x[t * ldx + k]);
    const std::int64_t bad = linear_f32(xr.data(), T, K, w, y, ldy, ex);
    for (std::int64_t t = 0; t < T; ++t) round_bf16(y + t * ldy, N);
    return bad;
  }
  geometry g;
  g.fp4 = w.fmt == ref::wfmt::fp4_b32;
  g.K2 = (K + 1) / 2;
  g.pblock = (g.fp4 ? ref::kFp4WeightBlock : ref::kFp8WeightTile) / 2;
  g.nblocks = (g.K2 + g.pblock - 1) / g.pblock;
  const std::int64_t nb_a = (K + ref::official::kActBlock - 1) / ref::official::kActBlock;
  // Q8 of every row: BF16 pairs [T][K2] and scales [T][nb_a]. Whole 128-blocks go through the SIMD block quantizer
  // (bitwise the reference's, src/cpu/quant.cpp) and the code -> BF16 decode of the weights; a ragged K through the
  // reference's scalar Q8.
  // Scratch kept per calling thread between calls: a fresh vector of a few hundred KiB is an mmap and its page faults
  // on every call (measured: a third of a 12-token expert's linear).
  thread_local scratch<std::uint32_t> xq_s, xt_s;
  thread_local scratch<float> sa_s, sat_s;
  thread_local scratch<fp8_e4m3> codes_s;
  thread_local scratch<ue8m0> sbytes_s;
  std::uint32_t* const xq = xq_s.get(static_cast<std::size_t>(T * g.K2));  // [T][K2]
  float* const sa = sa_s.get(static_cast<std::size_t>(T * nb_a));            // [T][nb_a]
  const bool simd = has_avx512bw(), dot = has_bf16();
  if (K % ref::official::kActBlock == 0) {
    fp8_e4m3* const codes = codes_s.get(static_cast<std::size_t>(T * K));
    ue8m0* const sbytes = sbytes_s.get(static_cast<std::size_t>(T * nb_a));
    view<const float, 2> xv{x, {T, K}, {ldx, 1}};
    block_quantize<float, fp8_e4m3>(xv, view<fp8_e4m3, 2>{codes, {T, K}, {K, 1}},
                                    view<ue8m0, 2>{sbytes, {T, nb_a}, {nb_a, 1}},
                                    static_cast<int>(ref::official::kActBlock), ex);
    for (std::size_t i = 0; i < static_cast<std::size_t>(T * nb_a); ++i) sa[i] = sbytes[i].to_float();
    detail::parallel_rows(T, 16, ex, [&](std::int64_t t0, std::int64_t t1) {
      for (std::int64_t t = t0; t < t1; ++t) {
        const auto* c = reinterpret_cast<const std::uint8_t*>(codes + t * K);
        std::uint32_t* out = xq + t * g.K2;
#if defined(__x86_64__)
        if (simd) {
          for (std::int64_t j = 0; j < g.K2; j += 16) store_pairs_fp8(c + 2 * j, out + j);
          continue;
        }
#endif
        for (std::int64_t j = 0; j < g.K2; ++j) out[j] = fp8_pair(c, j, K);
      }
    });
  } else {
    detail::parallel_rows(T, 8, ex, [&](std::int64_t t0, std::int64_t t1) {
      std::vector<float> q(static_cast<std::size_t>(g.K2 * 2), 0.f);
      for (std::int64_t t = t0; t < t1; ++t) {
        ref::official::act_quant_fp8(x + t * ldx, K, q.data(), sa + t * nb_a);
        for (std::int64_t j = 0; j < g.K2; ++j)
          xq[static_cast<std::size_t>(t * g.K2 + j)] = std::uint32_t{bf16_bits(q[static_cast<std::size_t>(2 * j)])} |
                                                       std::uint32_t{bf16_bits(q[static_cast<std::size_t>(2 * j + 1)])} << 16;
      }
    });
  }

#if defined(__x86_64__)
  // One token (a decode step of one sequence): rows in lanes, six prefill panels (192 rows) per task so that twelve
  // dot chains run side by side (the token-lane scheme would use one lane in eight here).
  if (dot && T == 1) {
    constexpr int kGroup = 6;  // panels per task
    const std::int64_t panels = (N + kPanel - 1) / kPanel, groups = (panels + kGroup - 1) / kGroup;
    const std::int64_t chunk_blocks = kChunkPairs / g.pblock;
    std::atomic<std::int64_t> bad_gv{0};
    detail::parallel_rows(groups, 1, ex, [&](std::int64_t q0, std::int64_t q1) {
      thread_local aligned_u32 buf[kGroup];
      thread_local std::vector<float> swb[kGroup];
      alignas(64) float tot[kGroup * kPanel];
      for (std::int64_t q = q0; q < q1; ++q) {
        const std::int64_t p0 = q * kGroup, np = std::min<std::int64_t>(kGroup, panels - p0);
        const std::uint32_t* pan[kGroup];
        const float* sws[kGroup];
        bool skip = false;
        for (std::int64_t i = 0; i < np; ++i) {
          const std::int64_t n0 = (p0 + i) * kPanel, n1 = std::min(N, n0 + kPanel);
          if (const std::int64_t b = count_bad(w, n0, n1)) {
            bad_gv += b;
            skip = true;
          }
          buf[i].need(static_cast<std::size_t>(kChunkPairs * kPanel));
          auto& sw = swb[i];
          panel_scales(w, n0, g, sw);
          pan[i] = buf[i].p;
          sws[i] = sw.data();
        }
        if (skip) continue;
        std::fill(tot, tot + kGroup * kPanel, 0.f);
        for (std::int64_t b0 = 0; b0 < g.nblocks; b0 += chunk_blocks) {
          const std::int64_t b1 = std::min(g.nblocks, b0 + chunk_blocks);
          const std::int64_t c0 = b0 * g.pblock, c1 = std::min(g.K2, b1 * g.pblock);
          for (std::int64_t i = 0; i < np; ++i)
            for (int half = 0; half < 2; ++half)
              pack16_avx512(w, (p0 + i) * kPanel + 16 * half, c0, c1, buf[i].p, 16 * half);
          switch (np) {
            case 1: gemv_bf16<2>(xq, sa, pan, c0, sws, g, b0, b1, tot); break;
            case 2: gemv_bf16<4>(xq, sa, pan, c0, sws, g, b0, b1, tot); break;
            case 3: gemv_bf16<6>(xq, sa, pan, c0, sws, g, b0, b1, tot); break;
            case 4: gemv_bf16<8>(xq, sa, pan, c0, sws, g, b0, b1, tot); break;
            case 5: gemv_bf16<10>(xq, sa, pan, c0, sws, g, b0, b1, tot); break;
            default: gemv_bf16<12>(xq, sa, pan, c0, sws, g, b0, b1, tot); break;
          }
        }
        for (std::int64_t n = p0 * kPanel; n < std::min(N, (p0 + np) * kPanel); ++n)
          y[n] = round_bf16(tot[n - p0 * kPanel]);
      }
    });
    return bad_gv.load();
  }
  // Few tokens (T <= 32: a MoE expert's share of a prefill, a decode step): token lanes, no panel packing.
  if (dot && T <= 32) {
    const int G = static_cast<int>((T + 7) / 8);
    const int P = G == 1 ? kMaxPairsTL : G == 2 ? 7 : G == 3 ? 5 : 3;  // P·G <= kMaxChainsTL
    std::uint32_t* const xt = xt_s.get(static_cast<std::size_t>(G * g.K2 * 16));  // [G][K2][16]
    float* const sat = sat_s.get(static_cast<std::size_t>(G * nb_a * 16));        // [G][nb_a][16]
    std::fill(sat, sat + G * nb_a * 16, 0.f);
    build_token_lanes(xq, T, g.K2, xt);
    for (std::int64_t t = 0; t < T; ++t) {
      const std::int64_t q = t / 8, l = 2 * (t % 8);
      for (std::int64_t ab = 0; ab < nb_a; ++ab)
        sat[static_cast<std::size_t>((q * nb_a + ab) * 16 + l)] = sat[static_cast<std::size_t>((q * nb_a + ab) * 16 + l + 1)] =
            sa[static_cast<std::size_t>(t * nb_a + ab)];
    }
    const std::int64_t rows = 2 * P, groups = (N + rows - 1) / rows;
    std::atomic<std::int64_t> bad_tl{0};
    detail::parallel_rows(groups, 1, ex, [&](std::int64_t q0, std::int64_t q1) {
      thread_local std::vector<std::uint32_t> wb;
      wb.resize(static_cast<std::size_t>(kMaxPairsTL * kStrideTL));
      alignas(64) float out[kMaxChainsTL * 16];
      for (std::int64_t qq = q0; qq < q1; ++qq) {
        const std::int64_t n0 = qq * rows, n1 = std::min(N, n0 + rows);
        if (const std::int64_t b = count_bad(w, n0, n1)) {
          bad_tl += b;
          continue;
        }
        switch (G) {
          case 1: tile_tl<kMaxPairsTL, 1>(xt, sat, nb_a, w, n0, g, wb.data(), out); break;
          case 2: tile_tl<7, 2>(xt, sat, nb_a, w, n0, g, wb.data(), out); break;
          case 3: tile_tl<5, 3>(xt, sat, nb_a, w, n0, g, wb.data(), out); break;
          default: tile_tl<3, 4>(xt, sat, nb_a, w, n0, g, wb.data(), out); break;
        }
        for (std::int64_t n = n0; n < n1; ++n) {
          const std::int64_t p = (n - n0) / 2, sr = (n - n0) % 2;
          for (std::int64_t t = 0; t < T; ++t)
            y[t * ldy + n] = round_bf16(out[(p * G + t / 8) * 16 + 2 * (t % 8) + sr]);
        }
      }
    });
    return bad_tl.load();
  }
#endif
  const std::int64_t panels = (N + kPanel - 1) / kPanel;
  std::atomic<std::int64_t> bad{0};
  const std::int64_t chunk_blocks = kChunkPairs / g.pblock;
  detail::parallel_rows(panels, 1, ex, [&](std::int64_t p0, std::int64_t p1) {
    thread_local aligned_u32 panel;
    thread_local std::vector<float> sw, acc;
    panel.need(static_cast<std::size_t>(kChunkPairs * kPanel));
    acc.resize(static_cast<std::size_t>(T * kPanel));
    for (std::int64_t p = p0; p < p1; ++p) {
      const std::int64_t n0 = p * kPanel, n1 = std::min(N, n0 + kPanel);
      const std::int64_t my_bad = count_bad(w, n0, n1);
      if (my_bad) {
        bad += my_bad;
        continue;
      }
      panel_scales(w, n0, g, sw);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (std::int64_t b0 = 0; b0 < g.nblocks; b0 += chunk_blocks) {
        const std::int64_t b1 = std::min(g.nblocks, b0 + chunk_blocks);
        const std::int64_t c0 = b0 * g.pblock, c1 = std::min(g.K2, b1 * g.pblock);
        for (int half = 0; half < 2; ++half) {
#if defined(__x86_64__)
          if (simd) {
            pack16_avx512(w, n0 + 16 * half, c0, c1, panel.p, 16 * half);
            continue;
          }
#endif
          pack16_portable(w, n0 + 16 * half, c0, c1, panel.p, 16 * half);
        }
        for (std::int64_t t0 = 0; t0 < T; t0 += kTileT) {
          const int R = static_cast<int>(std::min<std::int64_t>(kTileT, T - t0));
          const std::uint32_t* xr[kTileT];
          const float* sr[kTileT];
          float* out[kTileT];
          for (int r = 0; r < R; ++r) {
            xr[r] = xq + (t0 + r) * g.K2;
            sr[r] = sa + (t0 + r) * nb_a;
            out[r] = acc.data() + (t0 + r) * kPanel;
          }
          bool done = false;
#if defined(__x86_64__)
          if (dot) {
            done = true;
            switch (R) {
              case 1: tile_bf16<1>(xr, sr, panel.p, c0, sw.data(), g, b0, b1, out); break;
              case 2: tile_bf16<2>(xr, sr, panel.p, c0, sw.data(), g, b0, b1, out); break;
              case 3: tile_bf16<3>(xr, sr, panel.p, c0, sw.data(), g, b0, b1, out); break;
              case 4: tile_bf16<4>(xr, sr, panel.p, c0, sw.data(), g, b0, b1, out); break;
              case 5: tile_bf16<5>(xr, sr, panel.p, c0, sw.data(), g, b0, b1, out); break;
              default: tile_bf16<6>(xr, sr, panel.p, c0, sw.data(), g, b0, b1, out); break;
            }
          }
#endif
          if (!done)
            for (int r = 0; r < R; ++r) row_portable(xr[r], sr[r], panel.p, c0, sw.data(), g, b0, b1, out[r]);
        }
      }
      for (std::int64_t t = 0; t < T; ++t)
        for (std::int64_t n = n0; n < n1; ++n) y[t * ldy + n] = round_bf16(acc[static_cast<std::size_t>(t * kPanel + (n - n0))]);
    }
  });
  return bad.load();
}

template <class TX, class TY>
std::int64_t linear_official(view<const TX, 2> x, const ref::weight_ref& w, view<TY, 2> y, const exec& ex) {
  return detail::on_f32_rows(x, w.k, y, w.n, [&](const float* xp, std::int64_t T, std::int64_t ldx, float* yp,
                                                 std::int64_t ldy) { return linear_official_f32(xp, T, ldx, w, yp, ldy, ex); });
}

template std::int64_t linear_official<float, float>(view<const float, 2>, const ref::weight_ref&, view<float, 2>, const exec&);
template std::int64_t linear_official<float, bf16>(view<const float, 2>, const ref::weight_ref&, view<bf16, 2>, const exec&);
template std::int64_t linear_official<bf16, float>(view<const bf16, 2>, const ref::weight_ref&, view<float, 2>, const exec&);
template std::int64_t linear_official<bf16, bf16>(view<const bf16, 2>, const ref::weight_ref&, view<bf16, 2>, const exec&);

}  // namespace dsv4::cpu
