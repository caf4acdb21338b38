// model_config: presets, config.json parsing (HF and inference spellings), validation, HF serialization.
#include "dsv4/model/config.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "dsv4/error.hpp"
#include "dsv4/io/file.hpp"
#include "io/json_text.hpp"

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
  std::size_t count = 0;  // all broken rules; the first kShow are kept, so a 10^5-entry array gives one short error
  static constexpr std::size_t kShow = 12;
  template <class... P>
  void check(bool ok, const P&... parts) {
    if (ok) return;
    if (count++ < kShow) broken.push_back(detail::concat(parts...));
  }
  void raise() const {
    if (broken.empty()) return;
    std::string msg = source + ": invalid config (" + std::to_string(count) + " problem" + (count > 1 ? "s" : "") +
                      "):";
    for (const auto& b : broken) msg += "\n  - " + b;
    if (count > broken.size()) msg += "\n  - ... and " + std::to_string(count - broken.size()) + " more";
    DSV4_FAIL("model_config", msg);
  }
};

}  // namespace

void model_config::validate() const {
  namespace L = limits;
  rule_list r{detail::printable(name, 400), {}};
  // Every integer within [lo, hi] (the caps of dsv4/model/config.hpp keep all products of them inside int64).
  auto in = [&](const char* field, std::int64_t v, std::int64_t lo, std::int64_t hi, const char* why = "") {
    r.check(v >= lo && v <= hi, field, " ", v, " must be in [", lo, ", ", hi, "]", why);
    return v >= lo && v <= hi;
  };
  auto real = [&](const char* field, double v, double lo, bool lo_open) {
    const bool ok = std::isfinite(v) && (lo_open ? v > lo : v >= lo) && v <= L::real;
    r.check(ok, field, " ", v, lo_open ? " must be > " : " must be >= ", lo, " and finite (at most ", L::real, ")");
    return ok;
  };
  in("vocab_size", vocab_size, 1, L::vocab);
  in("hidden_size", dim, 1, L::dim);
  const bool layers_ok = in("num_hidden_layers", n_layers, 1, L::layers) &
                         in("num_nextn_predict_layers", n_mtp_layers, 0, L::mtp_layers);
  in("num_attention_heads", n_heads, 1, L::heads);
  in("q_lora_rank", q_lora_rank, 1, L::rank);
  in("n_routed_experts", n_routed_experts, 1, L::experts);
  in("max_position_embeddings", max_position_embeddings, 1, L::positions);
  r.check(n_activated_experts >= 1 && n_activated_experts <= n_routed_experts, "num_experts_per_tok ",
          n_activated_experts, " must be in [1, n_routed_experts = ", n_routed_experts, "]");
  r.check(n_shared_experts == 0 || n_shared_experts == 1, "n_shared_experts ", n_shared_experts,
          " must be 0 or 1 (the reference asserts 1)");
  in("moe_intermediate_size", moe_inter_dim, 1, L::moe_inter);
  real("routed_scaling_factor", route_scale, 0, true);
  real("swiglu_limit", swiglu_limit, 0, false);
  r.check(std::isfinite(norm_eps) && norm_eps > 0 && norm_eps < 1, "rms_norm_eps ", norm_eps, " must be in (0, 1)");
  in("index_topk", index_topk, 1, L::positions);  // buffers hold min(index_topk, entries that exist)
  // YaRN divides by log(theta) (spec §3.1), and a theta of 1 or less has no frequencies to spread.
  real("rope_theta", rope_theta, 1, true);
  real("rope_scaling.factor", rope_factor, 1, false);
  in("rope_scaling.original_max_position_embeddings", original_seq_len, 1, L::positions);
  if (real("rope_scaling.beta_fast", beta_fast, 0, true) && real("rope_scaling.beta_slow", beta_slow, 0, true))
    r.check(beta_fast > beta_slow, "rope_scaling.beta_fast ", beta_fast, " / beta_slow ", beta_slow,
            ": YaRN needs beta_fast > beta_slow > 0");

  if (family == model_family::v32) {
    in("kv_lora_rank", kv_lora_rank, 1, L::rank);
    in("qk_nope_head_dim", qk_nope_head_dim, 1, L::head_dim);
    in("v_head_dim", v_head_dim, 1, L::head_dim);
    in("intermediate_size", dense_inter_dim, 0, L::moe_inter);
    r.check(n_dense_layers >= 0 && n_dense_layers <= n_layers, "first_k_dense_replace ", n_dense_layers,
            " outside [0, ", n_layers, "]");
    r.raise();
    return;
  }

  const bool hd_ok = in("head_dim", head_dim, 1, L::head_dim);
  const bool rd_ok = rope_head_dim > 0 && rope_head_dim % 2 == 0 && rope_head_dim <= L::head_dim;
  r.check(rd_ok, "qk_rope_head_dim ", rope_head_dim, " must be even, > 0 and at most ", L::head_dim,
          " (RoPE rotates channel pairs)");
  if (hd_ok && rd_ok)  // both bounded: the difference cannot overflow
    r.check(head_dim > rope_head_dim && (head_dim - rope_head_dim) % 64 == 0, "head_dim ", head_dim,
            " - qk_rope_head_dim ", rope_head_dim, " = ", head_dim - rope_head_dim,
            " must be a positive multiple of 64 (the KV FP8 round trip uses blocks of 64, spec §6.7)");
  r.check(o_groups >= 1 && o_groups <= L::heads && n_heads % o_groups == 0, "num_attention_heads ", n_heads,
          " must be a multiple of o_groups ", o_groups);
  in("o_lora_rank", o_lora_rank, 1, L::rank);
  // A window longer than the context is harmless (buffers hold min(window, capacity) rows), so only the global cap.
  in("sliding_window", window_size, 1, L::positions);
  real("compress_rope_theta", compress_rope_theta, 1, true);
  in("hc_mult", hc_mult, 1, L::hc_mult);
  in("hc_sinkhorn_iters", hc_sinkhorn_iters, 1, L::sinkhorn_iters);
  r.check(std::isfinite(hc_eps) && hc_eps > 0 && hc_eps < 1, "hc_eps ", hc_eps, " must be in (0, 1)");
  r.check(n_hash_layers >= 0 && n_hash_layers <= n_layers, "num_hash_layers ", n_hash_layers, " outside [0, ",
          n_layers, "]");
  if (experts != expert_format::fp8) {
    r.check(dim % 32 == 0, "hidden_size ", dim,
            " must be a multiple of 32: FP4 experts carry one UE8M0 scale per 32 along K (spec §1.2)");
    r.check(moe_inter_dim % 32 == 0, "moe_intermediate_size ", moe_inter_dim,
            " must be a multiple of 32: FP4 experts carry one UE8M0 scale per 32 along K (spec §1.2)");
  }
  const std::int64_t need = layers_ok ? n_layers + n_mtp_layers : 0;
  r.check(!layers_ok || static_cast<std::int64_t>(compress_ratios.size()) >= need, "compress_ratios has ",
          compress_ratios.size(), " entries; ", n_layers, " layers + ", n_mtp_layers, " MTP blocks need ", need);
  bool any_csa = false;
  for (std::size_t i = 0; i < compress_ratios.size(); ++i) {
    const int c = compress_ratios[i];
    r.check(c == 0 || c == 4 || c == 128, "compress_ratios[", i, "] = ", c,
            " is not a V4 layer type (0 = sliding window, 4 = CSA, 128 = HCA)");
    if (c == 4 && static_cast<std::int64_t>(i) < need) any_csa = true;
  }
  if (any_csa) {
    in("index_n_heads", index_n_heads, 1, L::heads, " (CSA layers have an indexer)");
    r.check(is_pow2(index_head_dim) && index_head_dim >= 32 && index_head_dim <= L::head_dim, "index_head_dim ",
            index_head_dim,
            " must be a power of two (Hadamard, spec §6.5) and >= 32 (FP4 blocks of 32, spec §6.3)");
    r.check(!rd_ok || index_head_dim > rope_head_dim, "index_head_dim ", index_head_dim, " must exceed qk_rope_head_dim ",
            rope_head_dim, " (RoPE goes on the indexer head's last rope dims)");
  }
  r.raise();
}

