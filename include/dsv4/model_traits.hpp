// dsv4/model_traits.hpp — published dimensions of the DeepSeek-V4 models, keyed by model (spec §1.1: verified in
// the official config.json files S1/S2 and the report S3). Benches and examples take shapes from here; the runtime
// model_config (read from a checkpoint's config.json) is the authority for a loaded model.
#pragma once

#include <cstdint>

namespace dsv4 {

struct v4_flash_traits {
  static constexpr const char* name = "V4-Flash";
  static constexpr std::int64_t dim = 4096;              // hidden_size
  static constexpr std::int64_t n_layers = 43;           // num_hidden_layers
  static constexpr std::int64_t hc_mult = 4;             // mHC streams
  static constexpr int hc_sinkhorn_iters = 20;
  static constexpr std::int64_t n_routed_experts = 256;
  static constexpr std::int64_t n_activated_experts = 6;  // num_experts_per_tok
  static constexpr std::int64_t moe_inter_dim = 2048;    // moe_intermediate_size
  static constexpr float route_scale = 1.5f;             // routed_scaling_factor
  static constexpr float swiglu_limit = 10.f;
  static constexpr std::int64_t n_hash_layers = 3;
  static constexpr std::int64_t vocab_size = 129280;
};

struct v4_pro_traits {
  static constexpr const char* name = "V4-Pro";
  static constexpr std::int64_t dim = 7168;
  static constexpr std::int64_t n_layers = 61;
  static constexpr std::int64_t hc_mult = 4;
  static constexpr int hc_sinkhorn_iters = 20;
  static constexpr std::int64_t n_routed_experts = 384;
  static constexpr std::int64_t n_activated_experts = 6;
  static constexpr std::int64_t moe_inter_dim = 3072;
  static constexpr float route_scale = 2.5f;
  static constexpr float swiglu_limit = 10.f;
  static constexpr std::int64_t n_hash_layers = 3;
  static constexpr std::int64_t vocab_size = 129280;
};

}  // namespace dsv4
