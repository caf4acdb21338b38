// src/cpu/attention.cpp — CPU backend of the indexer scores, top-k selection and sparse attention.
//
// Work split (oneTBB): indexer scores by (token, entry block), top-k by token, attention by (token, head group).
// Every sum runs in a fixed order (entries in list order, heads ascending) that does not depend on the split, so
// results are independent of the thread count and of the other rows in the batch: a prefill row equals the same
// row computed alone in decode.
#include "dsv4/cpu/attention.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "attention_simd.hpp"
#include "dsv4/ref/attention.hpp"
#include "dsv4/ref/cache.hpp"
#include "dsv4/ref/indexer.hpp"
#include "dsv4/ref/official.hpp"
#include "parallel.hpp"

namespace dsv4::cpu {
namespace {

const detail::attention_kernels& kernels() {
  static const auto k = detail::resolve_kernels<detail::attention_kernels, detail::select_attention_kernels>();
  return k;
}

// The indexer kernel's query layout: per token, q transposed to [C, hp] and w padded to hp heads (hp = H rounded up
// to the vector lanes; zero heads add exact zeros).
struct queries {
  std::int64_t hp;
  std::vector<float> qT, wp;
  queries(view<const float, 3> q, view<const float, 2> w, std::int64_t lanes) {
    const std::int64_t T = q.size(0), H = q.size(1), C = q.size(2);
    hp = (H + lanes - 1) / lanes * lanes;
    qT.assign(static_cast<std::size_t>(T * C * hp), 0.f);
    wp.assign(static_cast<std::size_t>(T * hp), 0.f);
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t h = 0; h < H; ++h) {
        wp[static_cast<std::size_t>(t * hp + h)] = w(t, h);
        for (std::int64_t c = 0; c < C; ++c) qT[static_cast<std::size_t>((t * C + c) * hp + h)] = q(t, h, c);
      }
  }
};

}  // namespace

template <class TV>
void indexer_scores(view<const float, 3> q, view<const float, 2> k, view<const float, 2> w, view<const TV, 1> visible,
                    view<float, 2> scores, const exec& ex) {
  const auto& kr = kernels();
  const std::int64_t T = q.size(0), C = q.size(2), E = k.size(0);
  const queries qs(q, w, kr.lanes);
  const std::int64_t hp = qs.hp;
  const std::vector<float>& qT = qs.qT;
  const std::vector<float>& wp = qs.wp;
  // Tasks are (token, block of 256 keys), so a single decode token still spreads over the cores; a key's score
  // does not depend on the blocking.
  constexpr std::int64_t kBlock = 256;
  const std::int64_t nb = std::max<std::int64_t>((E + kBlock - 1) / kBlock, 1);
  detail::parallel_rows(T * nb, 1, ex, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::int64_t t = r / nb, b = r % nb;
      const std::int64_t n = static_cast<std::int64_t>(visible(t));
      float* out = scores.row(t);
      const std::int64_t s0 = b * kBlock, s1 = std::min(E, s0 + kBlock), v1 = std::min(n, s1);
      if (v1 > s0)
        kr.index_scores(qT.data() + t * C * hp, wp.data() + t * hp, hp, k.row(s0), C, v1 - s0, out + s0);
      for (std::int64_t s = std::max(s0, n); s < s1; ++s) out[s] = -std::numeric_limits<float>::infinity();
    }
  });
}

template <class TC>
void topk_select(view<const float, 2> scores, view<const TC, 1> count, view<std::int32_t, 2> idx, const exec& ex) {
  const std::int64_t T = scores.size(0), K = idx.size(1);
  detail::parallel_rows(T, 1, ex, [&](std::int64_t t0, std::int64_t t1) {
    std::vector<std::int32_t> cand;
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t n = static_cast<std::int64_t>(count(t));
      const float* s = scores.row(t);
      // A strict total order: higher score first, then lower index.
      auto better = [s](std::int32_t a, std::int32_t b) { return s[a] > s[b] || (s[a] == s[b] && a < b); };
      cand.resize(static_cast<std::size_t>(n));
      std::iota(cand.begin(), cand.end(), 0);
      const std::int64_t take = std::min(K, n);
      if (take < n) std::nth_element(cand.begin(), cand.begin() + take - 1, cand.end(), better);
      std::sort(cand.begin(), cand.begin() + take, better);
      for (std::int64_t i = 0; i < K; ++i) idx(t, i) = i < take ? cand[static_cast<std::size_t>(i)] : -1;
    }
  });
}

