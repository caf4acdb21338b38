// dsv4/model/forward.hpp — the reference forward pass of DeepSeek-V4 (spec §4 block order, §7; numerics fp32).
//
//   model  = embed(ids) -> expand to hc_mult streams -> blocks -> hc_head -> norm -> head (logits, fp32)
//   block  = hc_pre(attn) -> attn_norm -> attention (SWA / CSA / HCA from compress_ratios) -> hc_post
//            -> hc_pre(ffn) -> ffn_norm -> MoE (hash-routed by tid2eid below num_hash_layers, else score-routed with
//            the gate bias for selection) -> hc_post
// forward() takes T new tokens of one sequence (any T: a prompt, a chunk of one, a decode step) and returns the logits
// of every one of them. Every op it calls is batch-independent on the CPU backend and the attention layers keep
// exact per-sequence state, so logits do not depend on how a sequence is split into calls (tests/test_forward.cpp).
// Several sequences: one sequence_state each; forward_batch runs a batch of independent sequences with different
// lengths (each with its own tokens, state and logits). The MTP block is not run (the reference's generate.py does
// not use it either).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "dsv4/exec.hpp"
#include "dsv4/model/attention.hpp"
#include "dsv4/model/config.hpp"
#include "dsv4/model/weights.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::model {

// One sequence: one attention cache per layer; its position is theirs (every layer sees every token).
struct sequence_state {
  std::vector<attention_cache> caches;
  std::int64_t pos() const { return caches.empty() ? 0 : caches.front().pos; }
  std::int64_t cache_bytes() const;
};

// What one forward call did, per layer (for the teaching example and tests).
struct layer_trace {
  attention_trace attn;
  std::vector<std::int32_t> last_experts;  // routed experts of the last token, in routing order
  std::vector<float> last_weights;         // their routing weights
  bool hash_routed = false;
  double attn_s = 0, moe_s = 0, mhc_s = 0;  // wall time of the attention, the MoE (gate, routing, experts) and mHC + norms
};

struct forward_trace {
  std::vector<layer_trace> layers;
  double embed_s = 0, head_s = 0;
};

class transformer {
 public:
  // The weights (and the checkpoint they view) must outlive the transformer.
  transformer(const model_config& cfg, const model_weights& w, const exec& ex = {},
              kv_storage storage = kv_storage::fp32);

  const model_config& config() const { return cfg_; }
  // A new sequence accepting `capacity` positions (0: max_position_embeddings).
  sequence_state new_sequence(std::int64_t capacity = 0) const;

  // tokens [T] (ids in [0, vocab)) at positions seq.pos() .. -> logits [T, vocab] f32 (an empty view: not needed).
  // progress(layer) is called after each layer. Errors: empty input, ids out of range, positions past the capacity.
  void forward(std::span<const std::int64_t> tokens, sequence_state& seq, const tensor_view& logits,
               forward_trace* trace = nullptr, const std::function<void(std::int64_t)>& progress = {}) const {
    forward_rows(tokens, seq, {}, logits, trace, progress);
  }
  // The same with logits only for the tokens at indices `rows` of this call (ascending or not, each in [0, T)):
  // logits [rows.size(), vocab]. Empty rows: every token. The head runs only on the rows asked for.
  void forward_rows(std::span<const std::int64_t> tokens, sequence_state& seq, std::span<const std::int64_t> rows,
                    const tensor_view& logits, forward_trace* trace = nullptr,
                    const std::function<void(std::int64_t)>& progress = {}) const;

  // A batch of independent sequences, e.g. one prefill chunk of one and decode steps of others. Each entry's
  // result is exactly what forward() gives for it alone (the sequences share nothing but the weights).
  struct batch_entry {
    std::span<const std::int64_t> tokens;
    sequence_state* seq = nullptr;
    tensor_view logits;  // [tokens, vocab], or empty
  };
  void forward_batch(std::span<const batch_entry> batch) const;

 private:
  model_config cfg_;
  const model_weights& w_;
  exec ex_;
  kv_storage storage_;
  std::vector<attention_layer> attn_;
  std::vector<ops::qweight> gate_;  // the router weights, named for messages
  std::vector<float> norm_;
  std::vector<std::vector<float>> attn_norm_, ffn_norm_;
};

}  // namespace dsv4::model
