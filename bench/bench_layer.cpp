// bench_layer — one V4-Flash-shaped block (real dims: D 4096, 64 heads x 512, q_lora 1024, 8 x 1024 output groups,
// indexer 64 x 128 top-512, window 128, 256 experts x 2048 top-6 + shared, mHC 4 streams) through the reference
// forward pass on the CPU backend, 2 threads:
//   BM_block_decode/kind/ctx   one decoded token with 4K or 64K tokens of context in the caches (CSA and HCA blocks);
//   BM_block_decode_batch/n    one decode step of n sequences at 4K context in one batched call (n = 1, 4, 16): the
//                              tokens/s gain of reading every weight once per step, and the weight bytes per token;
//   BM_small_decode_batch/n    the small preset end to end, one decode step of n sequences (512-token context);
//   BM_block_prefill512/kind   a 512-token prefill from an empty cache.
// Counters: tokens/s and the share of wall time per sub-block (attention, MoE, mHC + norms). The layout comes from a
// sparse synthetic checkpoint; every projection and expert is then replaced by random bytes in memory (FP8 / FP4
// codes with E8M0 scales, 3.5 GB), and the embedding, norms, gate and bias by random values, so weights really
// stream from DRAM and the routing is realistic. The decode caches are filled with random entries, keys and window
// rows (filling 64K tokens through the block would take minutes and measure prefill, not decode).
#include <benchmark/benchmark.h>

#include <filesystem>
#include <map>
#include <memory>
#include <cstring>
#include <random>
#include <unistd.h>

#include "bench_util.hpp"
#include "dsv4/buffer.hpp"
#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/forward.hpp"
#include "dsv4/model/synth.hpp"
#include "dsv4/ops/paged.hpp"

using namespace dsv4;
using namespace dsv4::model;

namespace {

struct block_model {
  std::filesystem::path dir;
  model_config cfg;
  std::unique_ptr<io::checkpoint> ckpt;
  model_weights w;
  std::vector<buffer> owned;  // the random tensors put over the zero ones
  std::unique_ptr<transformer> tf;

