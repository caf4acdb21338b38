// model_config: presets, config.json parsing (HF and inference spellings), validation, HF serialization.
#include "dsv4/model/config.hpp"

#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "dsv4/error.hpp"

namespace dsv4::model {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

const char* attn_kind_name(attn_kind k) {
  switch (k) {
    case attn_kind::swa: return "SWA";
    case attn_kind::csa: return "CSA";
    case attn_kind::hca: return "HCA";
  }
  return "?";
}

const char* expert_format_name(expert_format f) {
  switch (f) {
    case expert_format::detect: return "detect";
    case expert_format::fp4: return "fp4";
    case expert_format::fp8: return "fp8";
  }
  return "?";
}

int model_config::compress_ratio(std::int64_t layer) const {
  DSV4_CHECK(layer >= 0 && layer < n_layers + n_mtp_layers, "model_config", "layer ", layer, " outside [0, ",
             n_layers + n_mtp_layers, ") (", n_layers, " layers + ", n_mtp_layers, " MTP blocks)");
  DSV4_CHECK(static_cast<std::size_t>(layer) < compress_ratios.size(), "model_config", "compress_ratios has ",
             compress_ratios.size(), " entries, layer ", layer, " has none");
  return compress_ratios[static_cast<std::size_t>(layer)];
}

attn_kind model_config::kind(std::int64_t layer) const {
  const int r = compress_ratio(layer);
  return r == 0 ? attn_kind::swa : r == 4 ? attn_kind::csa : attn_kind::hca;
}

namespace {

bool is_pow2(std::int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

// Collects every violated rule so one error lists them all.
struct rule_list {
  std::string source;
  std::vector<std::string> broken;
  template <class... P>
  void check(bool ok, const P&... parts) {
    if (!ok) broken.push_back(detail::concat(parts...));
  }
  void raise() const {
    if (broken.empty()) return;
    std::string msg = source + ": invalid config (" + std::to_string(broken.size()) + " problem" +
                      (broken.size() > 1 ? "s" : "") + "):";
    for (const auto& b : broken) msg += "\n  - " + b;
    DSV4_FAIL("model_config", msg);
  }
};

}  // namespace

void model_config::validate() const {
  rule_list r{name, {}};
  r.check(vocab_size >= 1, "vocab_size ", vocab_size, " must be >= 1");
  r.check(dim >= 1, "hidden_size ", dim, " must be >= 1");
  r.check(n_layers >= 1, "num_hidden_layers ", n_layers, " must be >= 1");
  r.check(n_mtp_layers >= 0, "num_nextn_predict_layers ", n_mtp_layers, " must be >= 0");
  r.check(n_heads >= 1, "num_attention_heads ", n_heads, " must be >= 1");
  r.check(q_lora_rank >= 1, "q_lora_rank ", q_lora_rank, " must be >= 1");
  r.check(n_routed_experts >= 1, "n_routed_experts ", n_routed_experts, " must be >= 1");
  r.check(n_activated_experts >= 1 && n_activated_experts <= n_routed_experts, "num_experts_per_tok ",
          n_activated_experts, " must be in [1, n_routed_experts = ", n_routed_experts, "]");
  r.check(n_shared_experts == 0 || n_shared_experts == 1, "n_shared_experts ", n_shared_experts,
          " must be 0 or 1 (the reference asserts 1)");
  r.check(moe_inter_dim >= 1, "moe_intermediate_size ", moe_inter_dim, " must be >= 1");
  r.check(std::isfinite(route_scale) && route_scale > 0, "routed_scaling_factor ", route_scale, " must be > 0");
  r.check(std::isfinite(swiglu_limit) && swiglu_limit >= 0, "swiglu_limit ", swiglu_limit,
          " must be >= 0 (0 = no clamp)");
  r.check(std::isfinite(norm_eps) && norm_eps > 0, "rms_norm_eps ", norm_eps, " must be > 0");
  r.check(index_topk >= 1, "index_topk ", index_topk, " must be >= 1");
  r.check(rope_theta > 0 && std::isfinite(rope_theta), "rope_theta ", rope_theta, " must be > 0");
  r.check(rope_factor >= 1 && std::isfinite(rope_factor), "rope_scaling.factor ", rope_factor, " must be >= 1");
  r.check(original_seq_len >= 1, "rope_scaling.original_max_position_embeddings ", original_seq_len,
          " must be >= 1");
  r.check(beta_fast > beta_slow && beta_slow > 0, "rope_scaling.beta_fast ", beta_fast, " / beta_slow ", beta_slow,
          ": YaRN needs beta_fast > beta_slow > 0");
  r.check(max_position_embeddings >= 1, "max_position_embeddings ", max_position_embeddings, " must be >= 1");

  if (family == model_family::v32) {
    r.check(kv_lora_rank >= 1 && qk_nope_head_dim >= 1 && v_head_dim >= 1, "V3.2 needs kv_lora_rank, ",
            "qk_nope_head_dim and v_head_dim >= 1");
    r.check(n_dense_layers >= 0 && n_dense_layers <= n_layers, "first_k_dense_replace ", n_dense_layers,
            " outside [0, ", n_layers, "]");
    r.raise();
    return;
  }

  r.check(rope_head_dim > 0 && rope_head_dim % 2 == 0, "qk_rope_head_dim ", rope_head_dim,
          " must be even and > 0 (RoPE rotates channel pairs)");
  r.check(head_dim > rope_head_dim && (head_dim - rope_head_dim) % 64 == 0, "head_dim ", head_dim,
          " - qk_rope_head_dim ", rope_head_dim, " = ", head_dim - rope_head_dim,
          " must be a positive multiple of 64 (the KV FP8 round trip uses blocks of 64, spec §6.7)");
  r.check(o_groups >= 1 && n_heads % o_groups == 0, "num_attention_heads ", n_heads,
          " must be a multiple of o_groups ", o_groups);
  r.check(o_lora_rank >= 1, "o_lora_rank ", o_lora_rank, " must be >= 1");
  r.check(window_size >= 1, "sliding_window ", window_size, " must be >= 1");
  r.check(compress_rope_theta > 0 && std::isfinite(compress_rope_theta), "compress_rope_theta ",
          compress_rope_theta, " must be > 0");
  r.check(hc_mult >= 1, "hc_mult ", hc_mult, " must be >= 1");
  r.check(hc_sinkhorn_iters >= 1, "hc_sinkhorn_iters ", hc_sinkhorn_iters, " must be >= 1");
  r.check(std::isfinite(hc_eps) && hc_eps > 0, "hc_eps ", hc_eps, " must be > 0");
  r.check(n_hash_layers >= 0 && n_hash_layers <= n_layers, "num_hash_layers ", n_hash_layers, " outside [0, ",
          n_layers, "]");
  if (experts != expert_format::fp8) {
    r.check(dim % 32 == 0, "hidden_size ", dim,
            " must be a multiple of 32: FP4 experts carry one UE8M0 scale per 32 along K (spec §1.2)");
    r.check(moe_inter_dim % 32 == 0, "moe_intermediate_size ", moe_inter_dim,
            " must be a multiple of 32: FP4 experts carry one UE8M0 scale per 32 along K (spec §1.2)");
  }
  const std::int64_t need = n_layers + n_mtp_layers;
  r.check(static_cast<std::int64_t>(compress_ratios.size()) >= need, "compress_ratios has ",
          compress_ratios.size(), " entries; ", n_layers, " layers + ", n_mtp_layers, " MTP blocks need ", need);
  bool any_csa = false;
  for (std::size_t i = 0; i < compress_ratios.size(); ++i) {
    const int c = compress_ratios[i];
    r.check(c == 0 || c == 4 || c == 128, "compress_ratios[", i, "] = ", c,
            " is not a V4 layer type (0 = sliding window, 4 = CSA, 128 = HCA)");
    if (c == 4 && static_cast<std::int64_t>(i) < need) any_csa = true;
  }
  if (any_csa) {
    r.check(index_n_heads >= 1, "index_n_heads ", index_n_heads, " must be >= 1 (CSA layers have an indexer)");
    r.check(is_pow2(index_head_dim) && index_head_dim >= 32, "index_head_dim ", index_head_dim,
            " must be a power of two (Hadamard, spec §6.5) and >= 32 (FP4 blocks of 32, spec §6.3)");
    r.check(index_head_dim > rope_head_dim, "index_head_dim ", index_head_dim, " must exceed qk_rope_head_dim ",
            rope_head_dim, " (RoPE goes on the indexer head's last rope dims)");
  }
  r.raise();
}

namespace {

// Typed reads with messages that name the source and the key.
struct reader {
  const json& j;
  std::string source;

