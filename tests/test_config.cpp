// model_config: the official config.json files, both spellings, presets, HF round trip, validation messages.
#include <fstream>
#include <sstream>

#include "dsv4/model/config.hpp"
#include "harness.hpp"

using namespace dsv4;
using namespace dsv4::model;
using dsv4::test::check_error;

namespace {

std::string read(const std::string& name) {
  std::ifstream f(std::string(DSV4_TEST_DATA_DIR) + "/" + name);
  REQUIRE(f.good());
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

// Equal except for the name (which records where a config came from).
void check_same(model_config a, model_config b) {
  a.name = b.name = "";
  CHECK(a == b);
}

// A minimal valid HF config (tiny-like) to break one field at a time.
std::string edit(const std::string& j, const std::string& key, const std::string& value) {
  const std::string k = "\"" + key + "\": ";
  const auto at = j.find(k);
  if (at == std::string::npos) return j.substr(0, 1) + "\n  " + k + value + "," + j.substr(1);
  // The old value ends at the first ',' or newline outside brackets.
  std::size_t end = at + k.size();
  for (int depth = 0; end < j.size(); ++end) {
    const char ch = j[end];
    if (ch == '[' || ch == '{') ++depth;
    else if (ch == ']' || ch == '}') --depth;
    if (depth == 0 && (ch == ',' || ch == '\n')) break;
  }
  return j.substr(0, at + k.size()) + value + j.substr(end);
}
std::string hf_with(const std::string& key, const std::string& value) {
  return edit(to_hf_json(preset("tiny")), key, value);
}

}  // namespace

TEST_SUITE("config") {
  TEST_CASE("the official V4-Flash config.json is the v4-flash preset, field by field") {
    const model_config c = parse_config(read("v4-flash.config.json"), "v4-flash.config.json");
    check_same(c, preset("v4-flash"));
    CHECK(c.experts == expert_format::fp4);
    CHECK(c.compress_ratios.size() == 44);  // one more than the 43 layers: the MTP block (spec §2)
    CHECK(c.kind(0) == attn_kind::swa);
    CHECK(c.kind(1) == attn_kind::swa);
    CHECK(c.kind(2) == attn_kind::csa);
    CHECK(c.kind(3) == attn_kind::hca);
    CHECK(c.kind(42) == attn_kind::csa);
    CHECK(c.kind(43) == attn_kind::swa);  // MTP
    CHECK(c.hash_routed(2));
    CHECK_FALSE(c.hash_routed(3));
    CHECK_FALSE(c.hash_routed(43));
    CHECK(c.nope_head_dim() == 448);
    CHECK(c.hc_mix_dim() == 24);
    int n[3] = {0, 0, 0};
    for (int i = 0; i < 43; ++i) ++n[static_cast<int>(c.kind(i))];
    CHECK(n[0] == 2);   // spec §2 table: 2 SWA, 21 CSA, 20 HCA
    CHECK(n[1] == 21);
    CHECK(n[2] == 20);
  }

  TEST_CASE("the official V4-Pro config.json (no expert_dtype) is the v4-pro preset with the expert format open") {
    model_config c = parse_config(read("v4-pro.config.json"), "v4-pro.config.json");
    CHECK(c.experts == expert_format::detect);
    CHECK(c.compress_ratios.size() == 62);
    CHECK(c.kind(0) == attn_kind::hca);
    CHECK(c.kind(1) == attn_kind::hca);
    CHECK(c.kind(2) == attn_kind::csa);
    CHECK(c.kind(60) == attn_kind::csa);
    CHECK(c.kind(61) == attn_kind::swa);
    int n[3] = {0, 0, 0};
    for (int i = 0; i < 61; ++i) ++n[static_cast<int>(c.kind(i))];
    CHECK(n[0] == 0);   // spec §2: 30 CSA, 31 HCA
    CHECK(n[1] == 30);
    CHECK(n[2] == 31);
    c.experts = expert_format::fp4;
    check_same(c, preset("v4-pro"));
  }

  TEST_CASE("the reference code's inference/config.json spelling reads to the same config") {
    const std::string inf = R"({
      "vocab_size": 129280, "dim": 4096, "moe_inter_dim": 2048, "n_layers": 43, "n_hash_layers": 3,
      "n_mtp_layers": 1, "n_heads": 64, "n_routed_experts": 256, "n_shared_experts": 1, "n_activated_experts": 6,
      "score_func": "sqrtsoftplus", "route_scale": 1.5, "swiglu_limit": 10.0, "q_lora_rank": 1024,
      "head_dim": 512, "rope_head_dim": 64, "norm_eps": 1e-6, "o_groups": 8, "o_lora_rank": 1024,
      "window_size": 128,
      "compress_ratios": [0, 0, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128,
                          4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128, 4, 0],
      "compress_rope_theta": 160000.0, "original_seq_len": 65536, "rope_theta": 10000.0, "rope_factor": 16,
      "beta_fast": 32, "beta_slow": 1, "index_n_heads": 64, "index_head_dim": 128, "index_topk": 512,
      "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "dtype": "fp8", "scale_fmt": "ue8m0",
      "expert_dtype": "fp4", "max_seq_len": 1048576})";
    check_same(parse_config(inf, "inference/config.json"), preset("v4-flash"));
    // A field the file omits takes the ModelArgs default (= V4-Flash), e.g. hc_eps.
    const model_config c = parse_config(R"({"dim": 64, "n_layers": 1, "n_mtp_layers": 0, "compress_ratios": [0],
      "n_heads": 2, "head_dim": 128, "o_groups": 2, "moe_inter_dim": 64, "n_routed_experts": 4,
      "n_activated_experts": 2, "n_hash_layers": 0})", "mini.json");
    CHECK(c.hc_eps == 1e-6);
    CHECK(c.window_size == 128);
  }

  TEST_CASE("every V4 preset survives to_hf_json -> parse_config unchanged") {
    for (const auto& name : preset_names()) {
      const model_config p = preset(name);
      CAPTURE(name);
      if (p.family != model_family::v4) {
        check_error([&] { (void)to_hf_json(p); }, {"only V4"});
        continue;
      }
      p.validate();
      check_same(parse_config(to_hf_json(p), name), p);
    }
    check_error([] { (void)preset("v5"); }, {"unknown preset \"v5\"", "v4-flash", "tiny"});
  }

  TEST_CASE("the V3.2 baseline preset and a V3.2 config") {
    const model_config v = preset("v3.2");
    v.validate();
    CHECK(v.family == model_family::v32);
    CHECK(v.index_topk == 2048);
    CHECK(v.n_dense_layers == 3);
    const model_config c = parse_config(R"({"architectures": ["DeepseekV32ForCausalLM"], "hidden_size": 7168,
      "num_hidden_layers": 61, "num_attention_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512,
      "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "n_routed_experts": 256,
      "num_experts_per_tok": 8, "moe_intermediate_size": 2048, "intermediate_size": 18432,
      "first_k_dense_replace": 3, "scoring_func": "sigmoid", "routed_scaling_factor": 2.5, "index_topk": 2048,
      "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                       "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
      "max_position_embeddings": 163840})", "v32.json");
    CHECK(c.family == model_family::v32);
    CHECK(c.head_dim == 192);
    CHECK(c.dense_inter_dim == 18432);
    CHECK(c.score == ops::score_func::sigmoid);
    CHECK(c.n_hash_layers == 0);
  }

  TEST_CASE("invalid configs are rejected with the source, the field and the rule") {
    check_error([] { (void)parse_config(hf_with("scoring_func", "\"relu\""), "cfg.json"); },
                {"cfg.json", "unknown scoring function \"relu\"", "sqrtsoftplus"});
    check_error([] { (void)parse_config(hf_with("head_dim", "100"), "cfg.json"); },
                {"cfg.json", "head_dim 100", "multiple of 64"});
    check_error([] { (void)parse_config(hf_with("index_head_dim", "96"), "cfg.json"); },
                {"index_head_dim 96", "power of two"});
    check_error([] { (void)parse_config(hf_with("compress_ratios", "[0, 4, 5, 4, 0]"), "cfg.json"); },
                {"compress_ratios[2] = 5", "not a V4 layer type"});
    check_error([] { (void)parse_config(hf_with("compress_ratios", "[0, 4, 128]"), "cfg.json"); },
                {"compress_ratios has 3 entries", "need 5"});
    check_error([] { (void)parse_config(hf_with("o_groups", "3"), "cfg.json"); }, {"multiple of o_groups 3"});
    check_error([] { (void)parse_config(hf_with("hidden_size", "\"64\""), "cfg.json"); },
                {"\"hidden_size\" must be an integer"});
    check_error([] { (void)parse_config(hf_with("moe_intermediate_size", "48"), "cfg.json"); },
                {"moe_intermediate_size 48", "multiple of 32"});
    check_error([] { (void)parse_config(hf_with("num_experts_per_tok", "9"), "cfg.json"); },
                {"num_experts_per_tok 9", "n_routed_experts = 8"});
    check_error([] { (void)parse_config(hf_with("tie_word_embeddings", "true"), "cfg.json"); },
                {"tie_word_embeddings"});
    check_error([] { (void)parse_config(hf_with("num_key_value_heads", "8"), "cfg.json"); },
                {"num_key_value_heads must be 1"});
    check_error([] { (void)parse_config(hf_with("kv_source_layer_ids", "[1]"), "cfg.json"); },
                {"kv_source_layer_ids", "later release"});
    check_error([] { (void)parse_config(hf_with("expert_dtype", "\"int4\""), "cfg.json"); },
                {"expert_dtype \"int4\""});
    check_error([] { (void)parse_config(hf_with("rope_scaling", R"({"type": "yarn", "mscale": 0.7})"), "c.json"); },
                {"mscale", "no YaRN attention temperature"});
    check_error([] { (void)parse_config("{\"hidden_size\": 64,", "broken.json"); }, {"broken.json", "not valid JSON"});
    check_error([] { (void)parse_config("[1, 2]", "array.json"); }, {"array.json", "JSON object"});
    check_error([] { (void)parse_config(R"({"architectures": ["LlamaForCausalLM"]})", "llama.json"); },
                {"LlamaForCausalLM"});
    // Several broken rules come back in one message.
    const std::string two = edit(hf_with("num_attention_heads", "3"), "hc_eps", "-1");
    check_error([&] { (void)parse_config(two, "cfg.json"); }, {"2 problems", "multiple of o_groups", "hc_eps -1"});
    check_error([] { (void)load_config("/nonexistent/dir"); }, {"no config file", "/nonexistent/dir"});
  }
}
