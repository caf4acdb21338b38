// dsv4/cpu/moe.hpp — CPU backend of MoE routing and experts (ref: dsv4/ref/moe.hpp).
//
// Routing: xsimd scoring (exp / log1p / sqrt of the xsimd math library, within a few ulp of the ref's libm calls),
// single-pass top-k insertion (no sort), oneTBB over tokens. Experts: tokens grouped by expert (counting sort),
// each expert's gathered rows through cpu::linear_f32 for w1, w3 and w2, the SwiGLU element shared with ref, then
// per token the routed outputs summed in ascending expert order and the shared expert added last — the ref's order,
// so a token's output does not depend on the batch or the thread count.
#pragma once

#include <vector>

#include "dsv4/exec.hpp"
#include "dsv4/ref/moe.hpp"

namespace dsv4::cpu {

// scores [T, E] from logits [T, E] (rows contiguous).
void moe_scores(view<const float, 2> logits, ops::score_func f, view<float, 2> scores, const exec& ex);

// Score routing, as ref::moe_route.
void moe_route(view<const float, 2> logits, const ops::route_config& cfg, const float* bias, view<float, 2> w,
               view<std::int32_t, 2> idx, const exec& ex);

// Instantiated for TX, TY in {float, bf16}. Returns how many weights decoded to NaN.
template <class TX, class TY>
std::int64_t moe_ffn(view<const TX, 2> x, view<const float, 2> w, view<const std::int32_t, 2> idx,
                     const std::vector<ref::ffn_ref>& routed, const ref::ffn_ref* shared, float limit, view<TY, 2> y,
                     const exec& ex);

// The official policy's MoE FFN on raw fp32 rows x [T, D] -> y [T, D] (BF16 values): experts in parallel, each with
// single-threaded official linears (src/cpu/moe_official.cpp); per token the reference driver's order and values.
std::int64_t moe_ffn_official(const float* x, std::int64_t T, std::int64_t D, view<const float, 2> w,
                              view<const std::int32_t, 2> idx, const std::vector<ref::ffn_ref>& routed,
                              const ref::ffn_ref* shared, float limit, float* y, const exec& ex);

}  // namespace dsv4::cpu