void sparse_attention_rows(view<const float, 3> q, const float* const* rows, const std::int64_t* counts,
                           std::int64_t K, view<const float, 1> sink, float scale, view<float, 3> out, float* lse,
                           const exec& ex) {
  const auto& kr = kernels();
  const std::int64_t T = q.size(0), H = q.size(1), D = q.size(2);
  // Tasks are (token, group of up to 8 heads). The K = V rows are shared by all heads (one MQA head), so a group
  // reads each selected row twice (logits, then P·V) for 8 heads instead of twice per head. Per (token, head) the
  // arithmetic is the same whatever the grouping: logits, max, then Σp and Σp·v in list order, then the sink.
  constexpr std::int64_t kGroup = 8;
  const std::int64_t ng = (H + kGroup - 1) / kGroup;
  detail::parallel_rows(T * ng, 1, ex, [&](std::int64_t r0, std::int64_t r1) {
    std::vector<float> logit(static_cast<std::size_t>(kGroup * std::max<std::int64_t>(K, 1))), prob(logit.size());
    float m[kGroup], den[kGroup];
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::int64_t t = r / ng, h0 = (r % ng) * kGroup, G = std::min(kGroup, H - h0);
      const float* const* rw = rows + t * K;  // the valid rows, in list order
      const std::int64_t n = counts[t];
      float* o = &out(t, h0, 0);
      if (n == 0) {  // no valid entry: out 0, lse +inf (FlashMLA's empty-row semantics)
        std::fill(o, o + G * D, 0.f);
        if (lse)
          for (std::int64_t g = 0; g < G; ++g) lse[t * H + h0 + g] = std::numeric_limits<float>::infinity();
        continue;
      }
      // Logits: rows in L2-sized blocks, every head of the group over a block before the next block, so each row
      // comes from memory once per group rather than once per head.
      for (std::int64_t g = 0; g < G; ++g) m[g] = -std::numeric_limits<float>::infinity();
      constexpr std::int64_t kRows = 64;
      for (std::int64_t i0 = 0; i0 < n; i0 += kRows) {
        const std::int64_t i1 = std::min(n, i0 + kRows);
        for (std::int64_t g = 0; g < G; ++g) {
          const float* qh = &q(t, h0 + g, 0);
          float* lg = logit.data() + g * n;
          for (std::int64_t i = i0; i < i1; ++i) {
            lg[i] = scale * kr.dot(qh, rw[i], D);
            m[g] = std::max(m[g], lg[i]);
          }
        }
      }
      for (std::int64_t g = 0; g < G; ++g) {
        den[g] = kr.exp_sum(logit.data() + g * n, m[g], prob.data() + g * n, n);
        if (lse) lse[t * H + h0 + g] = m[g] + std::log(den[g]);  // the real logits only
        den[g] += std::exp(sink(h0 + g) - m[g]);  // the sink: denominator only
      }
      kr.pv(rw, n, prob.data(), G, D, o);
      for (std::int64_t g = 0; g < G; ++g) kr.scale(o + g * D, 1.f / den[g], D);
    }
  });
}

void sparse_attention(view<const float, 3> q, view<const float, 2> kvw, view<const float, 2> kvc,
                      view<const std::int32_t, 2> idx, view<const float, 1> sink, float scale, view<float, 3> out,
                      const exec& ex) {
  const ref::row_lists l(kvw, kvc, idx);
  sparse_attention_rows(q, l.rows.data(), l.counts.data(), idx.size(1), sink, scale, out, nullptr, ex);
}

