// dsv4/model/pool.hpp — the page pool behind every sequence of the forward pass: per layer, one array of KV pages
// (sliding-window entries and compressed entries share it, like FlashMLA's one cache), one of indexer key pages (CSA
// layers) and two of compressor state rows, all in the byte layouts of dsv4/cache.hpp; per sequence and layer, block
// tables that map logical entries to pages.
//
// Addressing (logical index -> block table -> page):
//   window entries     by position p (the window of position p is p − W + 1 .. p, read in place from the pages);
//   compressed entries by entry index j (entry j covers positions ratio·j .. ratio·j + ratio − 1);
//   indexer keys       by entry index j (CSA layers);
//   compressor state   one fp32 row per position p (dsv4/cache.hpp), for the main and the indexer compressor.
// Pages are mapped as positions advance (prepare) and handed back when no position can need them again (commit):
// window pages once all their positions are older than pos − W − max_rollback, state pages once older than
// pos − coff·ratio − max_rollback. So memory follows what a sequence holds, as in vLLM's sliding-window block tables.
//
// Rollback (speculative decoding): truncate(seq, n) rewinds every layer to position n. Nothing is copied or
// recomputed: rows and entries are keyed by position, later writes overwrite them, and every read is bounded by the
// position. It is exact for any n >= the furthest position the sequence reached minus max_rollback (older window
// and state pages may have been handed back; such an n is an error).
//
// The pool grows its page arrays (doubling) when it runs out, so callers never size it; a page array may move when
// it grows, so views into it are taken per call (kv_view etc.) and never kept across calls.
//
// Threads: every method locks the pool, and a forward call holds that lock (hold()) for its whole step, because
// another sequence's prepare may move the arrays its views point into. So sequences of one pool may be used from
// any threads, their forward calls running one at a time (transformer::new_sequence() puts every sequence in the
// transformer's one pool); sequences in different pools (transformer::make_pool) run in parallel. Code that keeps
// views or tables while other threads use the pool holds hold() for that long.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "dsv4/cache.hpp"
#include "dsv4/model/config.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::model {

struct pool_options {
  std::int64_t page_tokens = 64;                    // B: entries (keys, state rows) per page
  cache::kv_format kv = cache::kv_format::f32;      // f32: exact under the fp32 policy; fp8_ds_mla: the engines' 584 B
  cache::key_format keys = cache::key_format::fp4;  // fp4: lossless for the indexer's FP4 round-tripped keys
  std::int64_t max_rollback = 32;                   // positions a sequence can be truncated back by
  device dev = device::cpu();                        // where the pages live (a CUDA device for the GPU forward pass)
};

class page_pool {
 public:
  page_pool(const model_config& cfg, const pool_options& opt = {});
  ~page_pool();
  page_pool(const page_pool&) = delete;
  page_pool& operator=(const page_pool&) = delete;

  const pool_options& options() const { return opt_; }
  const model_config& config() const { return cfg_; }
  // The pool's lock (recursive: the methods below take it too), for a span of calls that must see no other thread.
  std::unique_lock<std::recursive_mutex> hold() const { return std::unique_lock<std::recursive_mutex>(mu_); }

  // A new empty sequence accepting `capacity` positions (0: max_position_embeddings); remove() hands its pages back.
  std::int64_t add_sequence(std::int64_t capacity = 0);
  void remove_sequence(std::int64_t seq);
  bool live(std::int64_t seq) const;
  std::int64_t capacity(std::int64_t seq) const;
  std::int64_t pos(std::int64_t seq, std::int64_t layer) const;  // tokens this layer has processed
  // Rewinds every layer of the sequence to position n (see the header comment); an error outside
  // [furthest reached − max_rollback, pos].
  void truncate(std::int64_t seq, std::int64_t n);
  std::int64_t rollback_floor(std::int64_t seq) const;

  // The attention layer's side: map the pages positions [pos, end) need, then advance to end and hand back pages.
  void prepare(std::int64_t seq, std::int64_t layer, std::int64_t end);
  void commit(std::int64_t seq, std::int64_t layer, std::int64_t end);

  // Views of layer `layer`'s page arrays (valid until the next prepare of any sequence).
  cache::kv_pages kv_view(std::int64_t layer) const;
  cache::key_pages key_view(std::int64_t layer) const;
  cache::state_rows state_view(std::int64_t layer, bool indexer) const;
  enum class region : std::uint8_t { window, compressed, keys, state_main, state_index };
  const std::vector<std::int32_t>& table(std::int64_t seq, std::int64_t layer, region r) const;

  // What a sequence holds in layer `layer`, in the calculator's terms (dsv4/model/costs.hpp): min(pos, W) window
  // entries, the compressed entries and indexer keys, and the fp32 compressor state of coff·ratio rows per compressor.
  std::int64_t held_bytes(std::int64_t seq, std::int64_t layer) const;
  std::int64_t held_bytes(std::int64_t seq) const;  // all layers
  // Pages in use over all layers and arrays, and the bytes of the arrays (what the pool has allocated).
  std::int64_t pages_in_use() const;
  std::int64_t allocated_bytes() const;

 private:
  struct impl;
  model_config cfg_;
  pool_options opt_;
  std::unique_ptr<impl> d_;
  mutable std::recursive_mutex mu_;
};

}  // namespace dsv4::model
