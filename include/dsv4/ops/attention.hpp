// dsv4/ops/attention.hpp — the attention kernels of V4 (spec §3.5–§3.7): lightning-indexer scores, top-k selection,
// and sparse multi-query attention with a per-head sink. Semantics: dsv4/ref/attention.hpp.
//
// Backends: ref (double accumulation, the spec) and cpu (xsimd dot products in a fixed order, oneTBB over
// (token, head) rows or tokens: bitwise identical for any thread count, and a row's result does not depend on the
// other rows in the batch). No CUDA backend yet. All tensors fp32, contiguous innermost dims.
#pragma once

#include "dsv4/exec.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::ops {

// scores [T, E] f32: scores[t, s] = Σ_h w[t, h] · ReLU(q[t, h, :] · k[s, :]) for s < visible[t], −inf beyond.
// q [T, h, c], k [E, c], w [T, h] f32; visible [T] i32 or i64 in [0, E]. The ReLU comes before the weighted head sum.
void indexer_scores(const tensor_view& q, const tensor_view& k, const tensor_view& w, const tensor_view& visible,
                    const tensor_view& scores, const exec& ex = {});

// idx [T, k] i32: the min(k, count[t]) entries among scores[t, 0 .. count[t]) with the highest scores, best first;
// equal scores -> lower index first (dsv4 rule, spec §10); the rest of the row is −1. count [T] i32 or i64 in
// [0, E]; scores [T, E] f32 without NaN in the counted range. The CPU backend selects without sorting everything.
void topk_select(const tensor_view& scores, const tensor_view& count, const tensor_view& idx, const exec& ex = {});

// out [T, H, D] f32: for each token t and head h, over the valid entries i of idx[t, :] (−1 = skip):
//   l_i = scale · q[t, h] · row(idx[t, i]);  M = max_i l_i;
//   out = Σ_i e^(l_i − M) row(idx[t, i]) / (Σ_i e^(l_i − M) + e^(sink[h] − M)),
// summed in list order. One shared K = V head; the sink sits in the denominator only, is not scaled and not part of M.
// The rows live in two tensors that share one index space, like the reference's concatenated [window ; compressed]
// cache (spec §3.6) without copying it: row(i) = kv_window[i] for i < n_w, kv_compressed[i − n_w] otherwise.
// q [T, H, D]; kv_window [n_w, D]; kv_compressed [n_c, D] (n_c may be 0, or pass an empty view);
// idx [T, K] i32 in [−1, n_w + n_c) with at least one valid entry per row; sink [H] f32.
void sparse_attention(const tensor_view& q, const tensor_view& kv_window, const tensor_view& kv_compressed,
                      const tensor_view& idx, const tensor_view& sink, float scale, const tensor_view& out,
                      const exec& ex = {});

}  // namespace dsv4::ops
