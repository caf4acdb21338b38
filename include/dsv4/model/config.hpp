// dsv4/model/config.hpp — one model_config for every DeepSeek-V4 shape, read from a checkpoint's config.json.
//
// Two spellings are accepted (spec §1.1): the HF `config.json` beside the safetensors (hidden_size,
// num_hidden_layers, rope_scaling{...}, ...) and the reference code's `inference/config.json` (dim, n_layers,
// rope_factor, ...). Fields a file omits take the reference's ModelArgs defaults, which are the V4-Flash values.
// Built-in presets: v4-flash, v4-pro (spec §1.1), v3.2 (the baseline the report compares with; calculator only),
// and the small test/demo shapes `tiny` and `small` (ours; they keep every architecture rule of spec §10).
//
// validate() enforces what the blocks rely on and names the field and the rule on failure: ratios in {0, 4, 128},
// head_dim - rope dim a positive multiple of 64 (the KV FP8 round trip uses blocks of 64, spec §6.7), an indexer
// head dim that is a power of two (Hadamard, spec §6.5) and a multiple of 32 (FP4 blocks), K dims of FP4 experts
// a multiple of 32 (spec §1.2), n_heads divisible by o_groups, etc.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "dsv4/ops/moe.hpp"

namespace dsv4::model {

enum class model_family : std::uint8_t { v4, v32 };

// Upper bounds validate() enforces on a config (ours: each at least 8x the V4-Pro value, spec §1.1). They keep
// every product of config fields that sizes a tensor, a buffer or an index far inside int64 (the largest, experts x
// moe_inter x dim x layers, stays below 2^61), so a hostile config.json is refused by name instead of overflowing.
namespace limits {
inline constexpr std::int64_t vocab = 1 << 24;           // V4: 129,280
inline constexpr std::int64_t dim = 1 << 16;             // V4-Pro: 7,168
inline constexpr std::int64_t layers = 1024;             // V4-Pro: 61
inline constexpr std::int64_t mtp_layers = 64;           // V4: 1
inline constexpr std::int64_t heads = 4096;              // V4-Pro: 128 (and 64 indexer heads)
inline constexpr std::int64_t head_dim = 1 << 14;        // V4: 512 (indexer 128)
inline constexpr std::int64_t rank = 1 << 16;            // q_lora / o_lora ranks, V4-Pro: 1,536 / 1,024
inline constexpr std::int64_t positions = 1 << 30;       // max_position_embeddings, V4: 2^20
inline constexpr std::int64_t hc_mult = 64;              // V4: 4
inline constexpr std::int64_t sinkhorn_iters = 10000;    // V4: 20
inline constexpr std::int64_t experts = 1 << 16;         // V4-Pro: 384
inline constexpr std::int64_t moe_inter = 1 << 18;       // V4-Pro: 3,072
inline constexpr double real = 1e12;                     // theta, factor, beta, scales: finite and below this
}  // namespace limits

// Attention type of a layer, from its compress ratio (spec §2): 0 → sliding window only, 4 → CSA, 128 → HCA.
enum class attn_kind : std::uint8_t { swa, csa, hca };
const char* attn_kind_name(attn_kind k);

// How routed experts are stored: FP4 (I8-packed E2M1 + E8M0 per 1x32, the official checkpoints), FP8 (128x128 tiles,
// convert.py --expert-dtype fp8), or unknown until the checkpoint is seen (config.json without `expert_dtype`:
// the binder takes whichever of the two the tensors are).
enum class expert_format : std::uint8_t { detect, fp4, fp8 };
const char* expert_format_name(expert_format f);

struct model_config {
  std::string name = "custom";  // preset name, or the file it was read from
  model_family family = model_family::v4;