namespace {

// A JSON value described for a message without ever dumping more than a few dozen bytes of it.
std::string describe(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return v.get<bool>() ? "true" : "false";
    case json::value_t::string: return "\"" + detail::printable(v.get_ref<const std::string&>(), 40) + "\"";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
    case json::value_t::number_float: return detail::printable(v.dump(), 40);
    case json::value_t::object: return "an object";
    case json::value_t::array: return "an array of " + std::to_string(v.size());
    default: return "a value of another kind";
  }
}

// Typed reads with messages that name the source and the key; `prefix` names a nested object ("rope_scaling.").
// Every integer is range-checked before it is narrowed, a float is accepted for an integer field only when it is an
// exact integer, and a value of the wrong JSON type is an error naming the field (never an escaping type_error).
struct reader {
  const json& j;
  std::string source;
  std::string prefix;

  bool has(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }

  [[noreturn]] void bad(const char* key, const char* want) const {
    DSV4_FAIL("model_config", source, ": \"", prefix, key, "\" must be ", want, ", got ", describe(j.at(key)));
  }

  std::int64_t get_int(const char* key, std::int64_t def, std::int64_t lo, std::int64_t hi) const {
    if (!has(key)) return def;
    const json& v = j.at(key);
    std::int64_t out = 0;
    if (v.is_number_unsigned()) {
      const std::uint64_t u = v.get<std::uint64_t>();
      if (u > static_cast<std::uint64_t>(hi)) out_of_range(key, lo, hi);
      out = static_cast<std::int64_t>(u);
    } else if (v.is_number_integer()) {
      out = v.get<std::int64_t>();
    } else if (v.is_number_float()) {
      const double d = v.get<double>();
      // Exact integers only, and only where the double is exact (|d| < 2^53); the range check comes before the
      // conversion so no float-to-int conversion is ever undefined.
      if (!(std::isfinite(d) && d == std::floor(d))) bad(key, "an integer");
      if (d < static_cast<double>(lo) || d > static_cast<double>(hi) || std::fabs(d) >= 9007199254740992.0)
        out_of_range(key, lo, hi);
      out = static_cast<std::int64_t>(d);
    } else {
      bad(key, "an integer");
    }
    if (out < lo || out > hi) out_of_range(key, lo, hi);
    return out;
  }
  [[noreturn]] void out_of_range(const char* key, std::int64_t lo, std::int64_t hi) const {
    if (hi == std::numeric_limits<std::int64_t>::max())
      DSV4_FAIL("model_config", source, ": \"", prefix, key, "\" = ", describe(j.at(key)),
                " does not fit a 64-bit integer");
    DSV4_FAIL("model_config", source, ": \"", prefix, key, "\" = ", describe(j.at(key)), " is outside [", lo, ", ",
              hi, "]");
  }
  double get_num(const char* key, double def) const {
    if (!has(key)) return def;
    const json& v = j.at(key);
    if (!v.is_number()) bad(key, "a number");
    const double d = v.get<double>();
    if (!std::isfinite(d)) bad(key, "a finite number");
    return d;
  }
  bool get_bool(const char* key, bool def) const {
    if (!has(key)) return def;
    if (!j.at(key).is_boolean()) bad(key, "true or false");
    return j.at(key).get<bool>();
  }
  std::string get_str(const char* key, std::string def) const {
    if (!has(key)) return def;
    if (!j.at(key).is_string()) bad(key, "a string");
    return j.at(key).get<std::string>();
  }
  // A nested object (absent: nullopt).
  std::optional<reader> object(const char* key) const {
    if (!has(key)) return std::nullopt;
    if (!j.at(key).is_object()) bad(key, "an object");
    return reader{j.at(key), source, prefix + key + "."};
  }
};

