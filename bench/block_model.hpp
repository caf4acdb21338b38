// bench/block_model.hpp — one V4-Flash-shaped block with random weights in memory (bench_layer on the CPU,
// bench_cuda on the GPU), and sequences whose pages hold a context of random entries.
//
// The layout comes from a sparse synthetic checkpoint; every projection and expert is then replaced by random bytes
// in memory (FP8 / FP4 codes with E8M0 scales, 3.5 GB), and the embedding, norms, gate and bias by random values, so
// weights really stream from memory and the routing is realistic. The decode caches are filled with random entries,
// keys and window rows (filling 64K tokens through the block would take minutes and measure prefill, not decode).
#pragma once

#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <unistd.h>

#include "bench_util.hpp"
#include "dsv4/buffer.hpp"
#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/forward.hpp"
#include "dsv4/model/synth.hpp"
#include "dsv4/ops/memory.hpp"
#include "dsv4/ops/paged.hpp"

namespace dsv4::bench {

using namespace dsv4::model;

struct block_model {
  std::filesystem::path dir;
  model_config cfg;
  std::unique_ptr<io::checkpoint> ckpt;
  model_weights w;
  std::vector<buffer> owned;  // the random tensors put over the zero ones
  std::unique_ptr<transformer> tf;

  // ratio: the block's compress ratio (4: CSA, 128: HCA). cpu: also make the CPU transformer (2 threads) and warm it
  // up with a 512-token prefill (page-faults in every expert the routing uses).
  explicit block_model(int ratio, bool cpu = true) {
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
    // The attention's own norms too: the sparse file's zero weights would make q, kv and the indexer's query exactly
    // zero (an all-zero FP4 query sends the indexer to its exact fallback, timing a path real inputs never take).
    L.attn.q_norm = bf({cfg.q_lora_rank}, 0.1f, 1.f);
    L.attn.kv_norm = bf({cfg.head_dim}, 0.1f, 1.f);
    if (L.attn.compressor) L.attn.compressor->norm = bf({cfg.head_dim}, 0.1f, 1.f);
    if (L.attn.indexer) L.attn.indexer->compressor.norm = bf({cfg.index_head_dim}, 0.1f, 1.f);
    w.layers[0].ffn.gate = bf({E, D}, 1.f / 64.f, 0.f);
    buffer bias(dtype::f32, {E});
    for (auto& v : bias.host_span<float>()) v = 0.1f * nd(r);
    owned.push_back(std::move(bias));
    w.layers[0].ffn.bias = owned.back().view();
    if (!cpu) return;
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

// A sequence of tf (a block_model's, on the host or a GPU) whose layer pages hold `ctx` tokens of random (grid-free)
// compressed entries, keys and window rows, and zero compressor state rows for the positions the next emits read.
inline sequence_state filled(const transformer& tf, std::int64_t ctx, std::uint64_t seed = 2) {
  const model_config& cfg = tf.config();
  sequence_state s = tf.new_sequence(ctx + 1000000);
  page_pool& pool = s.pool();
  const device dev = pool.options().dev;
  const std::int64_t id = s.id(), hd = cfg.head_dim, ic = cfg.index_head_dim, W = cfg.window_size;
  const std::int64_t B = pool.options().page_tokens, ratio = cfg.compress_ratio(0);
  // Map the pages the context needs, then write straight into them: the window (the last W positions), the
  // compressed entries and the indexer keys.
  pool.prepare(id, 0, ctx);
  std::mt19937_64 r(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto on_dev = [&](const tensor_view& h) {  // a host array where the pages are
    buffer b(h.dt(), h.shape(), dev);
    ops::copy(h, b.view());
    return b;
  };
  auto slots_of = [&](page_pool::region reg, std::int64_t from, std::int64_t to) {
    const auto& t = pool.table(id, 0, reg);
    std::vector<std::int32_t> slots;
    for (std::int64_t j = from; j < to; ++j) slots.push_back(static_cast<std::int32_t>(cache::slot_of(t.data(), j, B)));
    return slots;
  };
  auto fill = [&](page_pool::region reg, std::int64_t from, std::int64_t to, std::int64_t width, bool key) {
    if (to <= from) return;
    std::vector<float> v(static_cast<std::size_t>((to - from) * width));
    for (auto& x : v) x = nd(r);
    std::vector<std::int32_t> slots = slots_of(reg, from, to);
    const buffer vv = on_dev(tensor_view(v.data(), dtype::f32, {to - from, width}));
    const buffer sv = on_dev(tensor_view(slots.data(), dtype::i32, {to - from}));
    if (key) ops::key_store(vv, sv, pool.key_view(0));
    else ops::kv_store(vv, sv, pool.kv_view(0));
  };
  fill(page_pool::region::window, std::max<std::int64_t>(0, ctx - W), ctx, hd, false);
  if (ratio) fill(page_pool::region::compressed, 0, ctx / ratio, hd, false);
  if (ratio == 4) fill(page_pool::region::keys, 0, ctx / 4, ic, true);
  // The state rows the next entries pool over (coff·ratio positions back): zero, as a host pool's fresh pages are.
  for (const bool indexer : {false, true}) {
    if (ratio == 0 || (indexer && ratio != 4)) continue;
    const cache::state_rows st = pool.state_view(0, indexer);
    const std::int64_t from = std::max<std::int64_t>(0, ctx - 2 * ratio);
    const std::vector<float> zero(static_cast<std::size_t>(st.rows.shape(1)), 0.f);
    for (std::int32_t slot : slots_of(indexer ? page_pool::region::state_index : page_pool::region::state_main, from, ctx))
      ops::copy(tensor_view(const_cast<float*>(zero.data()), dtype::f32, {st.rows.shape(1)}), st.rows.select(0, slot));
  }
  pool.commit(id, 0, ctx);
  return s;
}

// Bytes of a stored weight (codes + scales).
inline double weight_bytes(const ops::qweight& q) {
  return double(q.weight.nbytes() + (q.scale.rank() ? q.scale.nbytes() : 0));
}

// The attention weights a decode step of the block reads (projections, compressors, indexer), and one expert's.
inline double attention_bytes(const block_weights& L) {
  double a = 0;
  for (const ops::qweight* q : {&L.attn.wq_a, &L.attn.wq_b, &L.attn.wkv, &L.attn.wo_a, &L.attn.wo_b}) a += weight_bytes(*q);
  if (L.attn.compressor) a += weight_bytes(L.attn.compressor->wkv) + weight_bytes(L.attn.compressor->wgate);
  if (L.attn.indexer)
    a += weight_bytes(L.attn.indexer->wq_b) + weight_bytes(L.attn.indexer->weights_proj) +
         weight_bytes(L.attn.indexer->compressor.wkv) + weight_bytes(L.attn.indexer->compressor.wgate);
  return a;
}
inline double expert_bytes(const ops::ffn_weights& e) {
  return weight_bytes(e.w1) + weight_bytes(e.w2) + weight_bytes(e.w3);
}

}  // namespace dsv4::bench
