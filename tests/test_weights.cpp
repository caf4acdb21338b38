// synth -> load round trips for every small preset, weight statistics, and bind_weights reporting every problem.
#include <fstream>
#include <set>

#include "dsv4/buffer.hpp"
#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/config.hpp"
#include "dsv4/model/synth.hpp"
#include "dsv4/model/weights.hpp"
#include "dsv4/ops/linear.hpp"
#include "harness.hpp"

using namespace dsv4;
using namespace dsv4::model;
using dsv4::test::check_error;
using dsv4::test::temp_dir;
namespace fs = std::filesystem;

namespace {

using test::load_all;
io::tensor_data* find(std::vector<io::tensor_data>& ts, const std::string& name) { return test::find_tensor(ts, name); }

void write_model(const fs::path& dir, const std::vector<io::tensor_data>& ts, const model_config& cfg) {
  fs::create_directories(dir);
  io::write_safetensors(dir / "model.safetensors", ts);
  std::ofstream(dir / "config.json") << to_hf_json(cfg);
}

// RMS of y = x·Wᵀ for x ~ N(0, 1): about 1 when W ~ N(0, 1/K) (the synth scale rule).
double output_rms(const ops::qweight& w, std::int64_t K, std::uint64_t seed) {
  const std::int64_t T = 64, N = w.weight.shape(0);
  buffer x = test::host_f32(T, K, test::randn(static_cast<std::size_t>(T * K), seed));
  buffer y(dtype::f32, {T, N});
  ops::linear(x, w, y);
  double s = 0;
  for (float v : y.host_span<float>()) s += double(v) * v;
  return std::sqrt(s / double(T * N));
}

}  // namespace