// Fields of releases that share the deepseek_v4 model_type but are different architectures (spec §1.1).
constexpr const char* kLaterReleaseKeys[] = {"kv_source_layer_ids", "index_source_layer_ids",
                                             "candidate_source_layer_id", "engram_layer_ids", "dspark_block_size",
                                             "text_config", "vision_config"};

expert_format parse_expert_dtype(const reader& rd, const std::string& s) {
  if (s == "fp4") return expert_format::fp4;
  if (s == "fp8") return expert_format::fp8;
  DSV4_FAIL("model_config", rd.source, ": expert_dtype \"", detail::printable(s, 40),
            "\" is not supported (expected \"fp4\" or \"fp8\")");
}

void read_quantization(const reader& q, model_config& c) {
  const std::string method = q.get_str("quant_method", "fp8");
  DSV4_CHECK(method == "fp8", "model_config", q.source, ": quantization_config.quant_method \"",
             detail::printable(method, 40), "\" is not supported (dsv4 reads the official fp8 checkpoints: ",
             "quant_method fp8)");
  const std::string fmt = q.get_str("fmt", "e4m3");
  DSV4_CHECK(fmt == "e4m3", "model_config", q.source, ": quantization_config.fmt \"", detail::printable(fmt, 40),
             "\" is not supported (expected \"e4m3\")");
  const std::string scale_fmt = q.get_str("scale_fmt", "ue8m0");
  DSV4_CHECK(scale_fmt == "ue8m0", "model_config", q.source, ": quantization_config.scale_fmt \"",
             detail::printable(scale_fmt, 40), "\" is not supported (expected \"ue8m0\")");
  if (q.has("weight_block_size"))
    DSV4_CHECK(q.j.at("weight_block_size") == json::array({128, 128}), "model_config", q.source,
               ": quantization_config.weight_block_size ", describe(q.j.at("weight_block_size")),
               " is not supported (expected [128, 128])");
  if (q.has("expert_dtype")) c.experts = parse_expert_dtype(q, q.get_str("expert_dtype", ""));
}

