// dsv4/cpu/attention.hpp — CPU SIMD backend of the indexer scores, top-k selection and sparse attention
// (ref: dsv4/ref/attention.hpp). xsimd dot products with a fixed lane/accumulation order, oneTBB over tokens (scores,
// top-k) or (token, head) rows (attention): bitwise the same for any thread count and batch composition; equal to
// ref within fp32 rounding. Preconditions checked by ops::*: fp32, innermost strides 1.
#pragma once

#include <cstdint>

#include "dsv4/cache.hpp"
#include "dsv4/exec.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::cpu {

template <class TV>
void indexer_scores(view<const float, 3> q, view<const float, 2> k, view<const float, 2> w, view<const TV, 1> visible,
                    view<float, 2> scores, const exec& ex);
template <class TC>
void topk_select(view<const float, 2> scores, view<const TC, 1> count, view<std::int32_t, 2> idx, const exec& ex);
void sparse_attention(view<const float, 3> q, view<const float, 2> kv_window, view<const float, 2> kv_compressed,
                      view<const std::int32_t, 2> idx, view<const float, 1> sink, float scale, view<float, 3> out,
                      const exec& ex);
// The same over row pointers: token t attends rows[t·K .. t·K + counts[t]) in list order (counts[t] may be 0: out 0,
// lse +inf); lse f32 [T·H] (natural-log sum of the real logits) when not null.
void sparse_attention_rows(view<const float, 3> q, const float* const* rows, const std::int64_t* counts,
                           std::int64_t K, view<const float, 1> sink, float scale, view<float, 3> out, float* lse,
                           const exec& ex);
// Indexer scores over paged keys (ops::indexer_logits): each page's keys decoded once, scored by the same kernel.
void indexer_scores_paged(view<const float, 3> q, view<const float, 2> w, const cache::key_pages& keys,
                          view<const std::int32_t, 2> block_table, view<const std::int32_t, 1> row_req,
                          view<const std::int32_t, 1> n_keys, view<float, 2> logits, const exec& ex,
                          bool official = false);

}  // namespace dsv4::cpu
