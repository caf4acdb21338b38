// dsv4/cpu/mhc.hpp — CPU SIMD backend of mHC (ref: dsv4/ref/mhc.hpp).
//
// hc_pre / hc_head: blocks of up to 16 tokens per oneTBB task. For each stream and each 256-value chunk of D, every
// token of the block makes ONE pass over its chunk that accumulates the sum of squares and all 2n + n² mix
// projections at once (fn's chunk stays in L1 across the block's tokens), so the RMS norm and the projection are
// fused into a single read of the token's n·D values; the weighted collapse needs pre (a function of the whole
// token) and reads the token a second time. Sinkhorn runs W tokens at once, one per SIMD lane, with the ref's
// sequence of operations. hc_post: SIMD over D, the ref's order of terms.
// Accumulation order per output depends only on D and the ISA, never on T or the thread count.
// Preconditions (checked by ops::): innermost strides 1.
#pragma once

#include "dsv4/exec.hpp"
#include "dsv4/formats.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::cpu {

// Instantiated for TX, TY in {float, bf16}.
template <class TX, class TY>
void hc_pre(view<const TX, 3> x, view<const float, 2> fn, view<const float, 1> scale, view<const float, 1> base,
            view<TY, 2> y, view<float, 2> post, view<float, 3> comb, int iters, float hc_eps, float norm_eps,
            const exec& ex);

template <class TX, class TY>
void hc_head(view<const TX, 3> x, view<const float, 2> fn, view<const float, 1> scale, view<const float, 1> base,
             view<TY, 2> y, float hc_eps, float norm_eps, const exec& ex);

// TF, TX, TO in {float, bf16}; out may be the very same view as x.
template <class TF, class TX, class TO>
void hc_post(view<const TF, 2> f, view<const TX, 3> x, view<const float, 2> post, view<const float, 3> comb,
             view<TO, 3> out, const exec& ex);

// logits [T, n, n] -> out [T, n, n] (may alias).
void sinkhorn_knopp(view<const float, 3> logits, view<float, 3> out, int iters, float eps, const exec& ex);

}  // namespace dsv4::cpu
