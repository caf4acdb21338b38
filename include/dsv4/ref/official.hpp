// dsv4/ref/official.hpp — scalar reference of the `official` numerics policy's own ops (dsv4/numerics.hpp): the
// rounding points of DeepSeek's V4 inference code, one function per point, each citing the study that lists them
// (../shared/spec/official-numerics.md, "§1 A6" = section 1, row A6; model.py / kernel.py lines are cited there).
//
// Conventions: a BF16 activation is an fp32 value that is exactly BF16 (round_bf16). Where the official code leaves
// an order open (tensor-core accumulation inside a K block, cuBLAS reductions), the reference takes the exact value
// rounded once, so it is the limit every order approximates; the CPU backend's orders are written next to it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "dsv4/formats.hpp"
#include "dsv4/numerics.hpp"
#include "dsv4/ref/flops.hpp"
#include "dsv4/ref/indexer.hpp"
#include "dsv4/ref/linear.hpp"
#include "dsv4/ref/moe.hpp"
#include "dsv4/ref/quant.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::ref::official {

// ---- FP8 activation quantization, Q8(x, 128) (§0 "Q8", kernel.py act_quant) --------------------------------------
// Per block of 128 along K (the last block may be shorter): amax = max(max|x|, 1e-4), s = 2^ceil(log2(amax · f32(1/448)))
// (UE8M0), code = e4m3(clamp(x / s, ±448)) RNE. q gets the codes' values (exact in BF16: 4 significant bits), s one
// power of two per block. Returns false when the row holds a non-finite value.
inline constexpr std::int64_t kActBlock = 128;

inline bool act_quant_fp8(const float* x, std::int64_t K, float* q, float* s) noexcept {
  bool ok = true;
  for (std::int64_t k0 = 0, b = 0; k0 < K; k0 += kActBlock, ++b) {
    const int n = static_cast<int>(std::min(kActBlock, K - k0));
    const std::uint8_t sb = detail::quantize_block<fp8_e4m3>(
        n, [&](int i) { return x[k0 + i]; }, [&](int i, fp8_e4m3 c, float) { q[k0 + i] = c.to_float(); }, ok);
    s[b] = ue8m0{sb}.to_float();
  }
  return ok;
}

// ---- FP8 / FP4 GEMM with per-block promotion (§1 A6, X1; kernel.py fp8_gemm, fp4_gemm) ------------------------------
// y[t, n] = bf16(acc) with, for the K blocks b of the weight format in increasing k (128 for FP8 tiles, 32 for FP4):
//   P_b = Σ_{k in b} q[t, k] · code(W[n, k])     exact (products of 4-bit by 4-bit significands: a block of 128 spans
//                                               < 2^49 units of 2^-18, exact in double), rounded once to fp32;
//   acc = fma(P_b, sa[t, k / 128] · sw[n, b], acc)   (sa · sw is a power of two; fp32, one rounding per block).
// The official tensor cores sum a block in an undocumented order; the exact sum is the value they approximate.
// Weight codes are the raw E4M3 / E2M1 values; sw the tile's (FP8: [n/128, k/128]) or block's (FP4: [n, k/32]) scale.
inline std::int64_t weight_block(const weight_ref& w) { return w.fmt == wfmt::fp4_b32 ? kFp4WeightBlock : kFp8WeightTile; }

// Row n of W as unscaled code values into codes[0, K) and its scales into sw[0, K / block); returns NaN-code count.
inline std::int64_t decode_codes(const weight_ref& w, std::int64_t n, float* codes, float* sw) noexcept {
  std::int64_t bad = 0;
  if (w.fmt == wfmt::fp8_b128) {
    for (std::int64_t k = 0; k < w.k; ++k) {
      const fp8_e4m3 c = w.f8(n, k);
      bad += (c.bits & 0x7F) == 0x7F;
      codes[k] = c.to_float();
    }
    for (std::int64_t b = 0; b * kFp8WeightTile < w.k; ++b) {
      const ue8m0 s = w.scale(n / kFp8WeightTile, b);
      bad += s.bits == 0xFF;
      sw[b] = s.to_float();
    }
  } else {
    for (std::int64_t k = 0; k < w.k; k += 2) {
      const fp4x2 p = w.f4(n, k / 2);
      codes[k] = p.lo().to_float();
      codes[k + 1] = p.hi().to_float();
    }
    for (std::int64_t b = 0; b < w.k / kFp4WeightBlock; ++b) {
      const ue8m0 s = w.scale(n, b);
      bad += s.bits == 0xFF ? kFp4WeightBlock : 0;
      sw[b] = s.to_float();
    }
  }
  return bad;
}

// One output of the promoted GEMM from a quantized activation row (q, sa) and a decoded weight row (codes, sw).
inline float promoted_dot(const float* q, const float* sa, const float* codes, const float* sw, std::int64_t K,
                          std::int64_t block) noexcept {
  float acc = 0.f;
  for (std::int64_t k0 = 0, b = 0; k0 < K; k0 += block, ++b) {
    double p = 0;
    for (std::int64_t k = k0; k < std::min(K, k0 + block); ++k) p += double(q[k]) * codes[k];
    acc = std::fma(static_cast<float>(p), sa[k0 / kActBlock] * sw[b], acc);
  }
  return acc;
}

