// dsv4/model/attention.hpp — one V4 attention layer (SWA, CSA or HCA, from the config's compress ratio) with its
// per-sequence cache (spec §3, §7, §10; numerics policy fp32).
//
// forward(x, cache, y) runs T new tokens of ONE sequence at positions cache.pos .. cache.pos + T − 1:
//   query   qr = q_norm(wq_a x); q = wq_b qr, per-head RMS rescale (no weight), RoPE at each token's position;
//   kv      kv = kv_norm(wkv x), RoPE, FP8 round trip of dims [0, nope) (blocks of 64, UE8M0);
//   compressor (ratio 4 overlapped, 128 not) — a per-token state machine: token p writes row (overlap ? r : 0) +
//           p mod r of the fp32 state (kv and score + ape[p mod r]); when (p+1) mod r == 0 entry j = p / r is the
//           per-channel softmax pool over the block (overlap: rows 0..r−1 = channels [0, c) of the previous block, rows
//           r..2r−1 = channels [c, 2c) of this block), then RMSNorm, RoPE at position r·j, FP8 round trip (main) or
//           Hadamard + FP4 round trip (indexer), and rows r..2r−1 move to rows 0..r−1;
//   indexer (CSA) qI = wq_b_I qr, RoPE, Hadamard, FP4 round trip; w = weights_proj x · (c_I^-1/2 · n_I^-1/2);
//           scores over the (p+1) div 4 visible entries, top-k (k = min(index_topk, visible)), lower index wins ties;
//   attention over [window: positions max(0, p−W+1) .. p ascending ; compressed: the CSA picks ascending, or every
//           visible HCA entry], sink in the denominator, scale head_dim^-1/2; then inverse RoPE, wo_a per group, wo_b.
// Because every per-token step depends only on that token, the cache and the weights, and every kernel is
// batch-independent, any split of a sequence into chunks (1-token decode steps included) gives bit-identical
// outputs on a given backend. Visibility: compressed entry j is visible to position i iff (j+1)·ratio <= i+1.
//
// The layer keeps non-owning views of the bound weights (the checkpoint must outlive it), decodes wo_a to fp32 once
// (the reference, too, dequantizes it for a BF16 einsum) and copies the small vectors (norms, sink, ape).
#pragma once

#include <cstdint>
#include <vector>

#include "dsv4/exec.hpp"
#include "dsv4/model/config.hpp"
#include "dsv4/model/rope.hpp"
#include "dsv4/model/weights.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::model {

// Compressor state of one sequence: fp32 kv and score rows [coff·ratio, coff·c], reset to (0, −inf) (spec §3.4).
struct compressor_state {
  int ratio = 0;
  bool overlap = false;
  std::int64_t width = 0;  // c
  std::vector<float> kv, score;
  void reset();
};

// How a cache stores its KV entries and indexer keys.
//   fp32      every value as fp32: exact under the fp32 policy (the default);
//   deployed  the production layout the report counts (spec §8.2, FlashMLA): an entry is nope FP8 codes + rope dims in
//             BF16 + one E8M0 scale per 64 nope dims, padded to 8 bytes (584 B for V4), an indexer key c/2 bytes of
//             FP4 + one E8M0 per 32 (68 B). The FP8 / FP4 parts are lossless (the values are already on those
//             grids); the rope dims are rounded to BF16, as the reference code's BF16 cache does. The kernels read
//             fp32, so entries are decoded when used.
enum class kv_storage : std::uint8_t { fp32, deployed };