namespace {
// One key decoded to fp32, the same values as ref::load_key (a code times its power-of-two scale is exact in fp32),
// FP4 through a 16-entry table and one scale per 32-block instead of a conversion per element.
void decode_key(const cache::key_pages& kp, std::int64_t slot, float* v) {
  const cache::key_geometry& g = kp.geo;
  if (g.format != cache::key_format::fp4) {
    ref::load_key(kp, slot, v);
    return;
  }
  static const auto lut = [] {
    std::array<float, 16> t{};
    for (int c = 0; c < 16; ++c) t[static_cast<std::size_t>(c)] = fp4_e2m1{static_cast<std::uint8_t>(c)}.to_float();
    return t;
  }();
  const std::uint8_t* page = kp.page(slot / g.page_tokens);
  const std::int64_t e = slot % g.page_tokens;
  const std::uint8_t* codes = page + g.code_offset(e);
  const std::uint8_t* sc = page + g.scale_offset(e);
  for (std::int64_t b = 0; b < g.dim / 32; ++b) {
    const float s = ue8m0{sc[b]}.to_float();
    for (std::int64_t i = 0; i < 16; ++i) {
      const std::uint8_t pair = codes[b * 16 + i];
      v[b * 32 + 2 * i] = lut[pair & 0xF] * s;
      v[b * 32 + 2 * i + 1] = lut[pair >> 4] * s;
    }
  }
}
}  // namespace

namespace {

// The (token, page) tasks of the paged indexer: score(t, s0, v1, bt, out, scratch) scores the visible keys [s0, v1)
// of logical page s0 / B of row t (bt: its block table) into out; keys past n_keys[t] get −inf. scratch is one
// make_scratch() per task range.
template <class MakeScratch, class Score>
void over_token_pages(std::int64_t T, std::int64_t B, view<const std::int32_t, 2> block_table,
                      view<const std::int32_t, 1> row_req, view<const std::int32_t, 1> n_keys, view<float, 2> logits,
                      const exec& ex, MakeScratch make_scratch, Score score) {
  const std::int64_t L = logits.size(1), np = std::max<std::int64_t>((L + B - 1) / B, 1);
  detail::parallel_rows(T * np, 1, ex, [&](std::int64_t r0, std::int64_t r1) {
    auto scratch = make_scratch();
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::int64_t t = r / np, pg = r % np;
      const std::int64_t n = n_keys(t), s0 = pg * B, s1 = std::min(L, s0 + B), v1 = std::min(n, s1);
      float* out = logits.row(t);
      if (v1 > s0) score(t, s0, v1, block_table.row(row_req(t)), out, scratch);
      for (std::int64_t s = std::max(s0, n); s < s1; ++s) out[s] = -std::numeric_limits<float>::infinity();
    }
  });
}

