// dsv4/cuda/moe.hpp — CUDA backend of MoE routing and the expert FFN (ref: dsv4/ref/moe.hpp), fp32 policy.
//
// Routing: one warp per token; scores with expf / log1pf / sqrtf, top-k by k rounds of a warp argmax with the dsv4
// tie rule (equal values: the lower expert index), weights summed in selection order as ref sums them. Hash routing
// reads tid2eid[token_ids[t]]; an id out of range is reported (status_index_oob) and its slots get expert -1,
// weight 0 (the FFN skips them).
//
// Expert FFN, every step a device kernel (graph-capturable; nothing read back by the host):
//   plan     per expert e, one warp scans the (token, slot) pairs in order and compacts those routed to e (ballot),
//            so its rows are in ascending token order; counts, offsets and a list of row tiles (expert, first row,
//            rows) follow, and pair -> grouped row. Pairs naming no expert in [0, E) are skipped and reported.
//   experts  x rows gathered per expert; w1 and w3 as grouped GEMMs over the tile list (the dot of ops::linear on
//            CUDA, linear_core.cuh: an expert's rows are the bits ops::linear gives them); SwiGLU with the clamp and
//            the route weight; w2 likewise. The shared expert runs the linear kernels on all tokens.
//   combine  per token, its slots in ascending expert order (duplicates in slot order), fp32, then the shared
//            expert's row (ref::moe_ffn's order).
// A token's output depends on nothing else in the batch. Scratch comes from exec::scratch
// (moe_ffn_workspace_bytes); the routed experts must share one weight format and shape (the shared expert may
// differ), at most kMaxRoutedExperts of them, k <= 16. Declarations only; kernels in cuda/moe.cu.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "dsv4/exec.hpp"
#include "dsv4/ops/moe.hpp"
#include "dsv4/ref/linear.hpp"
#include "dsv4/ref/moe.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::cuda {

inline constexpr int kMaxRoutedExperts = 512;  // the expert table is a kernel parameter (<= 32 KiB)
inline constexpr int kMaxTopk = 16;

// logits [T, E] f32; bias [E] (device, nullptr = none) -> w [T, k], idx [T, k].
void moe_route(view<const float, 2> logits, const ops::route_config& cfg, const float* bias, view<float, 2> w,
               view<std::int32_t, 2> idx, const exec& ex);
// token_ids [T] and tid2eid [V, k] as i64 (ids_i32 / map_i32: the tensors are i32 instead; same views' data).
void moe_hash_route(view<const float, 2> logits, const ops::route_config& cfg, const void* token_ids,
                    std::int64_t ids_stride, bool ids_i32, const void* tid2eid, std::int64_t V,
                    std::int64_t map_stride0, std::int64_t map_stride1, bool map_i32, view<float, 2> w,
                    view<std::int32_t, 2> idx, const exec& ex);

std::size_t moe_ffn_workspace_bytes(std::int64_t T, std::int64_t k, std::int64_t E, std::int64_t D, std::int64_t I,
                                    bool shared, std::int64_t shared_I);

// Instantiated for TX, TY in {float, bf16}. Returns the NaN-weight count under check_policy::sync, else 0.
template <class TX, class TY>
std::int64_t moe_ffn(view<const TX, 2> x, view<const float, 2> w, view<const std::int32_t, 2> idx,
                     const std::vector<ref::ffn_ref>& routed, const ref::ffn_ref* shared, float limit, view<TY, 2> y,
                     const exec& ex);

}  // namespace dsv4::cuda