// One sequence's state for one layer.
struct attention_cache {
  std::int64_t pos = 0;        // tokens processed
  std::int64_t capacity = 0;   // positions accepted; more is an error
  std::int64_t head_dim = 0, nope = 0, index_dim = 0, window = 0, ratio = 0;
  std::int64_t ring_rows = 0;  // min(window, capacity): the ring never holds more rows than the sequence can have
  kv_storage storage = kv_storage::fp32;
  std::int64_t entry_bytes = 0, key_bytes = 0;  // per stored entry / key in this storage
  // fp32 storage:
  std::vector<float> ring;     // [ring_rows, head_dim], position p in slot p mod window (< ring_rows)
  std::vector<float> comp;     // [n_comp, head_dim] compressed entries (CSA / HCA)
  std::vector<float> keys;     // [n_keys, index_head_dim] indexer keys (CSA)
  // deployed storage: the same rows packed, entry_bytes / key_bytes each.
  std::vector<std::uint8_t> ring_packed, comp_packed, keys_packed;
  compressor_state main, index;

  std::int64_t n_comp() const { return n_comp_; }
  std::int64_t n_keys() const { return n_keys_; }
  // Bytes held for this sequence: occupied window slots (min(pos, window)), compressed entries, indexer keys and the
  // fp32 compressor state — the terms of the calculator's KV count (dsv4/model/costs.hpp).
  std::int64_t bytes() const;
  // The same at `capacity` tokens (what reserve() allocates).
  std::int64_t capacity_bytes() const;
  std::int64_t state_bytes() const;  // the fp32 compressor state (fixed per sequence)
  void reserve();  // allocate for `capacity` tokens up front (sizing for 1M tokens when asked)
  void reset();    // a new sequence

  // Row access in either storage (fp32 out/in).
  void read_ring(float* rows) const;                          // [ring_rows, head_dim]
  void write_ring(std::int64_t slot, const float* v);
  void append_entry(const float* v);
  void read_entry(std::int64_t j, float* v) const;
  void append_key(const float* v);
  void read_keys(std::int64_t n, float* out) const;           // keys [0, n) -> [n, index_dim]

 private:
  std::int64_t n_comp_ = 0, n_keys_ = 0;
};

// The cache layer `layer` of cfg needs (no weights required): capacity 0 means max_position_embeddings.
attention_cache make_attention_cache(const model_config& cfg, std::int64_t layer, std::int64_t capacity = 0,
                                     kv_storage storage = kv_storage::fp32);

// What one forward call did (for tests and the teaching example).
struct attention_trace {
  std::int64_t emitted = 0;                // compressed entries emitted (main)
  std::int64_t emitted_index = 0;          // indexer keys emitted
  std::vector<std::int32_t> last_picks;    // CSA: compressed entries the last token attends, ascending
  std::int64_t last_window = 0;            // window entries the last token attends
  std::int64_t last_compressed = 0;        // compressed entries the last token attends
};

class attention_layer {
 public:
  attention_layer(const model_config& cfg, const block_weights& w, const exec& ex = {});

  attn_kind kind() const { return kind_; }
  int ratio() const { return ratio_; }
  const rope_table& rope() const { return rope_; }

  // A fresh cache for one sequence accepting `capacity` positions (0: the config's max_position_embeddings).
  attention_cache new_cache(std::int64_t capacity = 0, kv_storage storage = kv_storage::fp32) const;

  // x [T, D] f32 (the attn_norm output of the block) -> y [T, D] f32, for one sequence. Errors: shapes, T = 0,
  // positions past the cache's capacity, a cache made for another shape.
  void forward(const tensor_view& x, attention_cache& cache, const tensor_view& y,
               attention_trace* trace = nullptr) const;

 private:
  void emit_main(attention_cache& c, std::int64_t j, std::vector<float>& entry) const;
  void emit_index(attention_cache& c, std::int64_t j, std::vector<float>& entry) const;

  model_config cfg_;
  std::int64_t layer_;
  int ratio_;
  attn_kind kind_;
  exec ex_;
  rope_table rope_;
  attention_weights w_;
  std::vector<float> q_norm_, kv_norm_, sink_, comp_norm_, comp_ape_, index_norm_, index_ape_;
  std::vector<float> wo_a_;  // [g·o_lora, H·head_dim / g] fp32
};

}  // namespace dsv4::model