// One token's FP4 query (ref::quantize_query) packed for the kernel; ok = false when a head is outside its envelope
// (non-finite, a NaN scale, block exponents spread by more than 3, or a scale product that would leave the normal
// range), and the token is then scored by the reference.
detail::fp4_qpack pack_fp4_query(const ref::fp4_query& fq, const float* w) {
  detail::fp4_qpack p;
  const std::int64_t H = fq.H, C = fq.C, nb = C / ref::kIndexerBlock, chunks = C / 8;
  p.C = C;
  p.groups = static_cast<int>((H + 15) / 16);
  const std::size_t lanes = static_cast<std::size_t>(p.groups) * 16;
  p.qv.assign(static_cast<std::size_t>(2 * chunks) * lanes, 0);
  p.qh.assign(lanes * static_cast<std::size_t>(C), 0);
  p.corr.assign(lanes, 0);
  p.qscale.assign(lanes, 1.f);
  p.w.assign(lanes, 0.f);
  int emin_all = 1000, emax_all = -1000;
  bool ok = true;
  for (std::int64_t h = 0; h < H; ++h) {
    const std::uint8_t* sb = fq.sbits.data() + h * nb;
    // The envelope over the blocks that hold a nonzero code: an all-zero block adds exactly 0 to the integer dot
    // whatever its scale (a zero block's tiny scale would otherwise spread the exponents and send the whole token to
    // the reference). A head with no nonzero code scores exactly 0 (e = 0, kept out of the key-range bounds).
    int lo = 255, hi = 0;
    bool nan_scale = false;
    for (std::int64_t b = 0; b < nb; ++b) {
      nan_scale = nan_scale || sb[b] == 0xFF;
      bool nonzero = false;
      for (std::int64_t c = b * ref::kIndexerBlock; c < (b + 1) * ref::kIndexerBlock; ++c)
        nonzero = nonzero || fq.a[static_cast<std::size_t>(h * C + c)] != 0;
      if (!nonzero) continue;
      lo = std::min<int>(lo, sb[b]);
      hi = std::max<int>(hi, sb[b]);
    }
    const bool zero_head = lo > hi;
    if (zero_head) lo = hi = 127 + 2;
    const int e = lo - 127 - 2;  // the head's scale exponent 2^(eq_min − 2)
    if (!fq.finite[static_cast<std::size_t>(h)] || nan_scale || hi - lo > 3 || e < -126 || e > 127) {
      ok = false;
      break;
    }
    if (!zero_head) {
      emin_all = std::min(emin_all, e);
      emax_all = std::max(emax_all, e);
    }
    const std::size_t g = static_cast<std::size_t>(h / 16), l = static_cast<std::size_t>(h % 16);
    std::int32_t sum = 0;
    for (std::int64_t half = 0; half < 2; ++half)
      for (std::int64_t j = 0; j < chunks; ++j) {
        std::uint32_t dword = 0;
        for (int i = 0; i < 4; ++i) {
          const std::int64_t c = 8 * j + 2 * i + half;  // the element this byte meets in the key layout
          const int a = fq.a[static_cast<std::size_t>(h * C + c)];
          const int v = a == 0 ? 0 : a * (1 << (sb[c / ref::kIndexerBlock] - lo));  // zero blocks may sit below lo
          sum += v;
          p.qh[static_cast<std::size_t>(h * C + half * (C / 2) + 4 * j + i)] = static_cast<std::int8_t>(v);
          dword |= static_cast<std::uint32_t>(static_cast<std::uint8_t>(static_cast<std::int8_t>(v))) << (8 * i);
        }
        p.qv[(static_cast<std::size_t>(half * chunks + j) * static_cast<std::size_t>(p.groups) + g) * 16 + l] =
            static_cast<std::int32_t>(dword);
      }
    p.corr[g * 16 + l] = 128 * sum;
    p.qscale[g * 16 + l] = std::ldexp(1.f, e);
    p.w[g * 16 + l] = w[h];
  }
  p.ok = ok && H > 0;
  if (p.ok) {
    p.ek_lo = std::max(-126, -126 - emin_all);
    p.ek_hi = std::min(127, 127 - emax_all);
  }
  return p;
}

