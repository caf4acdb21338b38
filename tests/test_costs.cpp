// The FLOPs / KV calculator: the paper's ratios, exact byte arithmetic, independent parameter counts, and the FLOP
// terms checked against the ref kernels' counter on real (synthetic) weights.
#include "dsv4/buffer.hpp"
#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/attention.hpp"
#include "dsv4/model/config.hpp"
#include "dsv4/model/forward.hpp"
#include "dsv4/model/costs.hpp"
#include "dsv4/model/synth.hpp"
#include "dsv4/model/weights.hpp"
#include "dsv4/ops/linear.hpp"
#include "dsv4/ops/mhc.hpp"
#include "dsv4/ops/moe.hpp"
#include "dsv4/ref/flops.hpp"
#include "harness.hpp"

using namespace dsv4;
using namespace dsv4::model;
using dsv4::test::check_error;
using dsv4::test::temp_dir;

namespace {

constexpr std::int64_t k1M = 1 << 20;

double term(const cost_report& r, const std::string& name) {
  double s = 0;
  for (const auto& t : r.flops)
    if (t.name == name) s += t.flops;
  return s;
}

double kv_bytes_of(const cost_report& r, const std::string& name) {
  for (const auto& t : r.kv)
    if (t.name == name) return t.bytes;
  return 0;
}

}  // namespace

