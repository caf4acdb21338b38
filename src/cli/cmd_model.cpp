// `dsv4 synth` and `dsv4 info`: write a random checkpoint in the official format; describe a model directory.
#include "cmd_model.hpp"

#include <cstdio>
#include <map>

#include "args.hpp"
#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/config.hpp"
#include "dsv4/model/synth.hpp"
#include "dsv4/model/weights.hpp"

namespace dsv4::cli {

namespace {

// 1234567 -> "1.23 M" style: thousands steps with the given unit names.
std::string human(double v, const char* const (&unit)[5], const char* sep) {
  int u = 0;
  while (v >= 1000 && u < 4) {
    v /= 1000;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.2f%s%s" : "%.0f%s%s", v, sep, unit[u]);
  return buf;
}
std::string human_bytes(double b) {
  static const char* const unit[5] = {"B", "KB", "MB", "GB", "TB"};
  return human(b, unit, " ");
}
std::string human_count(double n) {
  static const char* const unit[5] = {"", "K", "M", "B", "T"};
  return human(n, unit, "");
}

void print_config(const model::model_config& c) {
  using model::attn_kind;
  std::printf("config %s\n", detail::printable(c.name, 400).c_str());
  std::printf("  hidden %lld, %lld layers + %lld MTP, %lld heads x %lld (rope %lld), q_lora %lld, "
              "wo %lld groups x %lld, window %lld\n",
              (long long)c.dim, (long long)c.n_layers, (long long)c.n_mtp_layers, (long long)c.n_heads,
              (long long)c.head_dim, (long long)c.rope_head_dim, (long long)c.q_lora_rank, (long long)c.o_groups,
              (long long)c.o_lora_rank, (long long)c.window_size);
  std::printf("  indexer %lld heads x %lld, top-k %lld; RoPE theta %g (SWA) / %g + YaRN x%g from %lld (compressed)\n",
              (long long)c.index_n_heads, (long long)c.index_head_dim, (long long)c.index_topk, c.rope_theta,
              c.compress_rope_theta, c.rope_factor, (long long)c.original_seq_len);
  std::printf("  MoE %lld routed (%lld active) + %lld shared, inter %lld, %s, route scale %g, SwiGLU clamp %g, "
              "experts %s\n",
              (long long)c.n_routed_experts, (long long)c.n_activated_experts, (long long)c.n_shared_experts,
              (long long)c.moe_inter_dim, ops::score_func_name(c.score), c.route_scale, c.swiglu_limit,
              model::expert_format_name(c.experts));
  std::printf("  mHC %lld streams, %d Sinkhorn iterations, eps %g; vocab %lld; max positions %lld\n",
              (long long)c.hc_mult, c.hc_sinkhorn_iters, c.hc_eps, (long long)c.vocab_size,
              (long long)c.max_position_embeddings);
  if (c.family != model::model_family::v4) return;

  std::printf("layer schedule (attention / routing; h = hash-routed via tid2eid, s = score-routed):\n");
  int count[3] = {0, 0, 0};
  const std::int64_t n = c.n_layers + c.n_mtp_layers;
  for (std::int64_t i = 0; i < n; ++i) {
    if (i % 8 == 0) std::printf("  ");
    const attn_kind k = c.kind(i);
    if (i < c.n_layers) ++count[static_cast<int>(k)];
    char cell[32];
    std::snprintf(cell, sizeof cell, "%s%lld %s/%s", i >= c.n_layers ? "MTP" : "", (long long)i,
                  model::attn_kind_name(k), c.hash_routed(i) ? "h" : "s");
    std::printf("%-14s", cell);
    if (i % 8 == 7 || i + 1 == n) std::printf("\n");
  }
  std::printf("  %d SWA, %d CSA (ratio 4), %d HCA (ratio 128); hash-routed layers: %lld\n", count[0], count[1],
              count[2], (long long)c.n_hash_layers);
}

}  // namespace

const char* const kSynthUsage =
    "usage: dsv4 synth (--preset NAME | --config FILE) --out DIR [--seed S] [--sparse] [--shards N | --shard-mb M]\n"
    "                  [--no-mtp] [--force]\n"
    "  Writes a random checkpoint in the official format: DIR/config.json (HF spelling) and\n"
    "  model-0000i-of-0000n.safetensors shards + model.safetensors.index.json with the official tensor names.\n"
    "  --preset NAME   v4-flash, v4-pro, tiny or small (v3.2 is for the calculator only)\n"
    "  --config FILE   a config.json to take the shapes from instead\n"
    "  --seed S        S >= 0 (default 1): the same seed writes the same bytes\n"
    "  --sparse        headers only, data left as holes (full-size layouts in a few MB)\n"
    "  --shards N      N >= 1 shards of about equal size; --shard-mb M: shards of at most M MiB (default 4096)\n"
    "  --no-mtp        leave out the mtp.* block(s)\n"
    "  --force         replace the checkpoint files (config.json, model*.safetensors, index) already in DIR\n";

const char* const kInfoUsage =
    "usage: dsv4 info (--model DIR | --preset NAME) [--verify]\n"
    "  Prints the config, the layer schedule, bytes per dtype and binds every tensor by its official name:\n"
    "  dtype, exact shape and finite values of every BF16 / F32 tensor, as `dsv4 run` does before its first token.\n"
    "  --verify        also read every FP8 / FP4 weight and E8M0 scale and refuse NaN codes (reads the whole\n"
    "                  checkpoint; `dsv4 run` meets such codes only when a token uses them)\n";

int cmd_synth(int argc, char** argv) {
  const args a(argc, argv, 2, "synth", {"preset", "config", "seed", "out", "shards", "shard-mb"},
               {"sparse", "no-mtp", "force"}, kSynthUsage);
  if (a.help()) return a.print_usage();
  DSV4_CHECK(a.has("preset") != a.has("config"), "synth", "give exactly one of --preset NAME or --config FILE");
  DSV4_CHECK(!(a.has("shards") && a.has("shard-mb")), "synth", "give at most one of --shards N and --shard-mb M");
  const model::model_config cfg = a.has("preset") ? model::preset(a.str("preset")) : model::load_config(a.str("config"));
  model::synth_options opt;
  opt.seed = static_cast<std::uint64_t>(a.integer("seed", 1, 0, INT64_MAX));
  opt.sparse = a.has("sparse");
  opt.mtp = !a.has("no-mtp");
  opt.overwrite = a.has("force");
  opt.shards = static_cast<int>(a.integer("shards", 0, 1, 99999));  // the shard names have five digits
  if (a.has("shard-mb")) opt.shard_bytes = static_cast<std::uint64_t>(a.integer("shard-mb", 4096, 1, 1 << 30)) << 20;
  const std::uint64_t bytes = model::checkpoint_bytes(cfg, opt.mtp);
  constexpr std::uint64_t kMaxDense = 8ull << 30;
  DSV4_CHECK(opt.sparse || bytes <= kMaxDense, "synth", cfg.name, " needs ", human_bytes(double(bytes)),
             " of weights; write it with --sparse (headers only, data as holes) or pick a small preset");
  const auto r = model::synthesize(cfg, a.str("out"), opt);
  std::printf("wrote %s: %s, %zu tensors in %zu shard%s, %s of weights%s, seed %llu\n",
              detail::printable(a.str("out"), 400).c_str(), detail::printable(cfg.name, 400).c_str(), r.tensors, r.shards, r.shards == 1 ? "" : "s", human_bytes(double(r.bytes)).c_str(),
              opt.sparse ? " (sparse: holes, no data written)" : "", (unsigned long long)opt.seed);
  return 0;
}

int cmd_info(int argc, char** argv) {
  const args a(argc, argv, 2, "info", {"model", "preset"}, {"verify"}, kInfoUsage);
  if (a.help()) return a.print_usage();
  DSV4_CHECK(a.has("preset") != a.has("model"), "info", "give exactly one of --model DIR or --preset NAME");
  if (a.has("preset")) {
    print_config(model::preset(a.str("preset")));
    return 0;
  }
  const std::string dir = a.str("model");
  const model::model_config cfg = model::load_config(dir);
  print_config(cfg);

  const io::checkpoint ck = io::checkpoint::open(dir);
  // Sums in double: each shard is at most 2^63 bytes, but a hostile sparse checkpoint could make their sum wrap.
  std::map<std::string, std::pair<double, std::uint64_t>> per_dtype;  // bytes, tensors
  double total = 0, params = 0;
  const auto names = ck.names();
  for (const auto& name : names) {
    const io::tensor_record* t = ck.find(name);
    auto& slot = per_dtype[io::st_dtype_name(t->dt)];
    slot.first += double(t->nbytes());
    ++slot.second;
    total += double(t->nbytes());
    // Weights only (scales are metadata of their weight); I8 expert bytes hold two FP4 values each.
    if (t->dt == io::st_dtype::F8_E8M0) continue;
    params += double(t->numel()) * (t->dt == io::st_dtype::I8 ? 2 : 1);
  }
  std::printf("checkpoint %s: %zu shard%s, %zu tensors, %s (read %s of headers to open)\n",
              detail::printable(dir, 400).c_str(),
              ck.shard_count(), ck.shard_count() == 1 ? "" : "s", names.size(), human_bytes(total).c_str(),
              human_bytes(double(ck.header_bytes_read())).c_str());
  std::printf("  bytes per dtype:");
  for (const auto& [dt, v] : per_dtype)
    std::printf("  %s %s (%llu)", dt.c_str(), human_bytes(v.first).c_str(), (unsigned long long)v.second);
  std::printf("\n  parameters %s (I8 expert bytes count as two FP4 values; E8M0 scales not counted)\n",
              human_count(params).c_str());
  model::bind_options bo;
  bo.verify_quantized = a.has("verify");
  const model::model_weights w = model::bind_weights(ck, cfg, bo);
  std::printf("weights: every tensor present with the dtype and shape this config implies, BF16/F32 values finite%s "
              "(%zu layers, %zu MTP, experts stored %s)\n",
              bo.verify_quantized ? ", no NaN FP8 code or E8M0 scale" : "", w.layers.size(), w.mtp.size(),
              model::expert_format_name(w.experts));
  if (ck.copied_tensors() > 0)
    std::printf("  %zu tensors are not aligned to their element size in the file: copied once into aligned memory "
                "(%s)\n",
                ck.copied_tensors(), human_bytes(double(ck.copied_bytes())).c_str());
  return 0;
}

}  // namespace dsv4::cli