// FP4 key pages: the exact FP4 score (ref/indexer.hpp), by the VNNI kernel where it applies, else by the reference.
// official: the BF16 score of dsv4/ref/official.hpp (the same exact dots, BF16 roundings after them).
void indexer_scores_fp4(view<const float, 3> q, view<const float, 2> w, const cache::key_pages& keys,
                        view<const std::int32_t, 2> block_table, view<const std::int32_t, 1> row_req,
                        view<const std::int32_t, 1> n_keys, view<float, 2> logits, const exec& ex, bool official) {
  const auto& kr = kernels();
  const std::int64_t T = q.size(0), H = q.size(1), C = q.size(2), B = keys.geo.page_tokens;
  // Each token's query rounded to FP4 and packed, once, on all workers (q and w rows are contiguous: checked by the op).
  std::vector<ref::fp4_query> fq(static_cast<std::size_t>(T));
  std::vector<detail::fp4_qpack> packed(static_cast<std::size_t>(T));
  detail::parallel_rows(T, 1, ex, [&](std::int64_t t0, std::int64_t t1) {
    for (std::int64_t t = t0; t < t1; ++t) {
      fq[static_cast<std::size_t>(t)] = ref::quantize_query(q.row(t), H, C);
      packed[static_cast<std::size_t>(t)] = pack_fp4_query(fq[static_cast<std::size_t>(t)], w.row(t));
      packed[static_cast<std::size_t>(t)].official = official;
    }
  });
  over_token_pages(
      T, B, block_table, row_req, n_keys, logits, ex,
      [&] { return std::vector<std::uint8_t>(static_cast<std::size_t>(B)); },
      [&](std::int64_t t, std::int64_t s0, std::int64_t v1, const std::int32_t* bt, float* out,
          std::vector<std::uint8_t>& skipped) {
        const std::int64_t slot0 = cache::slot_of(bt, s0, B);  // a logical page is one physical page
        const std::uint8_t* page = keys.page(slot0 / B);
        const std::int64_t e0 = slot0 % B;
        const auto& pk = packed[static_cast<std::size_t>(t)];
        const bool fast = pk.ok && kr.index_fp4 &&
                          kr.index_fp4(pk, page + keys.geo.code_offset(e0), page + keys.geo.scale_offset(e0), v1 - s0,
                                       out + s0, skipped.data());
        for (std::int64_t s = s0; s < v1; ++s)
          if (!fast || skipped[static_cast<std::size_t>(s - s0)])
            out[s] = official ? ref::official::fp4_score(fq[static_cast<std::size_t>(t)], w.row(t), keys,
                                                         cache::slot_of(bt, s, B))
                              : ref::fp4_score(fq[static_cast<std::size_t>(t)], w.row(t), keys, cache::slot_of(bt, s, B));
      });
}

}  // namespace

void indexer_scores_paged(view<const float, 3> q, view<const float, 2> w, const cache::key_pages& keys,
                          view<const std::int32_t, 2> block_table, view<const std::int32_t, 1> row_req,
                          view<const std::int32_t, 1> n_keys, view<float, 2> logits, const exec& ex, bool official) {
  if (keys.geo.format == cache::key_format::fp4) return indexer_scores_fp4(q, w, keys, block_table, row_req, n_keys,
                                                                            logits, ex, official);
  const auto& kr = kernels();
  const std::int64_t T = q.size(0), C = q.size(2), B = keys.geo.page_tokens;
  const queries qs(q, w, kr.lanes);
  const std::int64_t hp = qs.hp;
  const std::vector<float>& qT = qs.qT;
  const std::vector<float>& wp = qs.wp;
  // Tasks are (token, page): a page's keys are decoded once into scratch (exact: FP4/FP8 codes times their scales)
  // and scored by the same kernel as contiguous keys, so a key's score does not depend on the paging.
  over_token_pages(
      T, B, block_table, row_req, n_keys, logits, ex,
      [&] { return std::vector<float>(static_cast<std::size_t>(B * C)); },
      [&](std::int64_t t, std::int64_t s0, std::int64_t v1, const std::int32_t* bt, float* out,
          std::vector<float>& scratch) {
        for (std::int64_t s = s0; s < v1; ++s) decode_key(keys, cache::slot_of(bt, s, B), scratch.data() + (s - s0) * C);
        kr.index_scores(qT.data() + t * C * hp, wp.data() + t * hp, hp, scratch.data(), C, v1 - s0, out + s0);
      });
}

template void indexer_scores<std::int32_t>(view<const float, 3>, view<const float, 2>, view<const float, 2>,
                                           view<const std::int32_t, 1>, view<float, 2>, const exec&);
template void indexer_scores<std::int64_t>(view<const float, 3>, view<const float, 2>, view<const float, 2>,
                                           view<const std::int64_t, 1>, view<float, 2>, const exec&);
template void topk_select<std::int32_t>(view<const float, 2>, view<const std::int32_t, 1>, view<std::int32_t, 2>,
                                        const exec&);
template void topk_select<std::int64_t>(view<const float, 2>, view<const std::int64_t, 1>, view<std::int32_t, 2>,
                                        const exec&);

}  // namespace dsv4::cpu