TEST_SUITE("costs") {
  TEST_CASE("the report's 1M-context ratios under the default assumptions") {
    const cost_report v32 = decode_costs(preset("v3.2"), k1M), pro = decode_costs(preset("v4-pro"), k1M),
                      flash = decode_costs(preset("v4-flash"), k1M);
    const flops_weights w;
    // Paper (spec §8.1): Pro 27% FLOPs / 10% KV, Flash 10% / 7%, both ~2% of a BF16 GQA8 cache. Tolerance ±1.5 pp
    // (the bar); the GQA8 comparison ±0.3 pp around 2%.
    CHECK(pro.flops_fp8(w) / v32.flops_fp8(w) == doctest::Approx(0.27).epsilon(0.015 / 0.27));
    CHECK(flash.flops_fp8(w) / v32.flops_fp8(w) == doctest::Approx(0.10).epsilon(0.015 / 0.10));
    CHECK(pro.kv_total() / v32.kv_total() == doctest::Approx(0.10).epsilon(0.015 / 0.10));
    CHECK(flash.kv_total() / v32.kv_total() == doctest::Approx(0.07).epsilon(0.015 / 0.07));
    CHECK(pro.kv_total() / gqa_kv_bytes(61, k1M) == doctest::Approx(0.02).epsilon(0.15));
    CHECK(flash.kv_total() / gqa_kv_bytes(43, k1M) == doctest::Approx(0.02).epsilon(0.15));
    // The weighting matters for Flash: at 1x everywhere its FLOPs ratio leaves the band (spec §8.2: 12.1%).
    const flops_weights flat{1, 1, 1, 1};
    CHECK(flash.flops_fp8(flat) / v32.flops_fp8(flat) > 0.115);
    // All-BF16 storage gives about 3.9% of GQA8 (spec §8.2): the 2% needs the mixed FP8/BF16 layout.
    cost_assumptions bf;
    bf.layout = kv_layout::bf16;
    CHECK(decode_costs(preset("v4-pro"), k1M, bf).kv_total() / gqa_kv_bytes(61, k1M) > 0.035);
  }

  TEST_CASE("cache byte arithmetic, exactly") {
    const model_config pro = preset("v4-pro"), v32 = preset("v3.2");
    CHECK(kv_entry_bytes(pro, kv_layout::deployed) == 584);  // 448 FP8 + 64·2 BF16 + 7 E8M0 + 1 pad
    CHECK(index_key_bytes(pro, kv_layout::deployed) == 68);  // 64 FP4 bytes + 4 E8M0
    CHECK(kv_entry_bytes(pro, kv_layout::bf16) == 1024);
    CHECK(index_key_bytes(pro, kv_layout::bf16) == 256);
    CHECK(kv_entry_bytes(v32, kv_layout::deployed) == 656);  // 512 FP8 + 4·4 fp32 scales + 64·2 BF16
    CHECK(index_key_bytes(v32, kv_layout::deployed) == 132);
    const cost_report r = decode_costs(pro, k1M);
    // 30 CSA layers (entries every 4 tokens) + 31 HCA layers (every 128).
    CHECK(kv_bytes_of(r, "compressed entries") == double((30 * (k1M / 4) + 31 * (k1M / 128)) * 584));
    CHECK(kv_bytes_of(r, "indexer keys") == double(30 * (k1M / 4) * 68));
    CHECK(kv_bytes_of(r, "window rings") == double(61 * 128 * 584));
    CHECK(kv_bytes_of(r, "compressor state") ==
          double(30 * (2 * 4 * 8 * 1024 + 2 * 4 * 8 * 256) + 31 * (2 * 4 * 128 * 512)));
    // Per token: 30·652/4 + 31·584/128 = 5031.4 B (spec §8.2).
    CHECK((kv_bytes_of(r, "compressed entries") + kv_bytes_of(r, "indexer keys")) / double(k1M) ==
          doctest::Approx(5031.4375));
    const cost_report b = decode_costs(v32, k1M);
    CHECK(b.kv_total() == double(61LL * (656 + 132) * k1M));  // 48,068 B per token (spec §8.2)
    CHECK(gqa_kv_bytes(61, 1) == 61 * 4096.0);
    // A short context: the window ring holds min(L, window) entries; no compressed entry before `ratio` tokens.
    const cost_report s = decode_costs(pro, 100);
    CHECK(kv_bytes_of(s, "window rings") == double(61 * 100 * 584));
    CHECK(kv_bytes_of(s, "compressed entries") == double(30 * 25 * 584));
  }

  TEST_CASE("core attention and indexer FLOPs by hand on the tiny shape") {
    // tiny: ratios [0, 4, 128, 4], H 2, head_dim 96, window 16, top-k 4, indexer 2 x 64. At L = 100: window 16;
    // CSA layers add min(4, 100/4) = 4 entries, the HCA layer 100/128 = 0.
    const model_config c = preset("tiny");
    const cost_report r = decode_costs(c, 100);
    CHECK(term(r, "core attention") == 4.0 * 2 * 96 * (16 + 20 + 16 + 20));
    CHECK(term(r, "indexer scores") == 2 * (2.0 * 2 * 64 * 25));
    // At L = 300 the HCA layer sees 2 entries and the CSA top-k is saturated.
    const cost_report r3 = decode_costs(c, 300);
    CHECK(term(r3, "core attention") == 4.0 * 2 * 96 * (16 + 20 + 18 + 20));
    cost_assumptions no_head;
    no_head.count_head = false;
    CHECK(term(decode_costs(c, 300, no_head), "head") == 0);
    CHECK(term(r3, "head") == 2.0 * 64 * 512);
    check_error([&] { (void)decode_costs(c, 0); }, {"context 0"});
  }

  TEST_CASE("parameter counts: totals within 2% of the published ones; independent shape sums") {
    // Expected values from a separate shape sum over the spec §1.2 inventory (a script, not this code): every main
    // layer tensor, embed, head, norm and hc_head; active = the same with k of E routed experts, without embed.
    const param_counts f = count_params(preset("v4-flash")), p = count_params(preset("v4-pro")),
                       v = count_params(preset("v3.2"));
    CHECK(f.total == 284332240471.0);
    CHECK(f.active == 13270101591.0);
    CHECK(p.total == 1572997201763.0);
    CHECK(p.active == 48852402019.0);
    CHECK(f.total / 284e9 == doctest::Approx(1.0).epsilon(0.02));
    CHECK(p.total / 1.6e12 == doctest::Approx(1.0).epsilon(0.02));
    CHECK(v.total / 671e9 == doctest::Approx(1.0).epsilon(0.02));
    CHECK(p.active / 49e9 == doctest::Approx(1.0).epsilon(0.02));
    // Flash's active count is 2.1% above the published "13B" (a figure rounded to whole billions); no rule puts
    // both models within 2% (README). Pinned so a change in the rule is noticed.
    CHECK(f.active / 13e9 == doctest::Approx(1.0208).epsilon(0.001));
    CHECK(f.mtp / 1e9 == doctest::Approx(6.6).epsilon(0.05));  // spec §1.1: +6.6B MTP
  }

  TEST_CASE("the calculator's matrix-product terms equal what the ref kernels count on real weights") {
    // Run one token through every weight GEMM of the tiny model on the ref backend with its FLOP counter on, group
    // by calculator term, and compare with decode_costs (these terms do not depend on the context).
    temp_dir d("costs_exec");
    const model_config c = preset("tiny");
    synthesize(c, d.path, {});
    const io::checkpoint ck = io::checkpoint::open(d.path);
    const model_weights w = bind_weights(ck, c);
    const exec ref = test::on(backend::ref);

    auto run_linear = [&](const ops::qweight& q) {
      const std::int64_t N = q.weight.shape(0), K = q.weight.shape(1);
      buffer x = test::host_f32(1, K, test::randn(static_cast<std::size_t>(K), 1));
      buffer y(dtype::f32, {1, N});
      ref::scoped_flop_count n;
      ops::linear(x, q, y, ref);
      return double(n.flops());
    };
    double proj = 0, comp = 0, idx = 0, gate = 0, experts = 0, mhc = 0;
    for (const auto& b : w.layers) {
      // wo_a: the g grouped products [ol, H·hd/g] have together the FLOPs of one [g·ol, H·hd/g] product.
      proj += run_linear(b.attn.wq_a) + run_linear(b.attn.wq_b) + run_linear(b.attn.wkv) + run_linear(b.attn.wo_b) +
              run_linear(b.attn.wo_a);
      if (b.attn.compressor) comp += run_linear(b.attn.compressor->wkv) + run_linear(b.attn.compressor->wgate);
      if (b.attn.indexer) {
        comp += run_linear(b.attn.indexer->compressor.wkv) + run_linear(b.attn.indexer->compressor.wgate);
        idx += run_linear(b.attn.indexer->wq_b) + run_linear(b.attn.indexer->weights_proj);
      }
      gate += run_linear(ops::qweight{b.ffn.gate, {}});
      {
        buffer x = test::host_f32(1, c.dim, test::randn(static_cast<std::size_t>(c.dim), 2));
        buffer wt(dtype::f32, {1, c.n_activated_experts}), ids(dtype::i32, {1, c.n_activated_experts});
        for (std::int64_t i = 0; i < c.n_activated_experts; ++i) {
          wt.host_span<float>()[static_cast<std::size_t>(i)] = 0.5f;
          ids.host_span<std::int32_t>()[static_cast<std::size_t>(i)] = static_cast<std::int32_t>(2 * i + 1);
        }
        buffer y(dtype::f32, {1, c.dim});
        ref::scoped_flop_count n;
        ops::moe_ffn(x, wt, ids, b.ffn.experts, &*b.ffn.shared, 10.f, y, ref);
        experts += double(n.flops());
      }
      for (const hc_weights* h : {&b.hc_attn, &b.hc_ffn}) {
        buffer x = test::host_f32(1, c.hc_mult * c.dim, test::randn(static_cast<std::size_t>(c.hc_mult * c.dim), 3));
        const tensor_view x3(x.data(), dtype::f32, {1, c.hc_mult, c.dim});
        buffer y(dtype::f32, {1, c.dim}), post(dtype::f32, {1, c.hc_mult}), comb(dtype::f32, {1, c.hc_mult, c.hc_mult});
        ref::scoped_flop_count n;
        ops::hc_pre(x3, h->fn, h->scale, h->base, y, post, comb, {}, ref);
        mhc += double(n.flops());
      }
    }
    {
      buffer x = test::host_f32(1, c.hc_mult * c.dim, test::randn(static_cast<std::size_t>(c.hc_mult * c.dim), 4));
      const tensor_view x3(x.data(), dtype::f32, {1, c.hc_mult, c.dim});
      buffer y(dtype::f32, {1, c.dim});
      ref::scoped_flop_count n;
      ops::hc_head(x3, w.hc_head.fn, w.hc_head.scale, w.hc_head.base, y, {}, ref);
      mhc += double(n.flops());
    }
    const double head = run_linear(ops::qweight{w.head, {}});

    const cost_report r = decode_costs(c, 1000);
    CHECK(proj == term(r, "projections"));
    CHECK(comp == term(r, "compressor"));
    CHECK(idx == term(r, "indexer"));
    CHECK(gate == term(r, "gate"));
    CHECK(experts == term(r, "routed experts") + term(r, "shared expert"));
    CHECK(mhc == term(r, "mHC"));
    CHECK(head == term(r, "head"));
  }

  TEST_CASE("attention on real weights: counted FLOPs of one decoded token and the cache bytes equal the calculator") {
    // Prefill L − 1 tokens through every attention layer of the tiny model (ref backend, deployed cache layout),
    // then count the FLOPs of decoding token L − 1 (context L) and compare with the calculator's attention terms;
    // the caches then hold exactly the calculator's KV bytes for context L.
    temp_dir d("costs_attn");
    const model_config c = preset("tiny");
    synthesize(c, d.path, {});
    const io::checkpoint ck = io::checkpoint::open(d.path);
    const model_weights w = bind_weights(ck, c);
    for (std::int64_t L : {std::int64_t{1}, std::int64_t{20}, std::int64_t{300}}) {
      CAPTURE(L);
      const auto x = test::randn(static_cast<std::size_t>(L * c.dim), 9);
      double counted = 0, held = 0;
      pool_options po;
      po.kv = cache::kv_format::fp8_ds_mla;  // the deployed layout the calculator counts
      page_pool pool(c, po);
      const std::int64_t id = pool.add_sequence();
      for (const auto& b : w.layers) {
        const attention_layer layer(c, b, test::on(backend::ref));
        std::vector<float> y(static_cast<std::size_t>(L * c.dim));
        if (L > 1)
          layer.forward(tensor_view(const_cast<float*>(x.data()), dtype::f32, {L - 1, c.dim}),
                        row_batch::one(pool, id, 0, L - 1), tensor_view(y.data(), dtype::f32, {L - 1, c.dim}));
        ref::scoped_flop_count n;
        layer.forward(tensor_view(const_cast<float*>(x.data()) + (L - 1) * c.dim, dtype::f32, {1, c.dim}),
                      row_batch::one(pool, id, L - 1, 1), tensor_view(y.data(), dtype::f32, {1, c.dim}));
        counted += double(n.flops());
        held += double(pool.held_bytes(id, b.layer));
      }
      const cost_report r = decode_costs(c, L);
      CHECK(counted == term(r, "projections") + term(r, "compressor") + term(r, "indexer") +
                           term(r, "indexer scores") + term(r, "indexer weighting") + term(r, "core attention"));
      CHECK(held == r.kv_total());
    }
  }

  TEST_CASE("the whole reference forward pass: one decoded token's counted FLOPs equal the calculator's matrix terms") {
    temp_dir d("costs_model");
    const model_config c = preset("tiny");
    synthesize(c, d.path, {});
    const io::checkpoint ck = io::checkpoint::open(d.path);
    const model_weights w = bind_weights(ck, c);
    pool_options po;
    po.kv = cache::kv_format::fp8_ds_mla;
    const transformer tf(c, w, test::on(backend::ref), po);
    const std::int64_t L = 260;
    std::vector<std::int64_t> ids(static_cast<std::size_t>(L));
    for (std::int64_t i = 0; i < L; ++i) ids[static_cast<std::size_t>(i)] = (i * 7 + 3) % c.vocab_size;
    sequence_state s = tf.new_sequence();
    tf.forward(std::span<const std::int64_t>(ids.data(), static_cast<std::size_t>(L - 1)), s, {});
    std::vector<float> logits(static_cast<std::size_t>(c.vocab_size));
    ref::scoped_flop_count n;
    tf.forward(std::span<const std::int64_t>(ids.data() + L - 1, 1), s, tensor_view(logits.data(), dtype::f32, {1, c.vocab_size}));
    const double counted = double(n.flops());
    const cost_report r = decode_costs(c, L);
    double matrix = 0;  // every term but the approximate elementwise one
    for (const auto& t : r.flops)
      if (t.name != "elementwise") matrix += t.flops;
    CHECK(counted == matrix);
    CHECK(double(s.cache_bytes()) == r.kv_total());
  }
}
