// dsv4/cuda/mhc.hpp — CUDA backend of manifold-constrained hyper-connections (ref: dsv4/ref/mhc.hpp), fp32.
//
// sinkhorn_knopp: one thread per token, ref's steps in ref's order (expf, IEEE division); hc_pre / hc_head: one CTA
// per token — the sum of squares and the mixes as per-thread fp32 partial sums (thread i takes the columns
// d = i mod 256 of every stream, stream by stream), added by a fixed shared-memory tree, then the gates and the
// Sinkhorn projection by one thread, then the collapse y[d] = Σ_j pre_j·x[j][d] (fma in ascending j); hc_post: one
// thread per (token, d) computing every stream k as post_k·f + Σ_j comb[j][k]·x[j] (fma in ascending j; x is read
// before out is written, so in place works). Every token is computed alone, in a fixed order: batch-independent and
// run-to-run identical. ref sums in double, so the two agree within fp32 rounding. n (hc_mult) up to 8.
// Declarations only; kernels in cuda/mhc.cu.
#pragma once

#include "dsv4/exec.hpp"
#include "dsv4/formats.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::cuda {

inline constexpr int kMaxHcMult = 8;

void sinkhorn_knopp(view<const float, 3> logits, view<float, 3> out, int iters, float eps, const exec& ex);

// Instantiated for TX, TY in {float, bf16} (hc_pre, hc_head) and TF, TX, TO in {float, bf16} (hc_post).
template <class TX, class TY>
void hc_pre(view<const TX, 3> x, view<const float, 2> fn, view<const float, 1> scale, view<const float, 1> base,
            view<TY, 2> y, view<float, 2> post, view<float, 3> comb, int iters, float hc_eps, float norm_eps,
            const exec& ex);
template <class TF, class TX, class TO>
void hc_post(view<const TF, 2> f, view<const TX, 3> x, view<const float, 2> post, view<const float, 3> comb,
             view<TO, 3> out, const exec& ex);
// x[t, j, :] = h[t, :] for every stream j; TH, TX in {float, bf16}.
template <class TH, class TX>
void hc_expand(view<const TH, 2> h, view<TX, 3> x, const exec& ex);
template <class TX, class TY>
void hc_head(view<const TX, 3> x, view<const float, 2> fn, view<const float, 1> scale, view<const float, 1> base,
             view<TY, 2> y, float hc_eps, float norm_eps, const exec& ex);

}  // namespace dsv4::cuda