// y [T, N] = x [T, K] · W^T under `official`: FP8 / FP4 weights as above (lin8 / lin4 of §2); dense (BF16 / F32)
// weights as the BF16 GEMM of §1 S3 / I5: x rounded to BF16, the exact dot rounded to fp32 (cuBLAS accumulates in
// fp32), then to BF16. Returns how many weights were NaN (ref::decode_row's rule).
template <class TX, class TY>
std::int64_t linear(view<const TX, 2> x, const weight_ref& w, view<TY, 2> y) {
  const std::int64_t T = x.size(0), K = w.k;
  count_flops(static_cast<std::uint64_t>(2 * T * w.n * K));
  std::vector<float> xr(static_cast<std::size_t>(K));
  std::int64_t bad = 0;
  if (w.fmt == wfmt::f32 || w.fmt == wfmt::bf16) {
    std::vector<float> row(static_cast<std::size_t>(K));
    for (std::int64_t n = 0; n < w.n; ++n) {
      bad += decode_row(w, n, 0, K, row.data());
      for (std::int64_t t = 0; t < T; ++t) {
        double acc = 0;
        for (std::int64_t k = 0; k < K; ++k) acc += double(round_bf16(to_f32(x(t, k)))) * row[static_cast<std::size_t>(k)];
        y(t, n) = from_f32<TY>(round_bf16(static_cast<float>(acc)));
      }
    }
    return bad;
  }
  const std::int64_t block = weight_block(w), nb = (K + kActBlock - 1) / kActBlock;
  std::vector<float> q(static_cast<std::size_t>(T * K)), sa(static_cast<std::size_t>(T * nb));
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t k = 0; k < K; ++k) xr[static_cast<std::size_t>(k)] = to_f32(x(t, k));
    act_quant_fp8(xr.data(), K, q.data() + t * K, sa.data() + t * nb);
  }
  std::vector<float> codes(static_cast<std::size_t>(K)), sw(static_cast<std::size_t>((K + block - 1) / block));
  for (std::int64_t n = 0; n < w.n; ++n) {
    bad += decode_codes(w, n, codes.data(), sw.data());
    for (std::int64_t t = 0; t < T; ++t)
      y(t, n) = from_f32<TY>(round_bf16(promoted_dot(q.data() + t * K, sa.data() + t * nb, codes.data(), sw.data(), K, block)));
  }
  return bad;
}

// ---- one MoE expert (§1 X1-X3) ----------------------------------------------------------------------------------
// n gathered rows xs [n, D] -> out [n, D]: g = lin(xs, w1), u = lin(xs, w3) (BF16 values), h = bf16(silu(min(g, L)) ·
// clamp(u, ±L) · weight[row]) (the route weight before w2, then the BF16 cast before w2's Q8: two roundings),
// out = lin(h, w2) (BF16). `lin(x, rows, ldx, w, y, ldy)` is a backend's promoted linear on raw fp32 rows (returns the
// NaN-weight count); g and u are scratch. Both backends' MoE drivers run their experts through this.
template <class Lin>
std::int64_t expert(Lin&& lin, const ffn_ref& f, const float* xs, std::int64_t n, std::int64_t D, const float* weight,
                    float limit, float* out, std::vector<float>& g, std::vector<float>& u) {
  const std::int64_t I = f.w1.n;
  g.resize(static_cast<std::size_t>(n * I));
  u.resize(g.size());
  std::int64_t bad = lin(xs, n, D, f.w1, g.data(), I);
  bad += lin(xs, n, D, f.w3, u.data(), I);
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < I; ++j) {
      const std::size_t at = static_cast<std::size_t>(i * I + j);
      g[at] = round_bf16(swiglu(g[at], u[at], limit, weight[i]));
    }
  return bad + lin(g.data(), n, I, f.w2, out, D);
}

// ---- the q head norm in BF16 arithmetic (§1 A9, §4 item 3) ---------------------------------------------------------
// Per head v [n] (BF16 values): sq = bf16(v²); m = bf16(Σ sq / n) (the sum exact, rounded once to fp32, then / n in
// fp32); m = bf16(m + eps); r = bf16(1 / sqrt(m)); v = bf16(v · r). Five roundings, no weight.
inline void q_head_norm(float* v, std::int64_t n, float eps) noexcept {
  double ss = 0;
  for (std::int64_t i = 0; i < n; ++i) ss += double(round_bf16(v[i] * v[i]));
  float m = round_bf16(static_cast<float>(ss) / static_cast<float>(n));
  m = round_bf16(m + eps);
  const float r = round_bf16(1.f / std::sqrt(m));
  for (std::int64_t i = 0; i < n; ++i) v[i] = round_bf16(v[i] * r);
}