  std::int64_t vocab_size = 129280;
  std::int64_t dim = 4096;            // hidden_size
  std::int64_t n_layers = 43;         // num_hidden_layers
  std::int64_t n_mtp_layers = 1;      // num_nextn_predict_layers
  std::int64_t n_heads = 64;          // num_attention_heads
  std::int64_t head_dim = 512;        // the single shared K=V head's width too
  std::int64_t rope_head_dim = 64;    // qk_rope_head_dim: the last rope_head_dim channels are rotated
  std::int64_t q_lora_rank = 1024;
  std::int64_t o_lora_rank = 1024;
  std::int64_t o_groups = 8;
  std::int64_t window_size = 128;     // sliding_window
  std::vector<int> compress_ratios;   // one per layer, then one per MTP block (may be longer than n_layers)

  double rope_theta = 10000.0;            // ratio-0 layers, no YaRN
  double compress_rope_theta = 160000.0;  // compressed layers, with YaRN
  double rope_factor = 16.0;              // rope_scaling.factor
  std::int64_t original_seq_len = 65536;  // rope_scaling.original_max_position_embeddings
  double beta_fast = 32.0, beta_slow = 1.0;
  std::int64_t max_position_embeddings = 1048576;

  std::int64_t index_n_heads = 64;
  std::int64_t index_head_dim = 128;
  std::int64_t index_topk = 512;          // counts compressed entries (V4) or tokens (V3.2)

  std::int64_t hc_mult = 4;
  int hc_sinkhorn_iters = 20;
  double hc_eps = 1e-6;

  std::int64_t n_routed_experts = 256;
  std::int64_t n_shared_experts = 1;
  std::int64_t n_activated_experts = 6;   // num_experts_per_tok
  std::int64_t moe_inter_dim = 2048;      // moe_intermediate_size
  ops::score_func score = ops::score_func::sqrtsoftplus;
  double route_scale = 1.5;               // routed_scaling_factor
  double swiglu_limit = 10.0;             // 0 = no clamp
  double norm_eps = 1e-6;                 // rms_norm_eps
  std::int64_t n_hash_layers = 3;         // num_hash_layers: layers [0, n_hash_layers) route by tid2eid
  expert_format experts = expert_format::fp4;

  // V3.2 baseline only (family v32; spec §1.1 column 3), used by the FLOPs / KV calculator.
  std::int64_t kv_lora_rank = 0;       // MLA latent
  std::int64_t qk_nope_head_dim = 0;
  std::int64_t v_head_dim = 0;
  std::int64_t n_dense_layers = 0;     // first_k_dense_replace
  std::int64_t dense_inter_dim = 0;    // intermediate_size of those dense layers

  // Ratio of layer i in [0, n_layers + n_mtp_layers): MTP block j is layer n_layers + j (spec §2).
  int compress_ratio(std::int64_t layer) const;
  attn_kind kind(std::int64_t layer) const;
  // Hash routing for main layers below n_hash_layers; never for an MTP block (the checkpoint has a gate bias and
  // no tid2eid there).
  bool hash_routed(std::int64_t layer) const { return layer < n_hash_layers && layer < n_layers; }
  std::int64_t nope_head_dim() const { return head_dim - rope_head_dim; }  // 448 = 512 - 64 in V4
  std::int64_t hc_mix_dim() const { return (2 + hc_mult) * hc_mult; }      // 24 = pre 4 + post 4 + comb 16

  // Throws dsv4::error("model_config", ...) naming the source, the field and the rule.
  void validate() const;

  bool operator==(const model_config&) const = default;  // every field, the name included
};

// Parses config.json text (either spelling). `source` names the file in messages. The result is validated.
model_config parse_config(std::string_view json_text, std::string_view source = "config.json");
// Reads `path`, or `path`/config.json when path is a directory.
model_config load_config(const std::filesystem::path& path);

// The HF config.json text of a V4 config (what `dsv4 synth` writes; parse_config reads it back to the same config).
std::string to_hf_json(const model_config& cfg);

// Built-in presets by name; an error lists the names.
model_config preset(std::string_view name);
std::vector<std::string> preset_names();

}  // namespace dsv4::model
