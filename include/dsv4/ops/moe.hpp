// dsv4/ops/moe.hpp — MoE routing and SwiGLU experts (spec §5). Semantics: dsv4/ref/moe.hpp.
//
// A V4 MoE layer is: logits = linear(x, ffn.gate.weight) in fp32 (ops::linear), then moe_route (layers >=
// n_hash_layers) or moe_hash_route (layers < n_hash_layers), then moe_ffn over the routed and shared experts.
//
// Backends: ref, cpu and cuda. The CPU backend scores with xsimd and selects without sorting (moe_route), and groups
// tokens by expert (gather, GEMM through the CPU linear kernels, scatter) in moe_ffn; per token its result is
// bit-identical whatever the batch and thread count. The CUDA backend (fp32 numerics; dsv4/cuda/moe.hpp) plans,
// gathers, runs the grouped expert GEMMs and combines on the device (no host read, graph-capturable), with scratch
// from exec::scratch sized by moe_ffn_workspace_bytes; per token it is bit-identical whatever the batch too. On
// CUDA, values are checked on the device: non-finite logits, token ids or expert ids out of range and NaN weights
// are reported through exec's check policy (dsv4/exec.hpp) instead of being read back here.
#pragma once

#include <span>
#include <string_view>

#include "dsv4/error.hpp"
#include "dsv4/exec.hpp"
#include "dsv4/ops/linear.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::ops {

// Expert affinity (config `scoring_func`): V4 uses sqrtsoftplus, V3/V3.2 sigmoid, softmax for older models.
enum class score_func : std::uint8_t { sqrtsoftplus, sigmoid, softmax };
inline const char* score_func_name(score_func f) {
  switch (f) {
    case score_func::sqrtsoftplus: return "sqrtsoftplus";
    case score_func::sigmoid: return "sigmoid";
    case score_func::softmax: return "softmax";
  }
  return "?";
}
// The function a config names; an error naming the accepted values on anything else.
inline score_func parse_score_func(std::string_view name) {
  for (score_func f : {score_func::sqrtsoftplus, score_func::sigmoid, score_func::softmax})
    if (name == score_func_name(f)) return f;
  DSV4_FAIL("parse_score_func", "unknown scoring function \"", ::dsv4::detail::printable(name, 40),
            "\" (expected sqrtsoftplus, sigmoid or softmax)");
}

struct route_config {
  score_func score = score_func::sqrtsoftplus;
  int topk = 6;              // num_experts_per_tok (6 in V4)
  float route_scale = 1.f;   // routed_scaling_factor (1.5 V4-Flash, 2.5 V4-Pro)
};

// Score routing. logits [T, E] f32 (finite); bias [E] f32 or an empty view (selection only, never in the weights)
// -> weights [T, k] f32, experts [T, k] i32: the k experts with the largest score + bias, best first, equal values
// -> lower expert index first; weights = score / Σ selected scores (softmax: score as is) · route_scale.
void moe_route(const tensor_view& logits, const route_config& cfg, const tensor_view& bias,
               const tensor_view& weights, const tensor_view& experts, const exec& ex = {});

// Hash routing (layers < n_hash_layers): experts[t] = tid2eid[token_ids[t]] (row order kept), weights as above from
// the gate scores. token_ids [T] i32|i64 in [0, V); tid2eid [V, k] i32|i64 with entries in [0, E).
void moe_hash_route(const tensor_view& logits, const route_config& cfg, const tensor_view& token_ids,
                    const tensor_view& tid2eid, const tensor_view& weights, const tensor_view& experts,
                    const exec& ex = {});

// One SwiGLU expert: w1 (gate) [I, D], w3 (up) [I, D], w2 (down) [D, I]; any stored format (ops::qweight).
struct ffn_weights {
  qweight w1, w2, w3;
};

// y [T, D] = Σ over token t's routed experts in ascending expert index of w2_e(weights[t, i] · h_e(x_t))
//            + w2_s(h_s(x_t)) for the shared expert (when `shared` is not null), accumulated in fp32;
// h(x) = silu(min(w1 x, L)) · clamp(w3 x, -L, L) with L = swiglu_limit (0 = no clamp, as in V3).
// x [T, D] f32|bf16; weights [T, k] f32 (finite); experts [T, k] i32 in [0, routed.size()); y [T, D] f32|bf16.
// numerics official (dsv4/numerics.hpp; official-numerics.md §1 X1-X5): every expert linear is the promoted FP8 /
// FP4 GEMM with BF16 output (ops::linear), h is rounded to BF16 before w2's FP8 activation quantization (after the
// route weight: two roundings), and the fp32 sum of the BF16 expert outputs (ascending expert id, then the shared
// expert) is rounded to BF16.
void moe_ffn(const tensor_view& x, const tensor_view& weights, const tensor_view& experts,
             std::span<const ffn_weights> routed, const ffn_weights* shared, float swiglu_limit,
             const tensor_view& y, const exec& ex = {}, numerics nm = numerics::fp32);

// Device scratch (exec::scratch) the CUDA backend of moe_ffn needs for T tokens of k slots over these experts
// (0 without a CUDA build: the host backends take none). The routed experts share one shape on CUDA.
std::size_t moe_ffn_workspace_bytes(std::int64_t T, std::int64_t k, std::span<const ffn_weights> routed,
                                    const ffn_weights* shared);

}  // namespace dsv4::ops