// ---- the lightning-indexer score with BF16 rounding (§1 I6, §4 item 4) -------------------------------------------
// I(t, s) = bf16( Σ_h bf16( ReLU(bf16(q_h · key_s)) · w_h ) ): the per-head dot is the exact FP4 dot of
// dsv4/ref/indexer.hpp (rounded once to fp32, then to BF16: the einsum's BF16 output), the weighted ReLU rounds to
// BF16, and the head sum runs in fp32 in the same fixed 16-lane tree as the fp32 policy (plain adds: the products are
// already rounded), rounded to BF16 at the end. w holds BF16 values (§1 I5).
inline float indexer_head_sum_bf16(const float* w, const float* d, std::int64_t H) noexcept {
  float p[kIndexerLanes] = {};
  for (std::int64_t h = 0; h < H; ++h) {
    const float b = round_bf16(d[h]);
    p[h % kIndexerLanes] = p[h % kIndexerLanes] + round_bf16(indexer_relu(b) * w[h]);
  }
  for (int width = kIndexerLanes / 2; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) p[l] = p[l] + p[l + width];
  return round_bf16(p[0]);
}

inline float fp4_score(const fp4_query& q, const float* w, const cache::key_pages& kp, std::int64_t slot) {
  return indexer_head_sum_bf16(w, fp4_key_dots(q, kp, slot).data(), q.H);
}

// ---- sparse attention with BF16 P (§1 S1; kernel.py sparse_attn) --------------------------------------------------
// One (token, head): q [D] against rows[0, n) (rows[0, nw) the window segment, the rest the compressed one), sink.
// The official kernel walks the index list in blocks of 64 with an online softmax; the blocks matter because P is
// rounded to BF16 against the running max of its block. Blocks: 64 rows at a time through the window segment, then a
// fresh block at the first compressed row (official decode pads the window to 128 = 2 blocks, so the compressed
// segment starts a block there too; this rule depends only on the row's own lists, which keeps chunk invariance).
// Per block:  s_i = f32(scale · f32(q · k_i))  (the dot exact, rounded once);  m' = max(m, max s_i);
//             α = exp(m − m');  p_i = exp(s_i − m');  l = fma(l, α, f32(Σ p_i));
//             acc = f32(acc · α) + f32(Σ bf16(p_i) · v_i)   (the PV sum exact, rounded once);  m = m'.
// Then out = bf16(acc / (l + exp(sink − m))): the sink in the denominator only, never in m. lse = m + ln l (the sink
// excluded, as the fp32 policy's op reports it). No row: out 0, lse +inf.
inline constexpr std::int64_t kAttnBlock = 64;

inline void attention_row(const float* q, const float* const* rows, std::int64_t n, std::int64_t nw, std::int64_t D,
                          float sink, float scale, float* out, float* lse) {
  if (n == 0) {
    std::fill(out, out + D, 0.f);
    if (lse) *lse = std::numeric_limits<float>::infinity();
    return;
  }
  std::vector<float> acc(static_cast<std::size_t>(D), 0.f), s(static_cast<std::size_t>(kAttnBlock));
  std::vector<double> pv(static_cast<std::size_t>(D));
  float m = -std::numeric_limits<float>::infinity(), l = 0.f;
  std::int64_t b0 = 0;
  while (b0 < n) {
    const std::int64_t b1 = std::min(b0 < nw ? nw : n, b0 + kAttnBlock);
    float mb = m;
    for (std::int64_t i = b0; i < b1; ++i) {
      double dot = 0;
      for (std::int64_t d = 0; d < D; ++d) dot += double(q[d]) * rows[i][d];
      s[static_cast<std::size_t>(i - b0)] = static_cast<float>(dot) * scale;
      mb = std::max(mb, s[static_cast<std::size_t>(i - b0)]);
    }
    const float alpha = std::exp(m - mb);  // exp(-inf) = 0 on the first block
    double psum = 0;
    std::fill(pv.begin(), pv.end(), 0.0);
    for (std::int64_t i = b0; i < b1; ++i) {
      const float p = std::exp(s[static_cast<std::size_t>(i - b0)] - mb);
      psum += p;
      const double pb = round_bf16(p);
      for (std::int64_t d = 0; d < D; ++d) pv[static_cast<std::size_t>(d)] += pb * rows[i][d];
    }
    l = std::fma(l, alpha, static_cast<float>(psum));
    for (std::int64_t d = 0; d < D; ++d)
      acc[static_cast<std::size_t>(d)] = acc[static_cast<std::size_t>(d)] * alpha + static_cast<float>(pv[static_cast<std::size_t>(d)]);
    m = mb;
    b0 = b1;
  }
  count_flops(static_cast<std::uint64_t>(4 * D * n));
  const float den = l + std::exp(sink - m);
  for (std::int64_t d = 0; d < D; ++d) out[d] = round_bf16(acc[static_cast<std::size_t>(d)] / den);
  if (lse) *lse = m + std::log(l);
}

}  // namespace dsv4::ref::official