  explicit block_model(int ratio) {
    cfg = preset("v4-flash");
    cfg.name = "v4-flash block";
    cfg.n_layers = 1;
    cfg.n_mtp_layers = 0;
    cfg.compress_ratios = {ratio, 0};
    cfg.n_hash_layers = 0;
    cfg.vocab_size = 1024;  // one block: keep embedding and head small
    dir = std::filesystem::temp_directory_path() /
          ("dsv4_bench_block_" + std::to_string(ratio) + "_" + std::to_string(::getpid()));
    synth_options opt;
    opt.sparse = true;
    opt.mtp = false;
    synthesize(cfg, dir, opt);
    ckpt = std::make_unique<io::checkpoint>(io::checkpoint::open(dir));
    w = bind_weights(*ckpt, cfg, {false});
    std::mt19937_64 r(1);
    std::normal_distribution<float> nd(0.f, 1.f);
    auto bf = [&](std::initializer_list<std::int64_t> shape, float sd, float mean) {
      buffer b(dtype::bf16, shape);
      for (auto& v : b.host_span<bf16>()) v = bf16::from_float(mean + sd * nd(r));
      owned.push_back(std::move(b));
      return owned.back().view();
    };
    // Random weight bytes in memory over the sparse file's zeros: reading the zero page would keep every weight in
    // cache and hide the memory traffic that decode is bound by. FP8 codes avoid the NaN code.
    std::uint64_t st = 0x9E3779B97F4A7C15ull;
    auto next = [&] {
      st ^= st << 13;
      st ^= st >> 7;
      st ^= st << 17;
      return st;
    };
    auto random_like = [&](ops::qweight& q) {
      if (q.weight.rank() != 2) return;
      const dtype dt = q.weight.dt();
      buffer b(dt, {q.weight.shape(0), q.weight.shape(1)});
      auto* p = static_cast<std::uint8_t*>(b.data());
      const std::int64_t nb = b.nbytes();
      for (std::int64_t i = 0; i + 8 <= nb; i += 8) {
        std::uint64_t v = next();
        std::memcpy(p + i, &v, 8);
      }
      if (dt == dtype::fp8_e4m3)
        for (std::int64_t i = 0; i < nb; ++i)
          if ((p[i] & 0x7F) == 0x7F) p[i] &= 0xFE;
      if (dt == dtype::bf16)
        for (std::int64_t i = 0; i < nb / 2; ++i) reinterpret_cast<bf16*>(p)[i] = bf16::from_float(0.02f * nd(r));
      owned.push_back(std::move(b));
      q.weight = owned.back().view();
      if (q.scale.rank() == 2) {
        buffer sc(dtype::ue8m0, {q.scale.shape(0), q.scale.shape(1)});
        // Scales that give the weights a realistic size (RMS ~ K^-1/2 for K ~ 4096): random E4M3 bytes have an RMS
        // of ~200, so 2^-15 .. 2^-13; random E2M1 codes ~3.5, so 2^-9 .. 2^-7. Activations then stay O(1) and the
        // router sees token-dependent inputs (with oversized weights the attention output swamps the embedding and
        // every token routes to the same experts).
        const int base = dt == dtype::fp8_e4m3 ? 112 : 118;
        for (auto& v : sc.host_span<ue8m0>()) v = ue8m0{static_cast<std::uint8_t>(base + next() % 3)};
        owned.push_back(std::move(sc));
        q.scale = owned.back().view();
      }
    };
    auto& L = w.layers[0];
    for (ops::qweight* q : {&L.attn.wq_a, &L.attn.wq_b, &L.attn.wkv, &L.attn.wo_a, &L.attn.wo_b}) random_like(*q);
    if (L.attn.compressor) {
      random_like(L.attn.compressor->wkv);
      random_like(L.attn.compressor->wgate);
    }
    if (L.attn.indexer) {
      random_like(L.attn.indexer->wq_b);
      random_like(L.attn.indexer->weights_proj);
      random_like(L.attn.indexer->compressor.wkv);
      random_like(L.attn.indexer->compressor.wgate);
    }
    for (auto& e : L.ffn.experts)
      for (ops::qweight* q : {&e.w1, &e.w2, &e.w3}) random_like(*q);
    for (ops::qweight* q : {&L.ffn.shared->w1, &L.ffn.shared->w2, &L.ffn.shared->w3}) random_like(*q);

    const std::int64_t D = cfg.dim, E = cfg.n_routed_experts;
    w.embed = bf({cfg.vocab_size, D}, 1.f, 0.f);
    w.layers[0].attn_norm = bf({D}, 0.1f, 1.f);
    w.layers[0].ffn_norm = bf({D}, 0.1f, 1.f);
    w.layers[0].ffn.gate = bf({E, D}, 1.f / 64.f, 0.f);
    buffer bias(dtype::f32, {E});
    for (auto& v : bias.host_span<float>()) v = 0.1f * nd(r);
    owned.push_back(std::move(bias));
    w.layers[0].ffn.bias = owned.back().view();
    tf = std::make_unique<transformer>(cfg, w, bench::with(backend::cpu, 2));
    // Warm-up: one 512-token prefill touches (page-faults in) every expert the routing uses, so the timed runs see
    // the steady state rather than first-touch faults of 3.5 GB of weights.
    std::vector<std::int64_t> toks(512);
    for (std::size_t i = 0; i < toks.size(); ++i) toks[i] = static_cast<std::int64_t>((i * 37) % 1024);
    sequence_state s = tf->new_sequence();
    tf->forward(toks, s, {});
  }
  ~block_model() {
    tf.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

block_model& model_for(int ratio) {
  static std::map<int, std::unique_ptr<block_model>> models;
  auto& m = models[ratio];
  if (!m) m = std::make_unique<block_model>(ratio);
  return *m;
}

// A sequence whose layer pages hold `ctx` tokens of random (grid-free) compressed entries, keys and window rows.
sequence_state filled(const block_model& m, std::int64_t ctx, std::uint64_t seed = 2) {
  sequence_state s = m.tf->new_sequence(ctx + 1000000);
  page_pool& pool = s.pool();
  const std::int64_t id = s.id(), hd = m.cfg.head_dim, ic = m.cfg.index_head_dim, W = m.cfg.window_size;
  const std::int64_t B = pool.options().page_tokens, ratio = m.cfg.compress_ratio(0);
  // Map the pages the context needs, then write straight into them: the window (the last W positions), the
  // compressed entries and the indexer keys; state rows stay zero (a harmless pool input).
  pool.prepare(id, 0, ctx);
  std::mt19937_64 r(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto fill = [&](page_pool::region reg, std::int64_t from, std::int64_t to, std::int64_t width, bool key) {
    if (to <= from) return;
    const auto& t = pool.table(id, 0, reg);
    std::vector<float> v(static_cast<std::size_t>((to - from) * width));
    for (auto& x : v) x = nd(r);
    std::vector<std::int32_t> slots;
    for (std::int64_t j = from; j < to; ++j) slots.push_back(static_cast<std::int32_t>(cache::slot_of(t.data(), j, B)));
    const tensor_view vv(v.data(), dtype::f32, {to - from, width}), sv(slots.data(), dtype::i32, {to - from});
    if (key) ops::key_store(vv, sv, pool.key_view(0));
    else ops::kv_store(vv, sv, pool.kv_view(0));
  };
  fill(page_pool::region::window, std::max<std::int64_t>(0, ctx - W), ctx, hd, false);
  if (ratio) fill(page_pool::region::compressed, 0, ctx / ratio, hd, false);
  if (ratio == 4) fill(page_pool::region::keys, 0, ctx / 4, ic, true);
  pool.commit(id, 0, ctx);
  return s;
}

void report(benchmark::State& st, const forward_trace& acc, double tokens) {
  const auto& l = acc.layers[0];
  const double total = l.attn_s + l.moe_s + l.mhc_s + acc.embed_s + acc.head_s;
  st.counters["tokens/s"] = benchmark::Counter(tokens, benchmark::Counter::kIsRate);
  st.counters["attn%"] = 100 * l.attn_s / total;
  st.counters["moe%"] = 100 * l.moe_s / total;
  st.counters["mhc%"] = 100 * l.mhc_s / total;
}

void add(forward_trace& acc, const forward_trace& t) {
  if (acc.layers.empty()) acc.layers.resize(1);
  acc.layers[0].attn_s += t.layers[0].attn_s;
  acc.layers[0].moe_s += t.layers[0].moe_s;
  acc.layers[0].mhc_s += t.layers[0].mhc_s;
  acc.embed_s += t.embed_s;
  acc.head_s += t.head_s;
}

void BM_block_decode(benchmark::State& st) {
  const int ratio = static_cast<int>(st.range(0));
  const std::int64_t ctx = st.range(1);
  block_model& m = model_for(ratio);
  sequence_state s = filled(m, ctx);
  std::vector<float> logits(static_cast<std::size_t>(m.cfg.vocab_size));
  const std::vector<std::int64_t> tok = {17};
  forward_trace acc, t;
  for (auto _ : st) {
    m.tf->forward(tok, s, tensor_view(logits.data(), dtype::f32, {1, m.cfg.vocab_size}), &t);
    add(acc, t);
  }
  report(st, acc, double(st.iterations()));
}

// One decode step of `batch` sequences at once (4K context each): one forward_batch call, every weight read once
// per step. weightMB/token = the attention weights (read once per step) + the shared expert + the distinct routed
// experts the step touched, divided by the tokens of the step.
void BM_block_decode_batch(benchmark::State& st) {
  const std::int64_t ctx = 4096, batch = st.range(0);
  block_model& m = model_for(4);
  std::vector<sequence_state> seqs;
  for (std::int64_t i = 0; i < batch; ++i) seqs.push_back(filled(m, ctx, 100 + static_cast<std::uint64_t>(i)));
  std::vector<float> logits(static_cast<std::size_t>(batch * m.cfg.vocab_size));
  std::vector<std::int64_t> toks(static_cast<std::size_t>(batch));
  forward_trace acc, t;
  double distinct = 0;
  std::int64_t step = 0;
  for (auto _ : st) {
    std::vector<transformer::batch_entry> b;
    for (std::int64_t i = 0; i < batch; ++i) {
      toks[static_cast<std::size_t>(i)] = (17 + 31 * i + 7 * step) % m.cfg.vocab_size;  // different tokens: real routing
      b.push_back({std::span<const std::int64_t>(&toks[static_cast<std::size_t>(i)], 1), &seqs[static_cast<std::size_t>(i)],
                   tensor_view(logits.data() + i * m.cfg.vocab_size, dtype::f32, {1, m.cfg.vocab_size})});
    }
    m.tf->forward_batch(b, &t);
    add(acc, t);
    distinct += double(t.layers[0].distinct_experts);
    ++step;
    if (seqs[0].pos() >= ctx + 200)  // keep the context near 4K
      for (auto& s : seqs) s.truncate(s.pos() - 1);
  }
  report(st, acc, double(st.iterations() * batch));
  const block_weights& L = m.w.layers[0];
  auto bytes = [](const ops::qweight& q) { return double(q.weight.nbytes() + (q.scale.rank() ? q.scale.nbytes() : 0)); };
  double attn = 0;
  for (const ops::qweight* q : {&L.attn.wq_a, &L.attn.wq_b, &L.attn.wkv, &L.attn.wo_a, &L.attn.wo_b}) attn += bytes(*q);
  attn += bytes(L.attn.compressor->wkv) + bytes(L.attn.compressor->wgate);
  attn += bytes(L.attn.indexer->wq_b) + bytes(L.attn.indexer->weights_proj) + bytes(L.attn.indexer->compressor.wkv) +
          bytes(L.attn.indexer->compressor.wgate);
  const double expert = bytes(L.ffn.experts[0].w1) + bytes(L.ffn.experts[0].w2) + bytes(L.ffn.experts[0].w3);
  const double shared = bytes(L.ffn.shared->w1) + bytes(L.ffn.shared->w2) + bytes(L.ffn.shared->w3);
  const double per_step = attn + shared + expert * distinct / double(st.iterations());
  st.counters["weightMB/token"] = per_step / double(batch) / 1e6;
  st.counters["experts/step"] = distinct / double(st.iterations());
}

// The small preset end to end (6 layers, 16 experts, vocab 1024; weights ~15 MB, cache-resident): one decode step
// of `batch` sequences at a 512-token context in one forward_batch call, logits of every sequence.
void BM_small_decode_batch(benchmark::State& st) {
  static const auto model = [] {
    struct m {
      std::filesystem::path dir = std::filesystem::temp_directory_path() / ("dsv4_bench_small_" + std::to_string(::getpid()));
      model_config cfg = preset("small");
      std::unique_ptr<io::checkpoint> ck;
      model_weights w;
      std::unique_ptr<transformer> tf;
    };
    auto p = std::make_shared<m>();
    synth_options o;
    o.overwrite = true;
    synthesize(p->cfg, p->dir, o);
    p->ck = std::make_unique<io::checkpoint>(io::checkpoint::open(p->dir));
    p->w = bind_weights(*p->ck, p->cfg);
    p->tf = std::make_unique<transformer>(p->cfg, p->w, bench::with(backend::cpu, 2));
    return p;
  }();
  const std::int64_t batch = st.range(0), V = model->cfg.vocab_size, ctx = 512;
  std::vector<sequence_state> seqs;
  std::vector<std::int64_t> prompt(static_cast<std::size_t>(ctx));
  for (std::int64_t i = 0; i < batch; ++i) {
    for (std::int64_t t = 0; t < ctx; ++t) prompt[static_cast<std::size_t>(t)] = (t * 13 + i * 7) % V;
    seqs.push_back(model->tf->new_sequence(ctx + 100000));
    model->tf->forward(prompt, seqs.back(), {});
  }
  std::vector<float> logits(static_cast<std::size_t>(batch * V));
  std::vector<std::int64_t> toks(static_cast<std::size_t>(batch));
  std::int64_t step = 0;
  for (auto _ : st) {
    std::vector<transformer::batch_entry> b;
    for (std::int64_t i = 0; i < batch; ++i) {
      toks[static_cast<std::size_t>(i)] = (5 + 11 * i + 3 * step) % V;
      b.push_back({std::span<const std::int64_t>(&toks[static_cast<std::size_t>(i)], 1), &seqs[static_cast<std::size_t>(i)],
                   tensor_view(logits.data() + i * V, dtype::f32, {1, V})});
    }
    model->tf->forward_batch(b);
    if (seqs[0].pos() >= ctx + 24)
      for (auto& s : seqs) s.truncate(s.pos() - 1);
    ++step;
  }
  st.counters["tokens/s"] = benchmark::Counter(double(st.iterations() * batch), benchmark::Counter::kIsRate);
}

void BM_block_prefill512(benchmark::State& st) {
  const int ratio = static_cast<int>(st.range(0));
  block_model& m = model_for(ratio);
  std::vector<std::int64_t> toks(512);
  for (std::size_t i = 0; i < toks.size(); ++i) toks[i] = static_cast<std::int64_t>((i * 37) % 1024);
  forward_trace acc, t;
  for (auto _ : st) {
    sequence_state s = m.tf->new_sequence();
    m.tf->forward(toks, s, {}, &t);
    add(acc, t);
  }
  report(st, acc, 512.0 * double(st.iterations()));
}

}  // namespace

BENCHMARK(BM_block_decode)->ArgNames({"ratio", "ctx"})->Args({4, 4096})->Args({4, 65536})->Args({128, 4096})
    ->Args({128, 65536})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_block_decode_batch)->ArgNames({"batch"})->Arg(1)->Arg(4)->Arg(16)->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_small_decode_batch)->ArgNames({"batch"})->Arg(1)->Arg(4)->Arg(16)->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_block_prefill512)->ArgNames({"ratio"})->Arg(4)->Arg(128)->Iterations(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