TEST_SUITE("weights") {
  TEST_CASE("synth -> load round trip for every small preset; the same seed writes the same bytes") {
    for (const char* name : {"tiny", "small"}) {
      CAPTURE(name);
      temp_dir d(std::string("w_rt_") + name);
      const model_config p = preset(name);
      synth_options opt;
      opt.seed = 7;
      const auto r = synthesize(p, d.path / "a", opt);
      CHECK(r.bytes == checkpoint_bytes(p));
      const model_config back = load_config(d.path / "a");
      model_config want = p;
      want.name = back.name;
      CHECK(back == want);
      const io::checkpoint c = io::checkpoint::open(d.path / "a");
      const model_weights w = bind_weights(c, back);
      REQUIRE(w.layers.size() == static_cast<std::size_t>(p.n_layers));
      CHECK(w.mtp.size() == static_cast<std::size_t>(p.n_mtp_layers));
      CHECK(w.experts == expert_format::fp4);
      for (const auto& b : w.layers) {
        CHECK(b.attn.compressor.has_value() == (b.ratio != 0));
        CHECK(b.attn.indexer.has_value() == (b.ratio == 4));
        CHECK((b.ffn.tid2eid.rank() == 2) == p.hash_routed(b.layer));
        CHECK((b.ffn.bias.rank() == 1) == !p.hash_routed(b.layer));
        CHECK(b.ffn.experts.size() == static_cast<std::size_t>(p.n_routed_experts));
        CHECK(b.ffn.shared.has_value());
      }
      // Same seed, same bytes; another seed, other bytes.
      synthesize(p, d.path / "b", opt);
      opt.seed = 8;
      synthesize(p, d.path / "c", opt);
      const io::checkpoint cb = io::checkpoint::open(d.path / "b"), cc = io::checkpoint::open(d.path / "c");
      const auto ea = c.bytes("embed.weight"), eb = cb.bytes("embed.weight"), ec = cc.bytes("embed.weight");
      CHECK(std::memcmp(ea.data(), eb.data(), ea.size()) == 0);
      CHECK(std::memcmp(ea.data(), ec.data(), ea.size()) != 0);
    }
  }

  TEST_CASE("synthetic weights follow the documented scales, so activations stay O(1)") {
    temp_dir d("w_scale");
    const model_config p = preset("small");
    synthesize(p, d.path, {});
    const io::checkpoint c = io::checkpoint::open(d.path);
    const model_weights w = bind_weights(c, p);
    const auto& b = w.layers[1];
    // FP8 tiles: the tile scale is the quantizer's rule, so each tile's largest code decodes to (224, 448].
    const auto* codes = static_cast<const fp8_e4m3*>(b.attn.wq_a.weight.data());
    const std::int64_t N = b.attn.wq_a.weight.shape(0), K = b.attn.wq_a.weight.shape(1);
    float tile_max = 0;
    for (std::int64_t n = 0; n < std::min<std::int64_t>(N, 128); ++n)
      for (std::int64_t k = 0; k < std::min<std::int64_t>(K, 128); ++k)
        tile_max = std::max(tile_max, std::fabs(codes[n * K + k].to_float()));
    CHECK(tile_max > 224.f);
    CHECK(tile_max <= 448.f);
    // Projections: RMS-1 input -> RMS about 1 output (fan-in scaling), for FP8, FP4 and BF16 storage.
    CHECK(output_rms(b.attn.wq_a, p.dim, 1) == doctest::Approx(1.0).epsilon(0.15));
    CHECK(output_rms(b.ffn.experts[3].w1, p.dim, 2) == doctest::Approx(1.0).epsilon(0.15));
    CHECK(output_rms(b.attn.compressor->wkv, p.dim, 3) == doctest::Approx(1.0).epsilon(0.15));
    // Residual-branch outputs are scaled down by 1/sqrt(2·n_layers).
    const double depth = 1.0 / std::sqrt(2.0 * double(p.n_layers));
    CHECK(output_rms(b.attn.wo_b, p.o_groups * p.o_lora_rank, 4) == doctest::Approx(depth).epsilon(0.15));
    CHECK(output_rms(b.ffn.experts[3].w2, p.moe_inter_dim, 5) == doctest::Approx(depth).epsilon(0.2));
    // tid2eid rows: k distinct experts in range.
    const auto& h = w.layers[0].ffn.tid2eid;
    REQUIRE(h.dt() == dtype::i64);
    const auto* ids = static_cast<const std::int64_t*>(h.data());
    for (std::int64_t v = 0; v < p.vocab_size; ++v) {
      std::set<std::int64_t> row(ids + v * p.n_activated_experts, ids + (v + 1) * p.n_activated_experts);
      CHECK(row.size() == static_cast<std::size_t>(p.n_activated_experts));
      CHECK(*row.begin() >= 0);
      CHECK(*row.rbegin() < p.n_routed_experts);
    }
  }

  TEST_CASE("bind_weights reports every missing, misshapen, mistyped, unexpected and out-of-range tensor at once") {
    temp_dir d("w_bad");
    const model_config p = preset("tiny");
    synthesize(p, d.path / "good", {});
    std::vector<io::tensor_data> ts = load_all(io::checkpoint::open(d.path / "good"));
    // Two missing tensors.
    std::erase_if(ts, [](const io::tensor_data& t) {
      return t.name == "layers.1.attn.wkv.scale" || t.name == "layers.3.ffn.experts.7.w2.weight";
    });
    // A wrong shape: q_norm one element short.
    io::tensor_data* qn = find(ts, "layers.2.attn.q_norm.weight");
    qn->shape[0] -= 1;
    qn->data.resize(qn->nbytes());
    // A wrong dtype: attn_sink as BF16.
    io::tensor_data* sink = find(ts, "layers.0.attn.attn_sink");
    sink->dt = io::st_dtype::BF16;
    sink->data.resize(sink->nbytes());
    // An unexpected tensor: an indexer on the HCA layer 2.
    ts.push_back({"layers.2.attn.indexer.weights_proj.weight", io::st_dtype::BF16, {2, 64},
                  std::vector<std::byte>(256)});
    // tid2eid naming expert 8 of 8.
    io::tensor_data* tid = find(ts, "layers.0.ffn.gate.tid2eid");
    const std::int64_t bad = 8;
    std::memcpy(tid->data.data() + 5 * 8, &bad, 8);
    write_model(d.path / "bad", ts, p);
    const io::checkpoint c = io::checkpoint::open(d.path / "bad");
    check_error([&] { (void)bind_weights(c, p); },
                {"6 problems", "missing tensor layers.1.attn.wkv.scale (F8_E8M0 [1, 1])",
                 "missing tensor layers.3.ffn.experts.7.w2.weight (I8 or U8 [64, 32])",
                 "layers.2.attn.q_norm.weight: shape [63], expected [64]",
                 "layers.0.attn.attn_sink: dtype BF16, expected F32",
                 "unexpected tensor layers.2.attn.indexer.weights_proj.weight",
                 "layers.0.ffn.gate.tid2eid: 1 entries outside [0, n_routed_experts = 8), first at [2, 1] = 8"});
  }

  TEST_CASE("a checkpoint bound with the wrong config fails with the mismatches listed") {
    temp_dir d("w_wrongcfg");
    synthesize(preset("tiny"), d.path, {});
    const io::checkpoint c = io::checkpoint::open(d.path);
    check_error([&] { (void)bind_weights(c, preset("small")); },
                {"does not match config small", "embed.weight: shape [512, 64], expected [1024, 256]",
                 "layers.0.attn.wq_a.weight: shape [64, 64], expected [128, 256]", "40 or more problems",
                 "stopped after the first 40"});
    check_error([&] { (void)bind_weights(c, preset("v3.2")); }, {"not a V4 model"});
  }

  TEST_CASE("accepted storage variants: tid2eid as I32, experts detected, BF16 dequantized linears, no MTP") {
    temp_dir d("w_variants");
    model_config p = preset("tiny");
    synthesize(p, d.path / "good", {});
    std::vector<io::tensor_data> ts = load_all(io::checkpoint::open(d.path / "good"));
    // tid2eid as I32 (what the model code declares).
    io::tensor_data* tid = find(ts, "layers.0.ffn.gate.tid2eid");
    std::vector<std::byte> i32(tid->data.size() / 2);
    for (std::size_t i = 0; i < i32.size() / 4; ++i) {
      std::int64_t v;
      std::memcpy(&v, tid->data.data() + 8 * i, 8);
      const std::int32_t w = static_cast<std::int32_t>(v);
      std::memcpy(i32.data() + 4 * i, &w, 4);
    }
    tid->dt = io::st_dtype::I32;
    tid->data = std::move(i32);
    // wq_a of layer 1 dequantized to BF16 (no .scale): the binder takes it as a dense weight.
    io::tensor_data* wqa = find(ts, "layers.1.attn.wq_a.weight");
    wqa->dt = io::st_dtype::BF16;
    wqa->data.assign(wqa->nbytes(), std::byte{0});
    std::erase_if(ts, [](const io::tensor_data& t) { return t.name == "layers.1.attn.wq_a.scale"; });
    p.experts = expert_format::detect;
    write_model(d.path / "v", ts, p);
    const io::checkpoint c = io::checkpoint::open(d.path / "v");
    const model_config cfg = load_config(d.path / "v");
    CHECK(cfg.experts == expert_format::detect);
    const model_weights w = bind_weights(c, cfg);
    CHECK(w.experts == expert_format::fp4);
    CHECK(w.layers[0].ffn.tid2eid.dt() == dtype::i32);
    CHECK(w.layers[1].attn.wq_a.weight.dt() == dtype::bf16);
    CHECK(w.layers[1].attn.wq_a.scale.rank() == 0);
    // Without MTP tensors: fine with mtp = false, an error naming them otherwise.
    std::erase_if(ts, [](const io::tensor_data& t) { return t.name.rfind("mtp.", 0) == 0; });
    write_model(d.path / "nomtp", ts, p);
    const io::checkpoint c2 = io::checkpoint::open(d.path / "nomtp");
    bind_options no_mtp;
    no_mtp.mtp = false;
    CHECK(bind_weights(c2, cfg, no_mtp).mtp.empty());
    check_error([&] { (void)bind_weights(c2, cfg); }, {"missing tensor mtp.0."});
    // The config says FP8 experts but the tensors are FP4 bytes.
    model_config fp8 = cfg;
    fp8.experts = expert_format::fp8;
    check_error([&] { (void)bind_weights(c, fp8); }, {"experts.0.w1.weight: dtype I8, expected F8_E4M3"});
  }
}