std::vector<int> read_ratios(const reader& rd) {
  const json& v = rd.j.at("compress_ratios");
  if (!v.is_array()) rd.bad("compress_ratios", "an array");
  DSV4_CHECK(v.size() <= static_cast<std::size_t>(limits::layers + limits::mtp_layers), "model_config", rd.source,
             ": compress_ratios has ", v.size(), " entries (at most ", limits::layers + limits::mtp_layers,
             " layers and MTP blocks are supported)");
  std::vector<int> out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    const json& e = v[i];
    const bool integral = e.is_number_integer() || e.is_number_unsigned() ||
                          (e.is_number_float() && std::isfinite(e.get<double>()) &&
                           e.get<double>() == std::floor(e.get<double>()));
    DSV4_CHECK(integral, "model_config", rd.source, ": compress_ratios[", i, "] must be an integer, got ",
               describe(e));
    const double d = e.get<double>();
    DSV4_CHECK(d >= 0 && d <= 1 << 20, "model_config", rd.source, ": compress_ratios[", i, "] = ", describe(e),
               " out of range");
    out.push_back(static_cast<int>(d));
  }
  return out;
}

model_config from_json(const json& j, std::string_view source) {
  DSV4_CHECK(j.is_object(), "model_config", source, ": expected a JSON object at the top level");
  reader rd{j, std::string(source), ""};
  for (const char* k : kLaterReleaseKeys)
    DSV4_CHECK(!j.contains(k), "model_config", rd.source, ": field \"", k,
               "\" belongs to a later release (V4-Flash-0731 / V4.1 / DSpark / Vision), not the April 2026 V4 this "
               "library implements (spec §1.1)");

  model_config c = preset("v4-flash");  // the reference's ModelArgs defaults are the V4-Flash values
  c.name = std::string(source);
  c.compress_ratios.clear();
  c.experts = expert_format::detect;

  std::string arch;
  if (rd.has("architectures")) {
    const json& a = j.at("architectures");
    if (!a.is_array()) rd.bad("architectures", "an array of strings");
    if (!a.empty()) {
      DSV4_CHECK(a[0].is_string(), "model_config", rd.source, ": \"architectures\"[0] must be a string, got ",
                 describe(a[0]));
      arch = a[0].get<std::string>();
    }
  }
  const std::string model_type = rd.get_str("model_type", "");
  if (arch == "DeepseekV32ForCausalLM" || model_type == "deepseek_v32") c.family = model_family::v32;
  else if (!arch.empty() && arch != "DeepseekV4ForCausalLM")
    DSV4_FAIL("model_config", rd.source, ": architectures[0] \"", detail::printable(arch, 60),
              "\" is not DeepseekV4ForCausalLM (or the DeepseekV32ForCausalLM baseline)");

  const bool hf = j.contains("hidden_size") || j.contains("num_hidden_layers");
  auto pick = [&](const char* hf_key, const char* inf_key) { return hf ? hf_key : inf_key; };
  namespace L = limits;
  constexpr std::int64_t kAny = std::numeric_limits<std::int64_t>::max();

  // Integers are read over their whole meaningful range (a negative or absurd value reaches validate(), which lists
  // every broken rule); only what cannot be represented is refused here.
  c.vocab_size = rd.get_int("vocab_size", c.vocab_size, -kAny, kAny);
  c.dim = rd.get_int(pick("hidden_size", "dim"), c.dim, -kAny, kAny);
  c.n_layers = rd.get_int(pick("num_hidden_layers", "n_layers"), c.n_layers, -kAny, kAny);
  c.n_mtp_layers = rd.get_int(pick("num_nextn_predict_layers", "n_mtp_layers"), c.n_mtp_layers, -kAny, kAny);
  c.n_heads = rd.get_int(pick("num_attention_heads", "n_heads"), c.n_heads, -kAny, kAny);
  c.head_dim = rd.get_int("head_dim", c.head_dim, -kAny, kAny);
  c.rope_head_dim = rd.get_int(pick("qk_rope_head_dim", "rope_head_dim"), c.rope_head_dim, -kAny, kAny);
  c.q_lora_rank = rd.get_int("q_lora_rank", c.q_lora_rank, -kAny, kAny);
  c.o_lora_rank = rd.get_int("o_lora_rank", c.o_lora_rank, -kAny, kAny);
  c.o_groups = rd.get_int("o_groups", c.o_groups, -kAny, kAny);
  c.window_size = rd.get_int(pick("sliding_window", "window_size"), c.window_size, -kAny, kAny);
  if (rd.has("compress_ratios")) c.compress_ratios = read_ratios(rd);
  c.rope_theta = rd.get_num("rope_theta", c.rope_theta);
  c.compress_rope_theta = rd.get_num("compress_rope_theta", c.compress_rope_theta);
  if (hf) {
    if (const auto rs = rd.object("rope_scaling")) {
      const std::string type = rs->has("type") ? rs->get_str("type", "yarn") : rs->get_str("rope_type", "yarn");
      DSV4_CHECK(type == "yarn", "model_config", rd.source, ": rope_scaling type \"", detail::printable(type, 40),
                 "\" is not supported (V4 uses yarn)");
      c.rope_factor = rs->get_num("factor", c.rope_factor);
      c.original_seq_len = rs->get_int("original_max_position_embeddings", c.original_seq_len, -kAny, kAny);
      c.beta_fast = rs->get_num("beta_fast", c.beta_fast);
      c.beta_slow = rs->get_num("beta_slow", c.beta_slow);
      for (const char* k : {"mscale", "mscale_all_dim"})
        if (rs->has(k) && c.family == model_family::v4)
          DSV4_CHECK(rs->get_num(k, 1.0) == 1.0, "model_config", rd.source, ": rope_scaling.", k, " = ",
                     describe(rs->j.at(k)), ": V4 has no YaRN attention temperature (spec §3.1); only 1.0 is accepted");
    }
    c.max_position_embeddings = rd.get_int("max_position_embeddings", c.max_position_embeddings, -kAny, kAny);
  } else {
    c.rope_factor = rd.get_num("rope_factor", c.rope_factor);
    c.original_seq_len = rd.get_int("original_seq_len", c.original_seq_len, -kAny, kAny);
    c.beta_fast = rd.get_num("beta_fast", c.beta_fast);
    c.beta_slow = rd.get_num("beta_slow", c.beta_slow);
    c.max_position_embeddings = rd.get_int("max_seq_len", c.max_position_embeddings, -kAny, kAny);
  }
  c.index_n_heads = rd.get_int("index_n_heads", c.index_n_heads, -kAny, kAny);
  c.index_head_dim = rd.get_int("index_head_dim", c.index_head_dim, -kAny, kAny);
  c.index_topk = rd.get_int("index_topk", c.index_topk, -kAny, kAny);
  c.hc_mult = rd.get_int("hc_mult", c.hc_mult, -kAny, kAny);
  c.hc_sinkhorn_iters = static_cast<int>(rd.get_int("hc_sinkhorn_iters", c.hc_sinkhorn_iters, 1, L::sinkhorn_iters));
  c.hc_eps = rd.get_num("hc_eps", c.hc_eps);
  c.n_routed_experts = rd.get_int("n_routed_experts", c.n_routed_experts, -kAny, kAny);
  c.n_shared_experts = rd.get_int("n_shared_experts", c.n_shared_experts, -kAny, kAny);
  c.n_activated_experts =
      rd.get_int(pick("num_experts_per_tok", "n_activated_experts"), c.n_activated_experts, -kAny, kAny);
  c.moe_inter_dim = rd.get_int(pick("moe_intermediate_size", "moe_inter_dim"), c.moe_inter_dim, -kAny, kAny);
  {
    const std::string s = rd.get_str(pick("scoring_func", "score_func"), ops::score_func_name(c.score));
    try {
      c.score = ops::parse_score_func(s);
    } catch (const error&) {
      DSV4_FAIL("model_config", rd.source, ": unknown scoring function \"", detail::printable(s, 40),
                "\" (expected sqrtsoftplus, sigmoid or softmax)");
    }
  }
  c.route_scale = rd.get_num(pick("routed_scaling_factor", "route_scale"), c.route_scale);
  c.swiglu_limit = rd.get_num("swiglu_limit", c.family == model_family::v32 ? 0.0 : c.swiglu_limit);
  c.norm_eps = rd.get_num(pick("rms_norm_eps", "norm_eps"), c.norm_eps);
  c.n_hash_layers = rd.get_int(pick("num_hash_layers", "n_hash_layers"),
                               c.family == model_family::v32 ? 0 : c.n_hash_layers, -kAny, kAny);
  if (const auto q = rd.object("quantization_config")) read_quantization(*q, c);
  if (rd.has("expert_dtype")) c.experts = parse_expert_dtype(rd, rd.get_str("expert_dtype", ""));
  if (!hf && rd.has("scale_fmt"))
    DSV4_CHECK(rd.get_str("scale_fmt", "") == "ue8m0", "model_config", rd.source, ": scale_fmt \"",
               detail::printable(rd.get_str("scale_fmt", ""), 40), "\" is not supported (expected \"ue8m0\")");

  // Things V4 does not have and this library does not implement: refuse rather than run something else.
  if (c.family == model_family::v4) {
    DSV4_CHECK(rd.get_int("num_key_value_heads", 1, -kAny, kAny) == 1, "model_config", rd.source,
               ": num_key_value_heads must be 1 (V4 has one shared K=V head)");
    DSV4_CHECK(!rd.get_bool("tie_word_embeddings", false), "model_config", rd.source,
               ": tie_word_embeddings = true is not V4 (embed and head are separate tensors)");
    DSV4_CHECK(rd.get_bool("norm_topk_prob", true), "model_config", rd.source,
               ": norm_topk_prob = false is not supported (V4 normalizes the selected scores)");
    DSV4_CHECK(rd.get_int("n_group", 1, -kAny, kAny) <= 1 && rd.get_int("topk_group", 1, -kAny, kAny) <= 1,
               "model_config", rd.source, ": group-limited routing (n_group / topk_group > 1) is not V4");
    DSV4_CHECK(rd.get_int("first_k_dense_replace", 0, -kAny, kAny) == 0, "model_config", rd.source,
               ": first_k_dense_replace > 0 (dense FFN layers) is not V4; every V4 layer is MoE");
    const std::string act = rd.get_str("hidden_act", "silu");
    DSV4_CHECK(act == "silu", "model_config", rd.source, ": hidden_act \"", detail::printable(act, 40),
               "\" is not supported (V4 experts are SwiGLU)");
    DSV4_CHECK(rd.has("compress_ratios"), "model_config", rd.source,
               ": compress_ratios is missing (it selects each layer's attention type, spec §2)");
  } else {
    c.kv_lora_rank = rd.get_int("kv_lora_rank", 512, -kAny, kAny);
    c.qk_nope_head_dim = rd.get_int("qk_nope_head_dim", 128, 1, L::head_dim);
    c.v_head_dim = rd.get_int("v_head_dim", 128, -kAny, kAny);
    c.head_dim = c.qk_nope_head_dim + std::clamp<std::int64_t>(c.rope_head_dim, 0, L::head_dim);
    c.n_dense_layers = rd.get_int(pick("first_k_dense_replace", "n_dense_layers"), 3, -kAny, kAny);
    c.dense_inter_dim = rd.get_int(pick("intermediate_size", "inter_dim"), 18432, -kAny, kAny);
    c.experts = expert_format::fp8;
    c.hc_mult = 0;
  }
  c.validate();
  return c;
}

