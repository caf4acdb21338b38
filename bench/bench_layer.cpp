// bench_layer — one V4-Flash-shaped block (real dims: D 4096, 64 heads x 512, q_lora 1024, 8 x 1024 output groups,
// indexer 64 x 128 top-512, window 128, 256 experts x 2048 top-6 + shared, mHC 4 streams) through the reference
// forward pass on the CPU backend, 2 threads:
//   BM_block_decode/kind/ctx   one decoded token with 4K or 64K tokens of context in the caches (CSA and HCA blocks);
//   BM_block_decode_batch/n    one decode step of n sequences at 4K context in one batched call (n = 1, 4, 16): the
//                              tokens/s gain of reading every weight once per step, and the weight bytes per token;
//   BM_small_decode_batch/n    the small preset end to end, one decode step of n sequences (512-token context);
//   BM_block_prefill512/kind   a 512-token prefill from an empty cache.
// Counters: tokens/s and the share of wall time per sub-block (attention, MoE, mHC + norms). BM_block_decode also
// reports the weight bytes the token read (weightMB: attention weights, shared expert, the 6 routed experts), the
// read bandwidth of 2 threads measured after every step (read, GB/s: bench::read_pass), floor_ms = weightMB / read
// (the step if every weight byte arrived at that bandwidth) and bw = floor_ms / the step's wall time. The block
// (random weights in memory) and the filled caches: bench/block_model.hpp.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <map>
#include <memory>
#include <cstring>
#include <random>
#include <unistd.h>

#include "block_model.hpp"

using namespace dsv4;
using namespace dsv4::model;
using dsv4::bench::block_model;
using dsv4::bench::filled;

namespace {

block_model& model_for(int ratio) {
  static std::map<int, std::unique_ptr<block_model>> models;
  auto& m = models[ratio];
  if (!m) m = std::make_unique<block_model>(ratio);
  return *m;
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

// Weight bytes a decode step of one token reads: the attention weights, the shared expert and the routed experts
// it touched (6 per token).
double step_weight_bytes(const block_model& m, double routed) {
  const block_weights& L = m.w.layers[0];
  return bench::attention_bytes(L) + bench::expert_bytes(*L.ffn.shared) +
         routed * bench::expert_bytes(L.ffn.experts[0]);
}

void BM_block_decode(benchmark::State& st) {
  const int ratio = static_cast<int>(st.range(0));
  const std::int64_t ctx = st.range(1);
  block_model& m = model_for(ratio);
  sequence_state s = filled(*m.tf, ctx);
  std::vector<float> logits(static_cast<std::size_t>(m.cfg.vocab_size));
  const std::vector<std::int64_t> tok = {17};
  forward_trace acc, t;
  double read = 0, distinct = 0, wall = 0;
  for (auto _ : st) {
    wall += bench::seconds_per_call(
        [&] { m.tf->forward(tok, s, tensor_view(logits.data(), dtype::f32, {1, m.cfg.vocab_size}), &t); });
    add(acc, t);
    distinct += double(t.layers[0].distinct_experts);
    read += bench::paused_read_pass(st, 2);  // after every step: the neighbours move it minute to minute
  }
  report(st, acc, double(st.iterations()));
  const double iters = double(st.iterations());
  const double mb = step_weight_bytes(m, distinct / iters) / 1e6;
  st.counters["weightMB"] = mb;  // weight bytes one decoded token reads
  st.counters["read"] = read / iters;  // GB/s of the read baseline, 2 threads
  // the step time if every weight byte arrived at the read bandwidth of the same run, and the share of it reached
  st.counters["floor_ms"] = mb / (read / iters);
  st.counters["bw"] = mb / (read / iters) / 1e3 / (wall / iters);
}

// One decode step of `batch` sequences at once (4K context each): one forward_batch call, every weight read once
// per step. weightMB/token = the attention weights (read once per step) + the shared expert + the distinct routed
// experts the step touched, divided by the tokens of the step.
void BM_block_decode_batch(benchmark::State& st) {
  const std::int64_t ctx = 4096, batch = st.range(0);
  block_model& m = model_for(4);
  std::vector<sequence_state> seqs;
  for (std::int64_t i = 0; i < batch; ++i) seqs.push_back(filled(*m.tf, ctx, 100 + static_cast<std::uint64_t>(i)));
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
  const double attn = bench::attention_bytes(L), expert = bench::expert_bytes(L.ffn.experts[0]),
               shared = bench::expert_bytes(*L.ffn.shared);
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
