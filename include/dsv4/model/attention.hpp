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

// One sequence's state for one layer. Storage is fp32 (policy fp32: values on the FP8/FP4 grids, rope dims exact);
// bytes() reports what it holds.
struct attention_cache {
  std::int64_t pos = 0;        // tokens processed
  std::int64_t capacity = 0;   // positions accepted; more is an error
  std::int64_t head_dim = 0, index_dim = 0, window = 0;
  std::vector<float> ring;     // [window, head_dim], position p in slot p mod window
  std::vector<float> comp;     // [n_comp, head_dim] compressed entries (CSA / HCA)
  std::vector<float> keys;     // [n_keys, index_head_dim] indexer keys (CSA)
  compressor_state main, index;

  std::int64_t n_comp() const { return head_dim ? static_cast<std::int64_t>(comp.size()) / head_dim : 0; }
  std::int64_t n_keys() const { return index_dim ? static_cast<std::int64_t>(keys.size()) / index_dim : 0; }
  std::int64_t bytes() const;
  void reset();  // a new sequence
};

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
  attention_cache new_cache(std::int64_t capacity = 0) const;

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