  bool has(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }

  std::int64_t get_int(const char* key, std::int64_t def) const {
    if (!has(key)) return def;
    const json& v = j.at(key);
    if (v.is_number_integer()) return v.get<std::int64_t>();
    if (v.is_number_float()) {
      const double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return static_cast<std::int64_t>(d);
    }
    DSV4_FAIL("model_config", source, ": \"", key, "\" must be an integer, got ", v.dump());
  }
  double get_num(const json& obj, const char* key, double def) const {
    if (!obj.contains(key) || obj.at(key).is_null()) return def;
    const json& v = obj.at(key);
    DSV4_CHECK(v.is_number(), "model_config", source, ": \"", key, "\" must be a number, got ", v.dump());
    return v.get<double>();
  }
  double get_num(const char* key, double def) const { return get_num(j, key, def); }
  std::string get_str(const char* key, std::string def) const {
    if (!has(key)) return def;
    DSV4_CHECK(j.at(key).is_string(), "model_config", source, ": \"", key, "\" must be a string, got ",
               j.at(key).dump());
    return j.at(key).get<std::string>();
  }
};

// Fields of releases that share the deepseek_v4 model_type but are different architectures (spec §1.1).
constexpr const char* kLaterReleaseKeys[] = {"kv_source_layer_ids", "index_source_layer_ids",
                                             "candidate_source_layer_id", "engram_layer_ids", "dspark_block_size",
                                             "text_config", "vision_config"};

expert_format parse_expert_dtype(const reader& rd, const std::string& s) {
  if (s == "fp4") return expert_format::fp4;
  if (s == "fp8") return expert_format::fp8;
  DSV4_FAIL("model_config", rd.source, ": expert_dtype \"", s, "\" is not supported (expected \"fp4\" or \"fp8\")");
}

void read_quantization(const reader& rd, const json& q, model_config& c) {
  DSV4_CHECK(q.is_object(), "model_config", rd.source, ": quantization_config must be an object");
  const std::string method = q.value("quant_method", std::string("fp8"));
  DSV4_CHECK(method == "fp8", "model_config", rd.source, ": quantization_config.quant_method \"", method,
             "\" is not supported (dsv4 reads the official fp8 checkpoints: quant_method fp8)");
  if (q.contains("fmt"))
    DSV4_CHECK(q.at("fmt") == "e4m3", "model_config", rd.source, ": quantization_config.fmt ", q.at("fmt").dump(),
               " is not supported (expected \"e4m3\")");
  if (q.contains("scale_fmt") && !q.at("scale_fmt").is_null())
    DSV4_CHECK(q.at("scale_fmt") == "ue8m0", "model_config", rd.source, ": quantization_config.scale_fmt ",
               q.at("scale_fmt").dump(), " is not supported (expected \"ue8m0\")");
  if (q.contains("weight_block_size"))
    DSV4_CHECK(q.at("weight_block_size") == json::array({128, 128}), "model_config", rd.source,
               ": quantization_config.weight_block_size ", q.at("weight_block_size").dump(),
               " is not supported (expected [128, 128])");
  if (q.contains("expert_dtype") && q.at("expert_dtype").is_string())
    c.experts = parse_expert_dtype(rd, q.at("expert_dtype").get<std::string>());
}

std::vector<int> read_ratios(const reader& rd, const json& v) {
  DSV4_CHECK(v.is_array(), "model_config", rd.source, ": compress_ratios must be an array, got ", v.dump());
  std::vector<int> out;
  for (const json& e : v) {
    DSV4_CHECK(e.is_number_integer() || (e.is_number_float() && e.get<double>() == std::floor(e.get<double>())),
               "model_config", rd.source, ": compress_ratios entries must be integers, got ", e.dump());
    const double d = e.get<double>();
    DSV4_CHECK(d >= 0 && d <= 1 << 20, "model_config", rd.source, ": compress_ratios entry ", e.dump(),
               " out of range");
    out.push_back(static_cast<int>(d));
  }
  return out;
}

model_config from_json(const json& j, std::string_view source) {
  reader rd{j, std::string(source)};
  DSV4_CHECK(j.is_object(), "model_config", rd.source, ": expected a JSON object at the top level");
  for (const char* k : kLaterReleaseKeys)
    DSV4_CHECK(!j.contains(k), "model_config", rd.source, ": field \"", k,
               "\" belongs to a later release (V4-Flash-0731 / V4.1 / DSpark / Vision), not the April 2026 V4 this "
               "library implements (spec §1.1)");

  model_config c = preset("v4-flash");  // the reference's ModelArgs defaults are the V4-Flash values
  c.name = std::string(source);
  c.compress_ratios.clear();
  c.experts = expert_format::detect;

  std::string arch;
  if (j.contains("architectures") && j.at("architectures").is_array() && !j.at("architectures").empty() &&
      j.at("architectures")[0].is_string())
    arch = j.at("architectures")[0].get<std::string>();
  const std::string model_type = rd.get_str("model_type", "");
  if (arch == "DeepseekV32ForCausalLM" || model_type == "deepseek_v32") c.family = model_family::v32;
  else if (!arch.empty() && arch != "DeepseekV4ForCausalLM")
    DSV4_FAIL("model_config", rd.source, ": architectures[0] \"", arch,
              "\" is not DeepseekV4ForCausalLM (or the DeepseekV32ForCausalLM baseline)");

  const bool hf = j.contains("hidden_size") || j.contains("num_hidden_layers");
  auto pick = [&](const char* hf_key, const char* inf_key) { return hf ? hf_key : inf_key; };

  c.vocab_size = rd.get_int("vocab_size", c.vocab_size);
  c.dim = rd.get_int(pick("hidden_size", "dim"), c.dim);
  c.n_layers = rd.get_int(pick("num_hidden_layers", "n_layers"), c.n_layers);
  c.n_mtp_layers = rd.get_int(pick("num_nextn_predict_layers", "n_mtp_layers"), c.n_mtp_layers);
  c.n_heads = rd.get_int(pick("num_attention_heads", "n_heads"), c.n_heads);
  c.head_dim = rd.get_int("head_dim", c.head_dim);
  c.rope_head_dim = rd.get_int(pick("qk_rope_head_dim", "rope_head_dim"), c.rope_head_dim);
  c.q_lora_rank = rd.get_int("q_lora_rank", c.q_lora_rank);
  c.o_lora_rank = rd.get_int("o_lora_rank", c.o_lora_rank);
  c.o_groups = rd.get_int("o_groups", c.o_groups);
  c.window_size = rd.get_int(pick("sliding_window", "window_size"), c.window_size);
  if (rd.has("compress_ratios")) c.compress_ratios = read_ratios(rd, j.at("compress_ratios"));
  c.rope_theta = rd.get_num("rope_theta", c.rope_theta);
  c.compress_rope_theta = rd.get_num("compress_rope_theta", c.compress_rope_theta);
  if (hf) {
    if (rd.has("rope_scaling")) {
      const json& rs = j.at("rope_scaling");
      DSV4_CHECK(rs.is_object(), "model_config", rd.source, ": rope_scaling must be an object");
      const std::string type = rs.value("type", rs.value("rope_type", std::string("yarn")));
      DSV4_CHECK(type == "yarn", "model_config", rd.source, ": rope_scaling type \"", type,
                 "\" is not supported (V4 uses yarn)");
      c.rope_factor = rd.get_num(rs, "factor", c.rope_factor);
      c.original_seq_len = static_cast<std::int64_t>(
          rd.get_num(rs, "original_max_position_embeddings", static_cast<double>(c.original_seq_len)));
      c.beta_fast = rd.get_num(rs, "beta_fast", c.beta_fast);
      c.beta_slow = rd.get_num(rs, "beta_slow", c.beta_slow);
      for (const char* k : {"mscale", "mscale_all_dim"})
        if (rs.contains(k) && c.family == model_family::v4)
          DSV4_CHECK(rs.at(k).is_number() && rs.at(k).get<double>() == 1.0, "model_config", rd.source,
                     ": rope_scaling.", k, " = ", rs.at(k).dump(),
                     ": V4 has no YaRN attention temperature (spec §3.1); only 1.0 is accepted");
    }
    c.max_position_embeddings = rd.get_int("max_position_embeddings", c.max_position_embeddings);
  } else {
    c.rope_factor = rd.get_num("rope_factor", c.rope_factor);
    c.original_seq_len = rd.get_int("original_seq_len", c.original_seq_len);
    c.beta_fast = rd.get_num("beta_fast", c.beta_fast);
    c.beta_slow = rd.get_num("beta_slow", c.beta_slow);
    c.max_position_embeddings = rd.get_int("max_seq_len", c.max_position_embeddings);
  }
  c.index_n_heads = rd.get_int("index_n_heads", c.index_n_heads);
  c.index_head_dim = rd.get_int("index_head_dim", c.index_head_dim);
  c.index_topk = rd.get_int("index_topk", c.index_topk);
  c.hc_mult = rd.get_int("hc_mult", c.hc_mult);
  c.hc_sinkhorn_iters = static_cast<int>(rd.get_int("hc_sinkhorn_iters", c.hc_sinkhorn_iters));
  c.hc_eps = rd.get_num("hc_eps", c.hc_eps);
  c.n_routed_experts = rd.get_int("n_routed_experts", c.n_routed_experts);
  c.n_shared_experts = rd.get_int("n_shared_experts", c.n_shared_experts);
  c.n_activated_experts = rd.get_int(pick("num_experts_per_tok", "n_activated_experts"), c.n_activated_experts);
  c.moe_inter_dim = rd.get_int(pick("moe_intermediate_size", "moe_inter_dim"), c.moe_inter_dim);
  {
    const std::string s = rd.get_str(pick("scoring_func", "score_func"), ops::score_func_name(c.score));
    try {
      c.score = ops::parse_score_func(s);
    } catch (const error&) {
      DSV4_FAIL("model_config", rd.source, ": unknown scoring function \"", s,
                "\" (expected sqrtsoftplus, sigmoid or softmax)");
    }
  }
  c.route_scale = rd.get_num(pick("routed_scaling_factor", "route_scale"), c.route_scale);
  c.swiglu_limit = rd.get_num("swiglu_limit", c.family == model_family::v32 ? 0.0 : c.swiglu_limit);
  c.norm_eps = rd.get_num(pick("rms_norm_eps", "norm_eps"), c.norm_eps);
  c.n_hash_layers = rd.get_int(pick("num_hash_layers", "n_hash_layers"),
                               c.family == model_family::v32 ? 0 : c.n_hash_layers);
  if (rd.has("quantization_config")) read_quantization(rd, j.at("quantization_config"), c);
  if (rd.has("expert_dtype")) c.experts = parse_expert_dtype(rd, rd.get_str("expert_dtype", ""));
  if (!hf && rd.has("scale_fmt"))
    DSV4_CHECK(rd.get_str("scale_fmt", "") == "ue8m0", "model_config", rd.source, ": scale_fmt \"",
               rd.get_str("scale_fmt", ""), "\" is not supported (expected \"ue8m0\")");

  // Things V4 does not have and this library does not implement: refuse rather than run something else.
  if (c.family == model_family::v4) {
    DSV4_CHECK(rd.get_int("num_key_value_heads", 1) == 1, "model_config", rd.source,
               ": num_key_value_heads must be 1 (V4 has one shared K=V head)");
    DSV4_CHECK(!j.value("tie_word_embeddings", false), "model_config", rd.source,
               ": tie_word_embeddings = true is not V4 (embed and head are separate tensors)");
    DSV4_CHECK(j.value("norm_topk_prob", true), "model_config", rd.source,
               ": norm_topk_prob = false is not supported (V4 normalizes the selected scores)");
    DSV4_CHECK(rd.get_int("n_group", 1) <= 1 && rd.get_int("topk_group", 1) <= 1, "model_config", rd.source,
               ": group-limited routing (n_group / topk_group > 1) is not V4");
    DSV4_CHECK(rd.get_int("first_k_dense_replace", 0) == 0, "model_config", rd.source,
               ": first_k_dense_replace > 0 (dense FFN layers) is not V4; every V4 layer is MoE");
    DSV4_CHECK(rd.get_str("hidden_act", "silu") == "silu", "model_config", rd.source, ": hidden_act \"",
               rd.get_str("hidden_act", ""), "\" is not supported (V4 experts are SwiGLU)");
    DSV4_CHECK(rd.has("compress_ratios"), "model_config", rd.source,
               ": compress_ratios is missing (it selects each layer's attention type, spec §2)");
  } else {
    c.kv_lora_rank = rd.get_int("kv_lora_rank", 512);
    c.qk_nope_head_dim = rd.get_int("qk_nope_head_dim", 128);
    c.v_head_dim = rd.get_int("v_head_dim", 128);
    c.head_dim = c.qk_nope_head_dim + c.rope_head_dim;
    c.n_dense_layers = rd.get_int(pick("first_k_dense_replace", "n_dense_layers"), 3);
    c.dense_inter_dim = rd.get_int(pick("intermediate_size", "inter_dim"), 18432);
    c.experts = expert_format::fp8;
    c.hc_mult = 0;
  }
  c.validate();
  return c;
}

std::string read_text(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  DSV4_CHECK(f.good(), "model_config", "cannot open ", p.string());
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

}  // namespace

model_config parse_config(std::string_view text, std::string_view source) {
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    DSV4_FAIL("model_config", source, ": not valid JSON (", e.what(), ")");
  }
  return from_json(j, source);
}

model_config load_config(const std::filesystem::path& path) {
  const std::filesystem::path file = std::filesystem::is_directory(path) ? path / "config.json" : path;
  DSV4_CHECK(std::filesystem::is_regular_file(file), "model_config", "no config file at ", file.string());
  return parse_config(read_text(file), file.string());
}

std::string to_hf_json(const model_config& c) {
  DSV4_CHECK(c.family == model_family::v4, "to_hf_json", c.name, ": only V4 configs are written");
  // Keys in the order of the official file (alphabetical, then compress_rope_theta and compress_ratios).
  ojson j;
  j["architectures"] = {"DeepseekV4ForCausalLM"};
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["bos_token_id"] = 0;
  j["eos_token_id"] = 1;
  if (c.experts != expert_format::detect) j["expert_dtype"] = expert_format_name(c.experts);
  j["hc_eps"] = c.hc_eps;
  j["hc_mult"] = c.hc_mult;
  j["hc_sinkhorn_iters"] = c.hc_sinkhorn_iters;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["hidden_size"] = c.dim;
  j["index_head_dim"] = c.index_head_dim;
  j["index_n_heads"] = c.index_n_heads;
  j["index_topk"] = c.index_topk;
  j["initializer_range"] = 0.02;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["model_type"] = "deepseek_v4";
  j["moe_intermediate_size"] = c.moe_inter_dim;
  j["n_routed_experts"] = c.n_routed_experts;
  j["n_shared_experts"] = c.n_shared_experts;
  j["norm_topk_prob"] = true;
  j["num_attention_heads"] = c.n_heads;
  j["num_experts_per_tok"] = c.n_activated_experts;
  j["num_hidden_layers"] = c.n_layers;
  j["num_hash_layers"] = c.n_hash_layers;
  j["num_key_value_heads"] = 1;
  j["num_nextn_predict_layers"] = c.n_mtp_layers;
  j["o_groups"] = c.o_groups;
  j["o_lora_rank"] = c.o_lora_rank;
  j["q_lora_rank"] = c.q_lora_rank;
  j["qk_rope_head_dim"] = c.rope_head_dim;
  j["quantization_config"] = {{"activation_scheme", "dynamic"}, {"fmt", "e4m3"}, {"quant_method", "fp8"},
                              {"scale_fmt", "ue8m0"}, {"weight_block_size", {128, 128}}};
  j["rms_norm_eps"] = c.norm_eps;
  j["rope_scaling"] = {{"beta_fast", c.beta_fast}, {"beta_slow", c.beta_slow}, {"factor", c.rope_factor},
                       {"original_max_position_embeddings", c.original_seq_len}, {"type", "yarn"}};
  j["rope_theta"] = c.rope_theta;
  j["routed_scaling_factor"] = c.route_scale;
  j["scoring_func"] = ops::score_func_name(c.score);
  j["sliding_window"] = c.window_size;
  j["swiglu_limit"] = c.swiglu_limit;
  j["tie_word_embeddings"] = false;
  j["topk_method"] = "noaux_tc";
  j["torch_dtype"] = "bfloat16";
  j["use_cache"] = true;
  j["vocab_size"] = c.vocab_size;
  j["compress_rope_theta"] = c.compress_rope_theta;
  j["compress_ratios"] = c.compress_ratios;
  return j.dump(2) + "\n";
}

// ---- presets ------------------------------------------------------------------------------------------------

namespace {

// [head..., then (a, b) repeated, then tail...]
std::vector<int> ratios(std::initializer_list<int> head, int a, int b, int pairs, std::initializer_list<int> tail) {
  std::vector<int> v(head);
  for (int i = 0; i < pairs; ++i) {
    v.push_back(a);
    v.push_back(b);
  }
  v.insert(v.end(), tail);
  return v;
}

model_config flash() {
  model_config c;  // the member defaults are V4-Flash (spec §1.1, verified against the official config.json)
  c.name = "v4-flash";
  c.compress_ratios = ratios({0, 0}, 4, 128, 20, {4, 0});  // 44 entries: layers 0..42, then the MTP block
  return c;
}

model_config pro() {
  model_config c = flash();
  c.name = "v4-pro";  // spec §1.1, column V4-Pro
  c.dim = 7168;
  c.n_layers = 61;
  c.n_heads = 128;
  c.q_lora_rank = 1536;
  c.o_groups = 16;
  c.index_topk = 1024;
  c.n_routed_experts = 384;
  c.moe_inter_dim = 3072;
  c.route_scale = 2.5;
  c.compress_ratios = ratios({128, 128}, 4, 128, 29, {4, 0});  // 62 entries
  return c;
}

model_config v32() {
  model_config c;
  c.name = "v3.2";  // spec §1.1 column 3 (DeepSeek-V3.2-Exp config_671B_v3.2.json, S4)
  c.family = model_family::v32;
  c.dim = 7168;
  c.n_layers = 61;
  c.n_mtp_layers = 1;
  c.n_heads = 128;
  c.q_lora_rank = 1536;
  c.kv_lora_rank = 512;
  c.qk_nope_head_dim = 128;
  c.rope_head_dim = 64;
  c.v_head_dim = 128;
  c.head_dim = 192;  // 128 nope + 64 rope (q/k)
  c.o_lora_rank = 0;
  c.o_groups = 1;
  c.window_size = 0;
  c.rope_factor = 40;
  c.original_seq_len = 4096;
  c.max_position_embeddings = 163840;
  c.index_n_heads = 64;
  c.index_head_dim = 128;
  c.index_topk = 2048;  // tokens, not compressed entries
  c.hc_mult = 0;        // no mHC
  c.n_routed_experts = 256;
  c.n_activated_experts = 8;
  c.moe_inter_dim = 2048;
  c.score = ops::score_func::sigmoid;
  c.route_scale = 2.5;
  c.swiglu_limit = 0;
  c.n_hash_layers = 0;
  c.experts = expert_format::fp8;
  c.n_dense_layers = 3;
  c.dense_inter_dim = 18432;
  return c;
}

// Test shapes: deliberately unlike V4-Flash (head_dim 96 with rope 32, window 16, top-k 4, 4 layers covering SWA,
// CSA and HCA, one hash layer) so nothing can silently assume the published sizes.
model_config tiny() {
  model_config c = flash();
  c.name = "tiny";
  c.vocab_size = 512;
  c.dim = 64;
  c.n_layers = 4;
  c.n_heads = 2;
  c.head_dim = 96;
  c.rope_head_dim = 32;
  c.q_lora_rank = 64;
  c.o_lora_rank = 32;
  c.o_groups = 2;
  c.window_size = 16;
  c.compress_ratios = {0, 4, 128, 4, 0};
  c.rope_factor = 4;
  c.original_seq_len = 64;
  c.max_position_embeddings = 4096;
  c.index_n_heads = 2;
  c.index_head_dim = 64;
  c.index_topk = 4;
  c.n_routed_experts = 8;
  c.n_activated_experts = 2;
  c.moe_inter_dim = 64;
  c.n_hash_layers = 1;
  return c;
}

// Demo shape: V4's proportions at a size that runs in well under a second per token on two cores.
model_config small() {
  model_config c = flash();
  c.name = "small";
  c.vocab_size = 1024;
  c.dim = 256;
  c.n_layers = 6;
  c.n_heads = 4;
  c.head_dim = 128;
  c.rope_head_dim = 64;
  c.q_lora_rank = 128;
  c.o_lora_rank = 64;
  c.o_groups = 2;
  c.window_size = 32;
  c.compress_ratios = {0, 4, 128, 4, 128, 4, 0};
  c.original_seq_len = 1024;
  c.max_position_embeddings = 65536;
  c.index_n_heads = 4;
  c.index_head_dim = 128;
  c.index_topk = 16;
  c.n_routed_experts = 16;
  c.n_activated_experts = 4;
  c.moe_inter_dim = 128;
  c.n_hash_layers = 2;
  return c;
}

}  // namespace

std::vector<std::string> preset_names() { return {"v4-flash", "v4-pro", "v3.2", "tiny", "small"}; }

model_config preset(std::string_view name) {
  if (name == "v4-flash") return flash();
  if (name == "v4-pro") return pro();
  if (name == "v3.2") return v32();
  if (name == "tiny") return tiny();
  if (name == "small") return small();
  std::string names;
  for (const auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
  DSV4_FAIL("model_config", "unknown preset \"", name, "\" (presets: ", names, ")");
}

}  // namespace dsv4::model
