// synthesize: the spec §1.2 inventory filled with seeded random weights in the official storage formats.
#include "dsv4/model/synth.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <fstream>
#include <numeric>

#include "dsv4/error.hpp"
#include "dsv4/formats.hpp"
#include "dsv4/io/safetensors.hpp"

namespace dsv4::model {

namespace {

using io::st_dtype;
using io::tensor_data;
using shape_t = std::vector<std::int64_t>;

std::uint64_t splitmix64(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// A portable generator (same numbers on every standard library): splitmix64 + Box–Muller.
class rng {
 public:
  rng(std::uint64_t seed, const std::string& name) : s_(seed) {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a of the tensor name
    for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
    s_ ^= h;
  }
  double uniform() { return (static_cast<double>(splitmix64(s_) >> 11) + 0.5) * 0x1.0p-53; }  // (0, 1)
  float normal() {
    if (have_) {
      have_ = false;
      return spare_;
    }
    const double r = std::sqrt(-2.0 * std::log(uniform())), t = 6.283185307179586 * uniform();
    spare_ = static_cast<float>(r * std::sin(t));
    have_ = true;
    return static_cast<float>(r * std::cos(t));
  }
  std::uint64_t below(std::uint64_t n) { return splitmix64(s_) % n; }

 private:
  std::uint64_t s_;
  bool have_ = false;
  float spare_ = 0;
};

constexpr std::int64_t ceil_div(std::int64_t a, std::int64_t b) { return (a + b - 1) / b; }

template <class T>
void put(std::vector<std::byte>& out, std::size_t i, T v) {
  std::memcpy(out.data() + i * sizeof(T), &v, sizeof(T));
}

class writer {
 public:
  writer(const model_config& cfg, const synth_options& opt) : cfg_(cfg), opt_(opt) {}
  std::deque<tensor_data> tensors;  // a deque: references from add() stay valid while more are added

  bool fill() const { return !opt_.sparse; }

  tensor_data& add(const std::string& name, st_dtype dt, shape_t shape) {
    tensors.push_back({name, dt, std::move(shape), {}});
    tensor_data& t = tensors.back();
    if (fill()) t.data.resize(t.nbytes());
    return t;
  }

  // Draws n values v_i = mean + sd·N(0,1) for a tensor.
  std::vector<float> draw(const std::string& name, std::int64_t n, float sd, float mean = 0.f) {
    rng r(opt_.seed, name);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = mean + sd * r.normal();
    return v;
  }

  void bf16_tensor(const std::string& name, shape_t shape, float sd, float mean = 0.f) {
    tensor_data& t = add(name, st_dtype::BF16, std::move(shape));
    if (!fill()) return;
    const auto v = draw(name, static_cast<std::int64_t>(t.data.size() / 2), sd, mean);
    for (std::size_t i = 0; i < v.size(); ++i) put(t.data, i, bf16::from_float(v[i]).bits);
  }

  void f32_tensor(const std::string& name, shape_t shape, float sd, float mean = 0.f) {
    tensor_data& t = add(name, st_dtype::F32, std::move(shape));
    if (!fill()) return;
    const auto v = draw(name, static_cast<std::int64_t>(t.data.size() / 4), sd, mean);
    for (std::size_t i = 0; i < v.size(); ++i) put(t.data, i, v[i]);
  }

  // FP8 E4M3 [N, K] + E8M0 [ceil(N/128), ceil(K/128)]: the tile scale is the quantizers' rule (spec §6.2) applied
  // to the tile's amax, so every code is within range and the largest one is near 448.
  void fp8_linear(const std::string& p, std::int64_t N, std::int64_t K, float sd) {
    tensor_data& w = add(p + ".weight", st_dtype::F8_E4M3, {N, K});
    const std::int64_t tn = ceil_div(N, 128), tk = ceil_div(K, 128);
    tensor_data& s = add(p + ".scale", st_dtype::F8_E8M0, {tn, tk});
    if (!fill()) return;
    const auto v = draw(p + ".weight", N * K, sd);
    using tr = block_quant_traits<fp8_e4m3>;
    for (std::int64_t bi = 0; bi < tn; ++bi)
      for (std::int64_t bk = 0; bk < tk; ++bk) {
        float amax = 0;
        for (std::int64_t n = bi * 128; n < std::min(N, bi * 128 + 128); ++n)
          for (std::int64_t k = bk * 128; k < std::min(K, bk * 128 + 128); ++k)
            amax = std::max(amax, std::fabs(v[static_cast<std::size_t>(n * K + k)]));
        const std::uint8_t e = ue8m0_ceil_scale(amax, tr::kAmaxFloor, tr::kInvMax);
        s.data[static_cast<std::size_t>(bi * tk + bk)] = std::byte{e};
        const float inv = 1.f / ue8m0{e}.to_float();
        for (std::int64_t n = bi * 128; n < std::min(N, bi * 128 + 128); ++n)
          for (std::int64_t k = bk * 128; k < std::min(K, bk * 128 + 128); ++k) {
            const std::size_t i = static_cast<std::size_t>(n * K + k);
            w.data[i] = std::byte{fp8_e4m3::from_float(v[i] * inv).bits};
          }
      }
  }

  // FP4 E2M1 [N, K] as I8 [N, K/2] (element 2c in the low nibble) + E8M0 [N, K/32] (spec §1.2, §6.3 scale rule).
  void fp4_linear(const std::string& p, std::int64_t N, std::int64_t K, float sd) {
    tensor_data& w = add(p + ".weight", st_dtype::I8, {N, K / 2});
    tensor_data& s = add(p + ".scale", st_dtype::F8_E8M0, {N, K / 32});
    if (!fill()) return;
    const auto v = draw(p + ".weight", N * K, sd);
    using tr = block_quant_traits<fp4_e2m1>;
    for (std::int64_t n = 0; n < N; ++n)
      for (std::int64_t b = 0; b < K / 32; ++b) {
        const float* x = v.data() + n * K + b * 32;
        float amax = 0;
        for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
        const std::uint8_t e = ue8m0_ceil_scale(amax, tr::kAmaxFloor, tr::kInvMax);
        s.data[static_cast<std::size_t>(n * (K / 32) + b)] = std::byte{e};
        const float inv = 1.f / ue8m0{e}.to_float();
        for (int i = 0; i < 32; i += 2) {
          const fp4x2 pair = fp4x2::pack(fp4_e2m1::from_float(x[i] * inv), fp4_e2m1::from_float(x[i + 1] * inv));
          w.data[static_cast<std::size_t>(n * (K / 2) + b * 16 + i / 2)] = std::byte{pair.bits};
        }
      }
  }

  void expert_linear(const std::string& p, std::int64_t N, std::int64_t K, float sd) {
    if (cfg_.experts == expert_format::fp8) fp8_linear(p, N, K, sd);
    else fp4_linear(p, N, K, sd);
  }

  void norm(const std::string& name, std::int64_t n) { bf16_tensor(name, {n}, 0.1f, 1.f); }

  void hc(const std::string& p, std::int64_t mix, std::int64_t nscale, bool head) {
    const std::int64_t hcd = cfg_.hc_mult * cfg_.dim, m = cfg_.hc_mult;
    f32_tensor(p + "_fn", {mix, hcd}, 0.5f / std::sqrt(static_cast<float>(hcd)));
    tensor_data& base = add(p + "_base", st_dtype::F32, {mix});
    tensor_data& scale = add(p + "_scale", st_dtype::F32, {nscale});
    if (!fill()) return;
    const auto noise = draw(p + "_base", mix, 0.1f);
    for (std::int64_t i = 0; i < mix; ++i) {
      // [0, m) pre, [m, 2m) post, then comb m x m row-major: 1 on the diagonal (spec §4 layout).
      const std::int64_t c = i - 2 * m;
      const float b = (!head && c >= 0 && c / m == c % m) ? 1.f : 0.f;
      put(base.data, static_cast<std::size_t>(i), b + noise[static_cast<std::size_t>(i)]);
    }
    for (std::int64_t i = 0; i < nscale; ++i) put(scale.data, static_cast<std::size_t>(i), 1.f);
  }

  void compressor(const std::string& p, int ratio, std::int64_t c) {
    const std::int64_t coff = ratio == 4 ? 2 : 1;
    const float sd = 1.f / std::sqrt(static_cast<float>(cfg_.dim));
    bf16_tensor(p + ".wkv.weight", {coff * c, cfg_.dim}, sd);
    bf16_tensor(p + ".wgate.weight", {coff * c, cfg_.dim}, sd);
    f32_tensor(p + ".ape", {ratio, coff * c}, 0.5f);
    norm(p + ".norm.weight", c);
  }

  void block(const std::string& p, std::int64_t layer) {
    const model_config& c = cfg_;
    const int ratio = c.compress_ratio(layer);
    const std::int64_t D = c.dim, H = c.n_heads, hd = c.head_dim, g = c.o_groups, E = c.n_routed_experts,
                       I = c.moe_inter_dim;
    auto fan = [](std::int64_t k) { return 1.f / std::sqrt(static_cast<float>(k)); };
    const float depth = 1.f / std::sqrt(2.f * static_cast<float>(c.n_layers));

    hc(p + "hc_attn", c.hc_mix_dim(), 3, false);
    hc(p + "hc_ffn", c.hc_mix_dim(), 3, false);
    norm(p + "attn_norm.weight", D);
    norm(p + "ffn_norm.weight", D);

    const std::string at = p + "attn.";
    f32_tensor(at + "attn_sink", {H}, 1.f);
    fp8_linear(at + "wq_a", c.q_lora_rank, D, fan(D));
    norm(at + "q_norm.weight", c.q_lora_rank);
    fp8_linear(at + "wq_b", H * hd, c.q_lora_rank, fan(c.q_lora_rank));
    fp8_linear(at + "wkv", hd, D, fan(D));
    norm(at + "kv_norm.weight", hd);
    fp8_linear(at + "wo_a", g * c.o_lora_rank, H * hd / g, fan(H * hd / g));
    fp8_linear(at + "wo_b", D, g * c.o_lora_rank, fan(g * c.o_lora_rank) * depth);
    if (ratio != 0) compressor(at + "compressor", ratio, hd);
    if (ratio == 4) {
      fp8_linear(at + "indexer.wq_b", c.index_n_heads * c.index_head_dim, c.q_lora_rank, fan(c.q_lora_rank));
      bf16_tensor(at + "indexer.weights_proj.weight", {c.index_n_heads, D}, fan(D));
      compressor(at + "indexer.compressor", 4, c.index_head_dim);
    }

    const std::string ff = p + "ffn.";
    bf16_tensor(ff + "gate.weight", {E, D}, fan(D));
    if (c.hash_routed(layer)) tid2eid(ff + "gate.tid2eid");
    else f32_tensor(ff + "gate.bias", {E}, 0.1f);
    for (std::int64_t e = 0; e < E; ++e) {
      const std::string ex = ff + "experts." + std::to_string(e) + ".";
      expert_linear(ex + "w1", I, D, fan(D));
      expert_linear(ex + "w2", D, I, fan(I) * depth);
      expert_linear(ex + "w3", I, D, fan(D));
    }
    if (c.n_shared_experts == 1) {
      fp8_linear(ff + "shared_experts.w1", I, D, fan(D));
      fp8_linear(ff + "shared_experts.w2", D, I, fan(I) * depth);
      fp8_linear(ff + "shared_experts.w3", I, D, fan(D));
    }
  }

  // [vocab, k] I64: k distinct experts per token (partial Fisher–Yates).
  void tid2eid(const std::string& name) {
    const std::int64_t V = cfg_.vocab_size, k = cfg_.n_activated_experts, E = cfg_.n_routed_experts;
    tensor_data& t = add(name, st_dtype::I64, {V, k});
    if (!fill()) return;
    rng r(opt_.seed, name);
    std::vector<std::int64_t> perm(static_cast<std::size_t>(E));
    for (std::int64_t v = 0; v < V; ++v) {
      std::iota(perm.begin(), perm.end(), 0);
      for (std::int64_t i = 0; i < k; ++i) {
        const std::int64_t j = i + static_cast<std::int64_t>(r.below(static_cast<std::uint64_t>(E - i)));
        std::swap(perm[static_cast<std::size_t>(i)], perm[static_cast<std::size_t>(j)]);
        put(t.data, static_cast<std::size_t>(v * k + i), perm[static_cast<std::size_t>(i)]);
      }
    }
  }

  void model() {
    const model_config& c = cfg_;
    bf16_tensor("embed.weight", {c.vocab_size, c.dim}, 1.f);
    for (std::int64_t i = 0; i < c.n_layers; ++i) block("layers." + std::to_string(i) + ".", i);
    bf16_tensor("head.weight", {c.vocab_size, c.dim}, 1.f / std::sqrt(static_cast<float>(c.dim)));
    norm("norm.weight", c.dim);
    hc("hc_head", c.hc_mult, 1, true);
    if (!opt_.mtp) return;
    for (std::int64_t j = 0; j < c.n_mtp_layers; ++j) {
      const std::string p = "mtp." + std::to_string(j) + ".";
      block(p, c.n_layers + j);
      const float sd = 1.f / std::sqrt(static_cast<float>(c.dim));
      fp8_linear(p + "e_proj", c.dim, c.dim, sd);
      fp8_linear(p + "h_proj", c.dim, c.dim, sd);
      norm(p + "enorm.weight", c.dim);
      norm(p + "hnorm.weight", c.dim);
      norm(p + "norm.weight", c.dim);
      hc(p + "hc_head", c.hc_mult, 1, true);
    }
  }

 private:
  const model_config& cfg_;
  const synth_options& opt_;
};

void check_v4(const model_config& cfg) {
  DSV4_CHECK(cfg.family == model_family::v4, "synth", "config ", cfg.name,
             " is not a V4 model (the V3.2 preset exists for the calculator only)");
  cfg.validate();
}

}  // namespace

std::uint64_t checkpoint_bytes(const model_config& cfg, bool mtp) {
  check_v4(cfg);
  synth_options opt;
  opt.sparse = true;
  opt.mtp = mtp;
  writer w(cfg, opt);
  w.model();
  std::uint64_t total = 0;
  for (const auto& t : w.tensors) total += t.nbytes();
  return total;
}

namespace {

// The files a checkpoint directory's writer owns: config.json, model.safetensors, model-*.safetensors, the index.
bool checkpoint_file(const std::string& n) {
  return n == "config.json" || n == "model.safetensors.index.json" ||
         (n.rfind("model", 0) == 0 && n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0);
}

void prepare_dir(const std::filesystem::path& dir, bool overwrite) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto st = fs::status(dir, ec);
  if (fs::exists(st)) {
    DSV4_CHECK(fs::is_directory(st), "synth", detail::printable(dir.string(), 400), " exists and is not a directory");
    std::vector<fs::path> owned;
    for (const auto& e : fs::directory_iterator(dir))
      if (checkpoint_file(e.path().filename().string())) owned.push_back(e.path());
    DSV4_CHECK(owned.empty() || overwrite, "synth", detail::printable(dir.string(), 400), " already holds a ",
               "checkpoint (", owned.size(), " files such as ", detail::printable(owned.front().filename().string()),
               "); pass --force to replace it");
    for (const auto& p : owned) fs::remove(p);
  }
  fs::create_directories(dir);
}

}  // namespace

synth_result synthesize(const model_config& cfg_in, const std::filesystem::path& dir, const synth_options& opt) {
  check_v4(cfg_in);
  model_config cfg = cfg_in;
  if (cfg.experts == expert_format::detect) cfg.experts = expert_format::fp4;  // what the official files hold
  writer w(cfg, opt);
  w.model();
  synth_result r;
  r.tensors = w.tensors.size();
  for (const auto& t : w.tensors) r.bytes += t.nbytes();
  std::vector<tensor_data> all(std::make_move_iterator(w.tensors.begin()), std::make_move_iterator(w.tensors.end()));
  std::uint64_t shard = opt.shard_bytes;
  if (opt.shards > 0) {
    // Greedy packing at total/n can spill into shard n+1: grow the cap by 0.1% steps until n shards suffice.
    shard = std::max<std::uint64_t>(1, (r.bytes + static_cast<std::uint64_t>(opt.shards) - 1) / opt.shards);
    while (io::plan_shards(all, shard).size() > static_cast<std::size_t>(opt.shards)) shard += shard / 1000 + 1;
  }
  DSV4_CHECK(shard > 0, "synth", "shard size must be > 0");
  prepare_dir(dir, opt.overwrite);
  r.shards = io::write_sharded(dir, all, shard);
  std::ofstream f(dir / "config.json", std::ios::binary);
  f << to_hf_json(cfg);
  DSV4_CHECK(f.good(), "synth", (dir / "config.json").string(), ": write failed");
  return r;
}

}  // namespace dsv4::model