// Duplicate keys are legal JSON but ambiguous (the DOM keeps one of them): one SAX pass finds them at any depth.
struct duplicate_finder {
  using json_t = nlohmann::json;
  std::vector<std::set<std::string>> stack;
  std::string dup, path;
  bool null() { return true; }
  bool boolean(bool) { return true; }
  bool number_integer(json_t::number_integer_t) { return true; }
  bool number_unsigned(json_t::number_unsigned_t) { return true; }
  bool number_float(json_t::number_float_t, const std::string&) { return true; }
  bool string(std::string&) { return true; }
  bool binary(json_t::binary_t&) { return true; }
  bool start_object(std::size_t) {
    stack.emplace_back();
    return true;
  }
  bool key(std::string& k) {
    if (!stack.back().insert(k).second && dup.empty()) dup = k;
    return dup.empty();
  }
  bool end_object() {
    stack.pop_back();
    return true;
  }
  bool start_array(std::size_t) {
    stack.emplace_back();
    return true;
  }
  bool end_array() {
    stack.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) { return false; }
};

}  // namespace

model_config parse_config(std::string_view text, std::string_view source) {
  const std::string where = detail::printable(source, 400);
  DSV4_CHECK(text.size() <= io::kMaxConfigBytes, "model_config", where, ": ", text.size(),
             " bytes, more than the limit of ", io::kMaxConfigBytes, " bytes for a config");
  io::json_text::check_json_text(text, "model_config", where, 32);
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    DSV4_FAIL("model_config", where, ": not valid JSON (", e.what(), ")");
  }
  duplicate_finder d;
  json::sax_parse(text.begin(), text.end(), &d);
  DSV4_CHECK(d.dup.empty(), "model_config", where, ": key \"", detail::printable(d.dup, 60),
             "\" appears twice in one object");
  try {
    return from_json(j, where);
  } catch (const json::exception& e) {  // a safety net: every read above is typed, so this is a bug if it fires
    DSV4_FAIL("model_config", where, ": unexpected JSON content (", e.what(), ")");
  }
}

model_config load_config(const std::filesystem::path& path) {
  std::error_code ec;
  const std::filesystem::path file = std::filesystem::is_directory(path, ec) ? path / "config.json" : path;
  DSV4_CHECK(std::filesystem::exists(std::filesystem::symlink_status(file, ec)), "model_config", "no config file at ",
             detail::printable(file.string(), 400));
  return parse_config(io::read_text_file(file, io::kMaxConfigBytes, "model_config"), file.string());
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
