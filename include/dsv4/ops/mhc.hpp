// dsv4/ops/mhc.hpp — manifold-constrained hyper-connections (spec §4): Sinkhorn–Knopp projection, hc_pre,
// hc_post, hc_head. Semantics: dsv4/ref/mhc.hpp.
//
// Backends: ref, cpu (dsv4/cpu/mhc.hpp: fused RMS + mix pass, Sinkhorn across tokens in SIMD lanes) and cuda for
// sinkhorn_knopp, hc_pre, hc_post, hc_head and hc_expand (dsv4/cuda/mhc.hpp: a CTA per token, fixed-order sums,
// n <= 8).
// The diagnostics (sinkhorn_residuals) run on host tensors.
#pragma once

#include "dsv4/exec.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::ops {

// V4 values: hc_sinkhorn_iters 20, hc_eps 1e-6, norm_eps 1e-6 (spec §1.1).
struct mhc_config {
  int sinkhorn_iters = 20;
  float hc_eps = 1e-6f;
  float norm_eps = 1e-6f;
};

// logits, out: [T, n, n] f32 (out may alias logits).
void sinkhorn_knopp(const tensor_view& logits, const tensor_view& out, int iters, float eps, const exec& ex = {});

// Diagnostics of the projection (ref backend; a study tool, not a hot path): residuals [iters, 2] f32 where
// residuals[i] = {max over tokens and rows of |row sum - 1|, the same for columns} after iteration i + 1
// (iteration 1 = softmax + column normalization, each later one = row then column normalization).
void sinkhorn_residuals(const tensor_view& logits, int iters, float eps, const tensor_view& residuals);

// Initial expansion (spec §4): x[t, j] = h[t] for every stream j. h [T, D], x [T, n, D], f32|bf16 each (a bf16
// -> f32 expansion is exact; f32 -> bf16 rounds once). A copy on every backend.
void hc_expand(const tensor_view& h, const tensor_view& x, const exec& ex = {});

// x [T, n, D] f32|bf16; fn [2n + n^2, n·D] f32; scale [3] f32; base [2n + n^2] f32
// -> y [T, D] f32|bf16, post [T, n] f32, comb [T, n, n] f32.
void hc_pre(const tensor_view& x, const tensor_view& fn, const tensor_view& scale, const tensor_view& base,
            const tensor_view& y, const tensor_view& post, const tensor_view& comb, const mhc_config& cfg = {},
            const exec& ex = {});

// f [T, D], x [T, n, D], post [T, n], comb [T, n, n] -> out [T, n, D] (may alias x):
// out[k] = post_k·f + Σ_j comb[j][k]·x[j].
void hc_post(const tensor_view& f, const tensor_view& x, const tensor_view& post, const tensor_view& comb,
             const tensor_view& out, const exec& ex = {});

// x [T, n, D]; fn [n, n·D]; scale [1]; base [n] -> y [T, D].
void hc_head(const tensor_view& x, const tensor_view& fn, const tensor_view& scale, const tensor_view& base,
             const tensor_view& y, const mhc_config& cfg = {}, const exec& ex = {});

}  // namespace dsv4::ops
