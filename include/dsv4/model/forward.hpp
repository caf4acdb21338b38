// dsv4/model/forward.hpp — the reference forward pass of DeepSeek-V4 (spec §4 block order, §7; numerics fp32 or
// official, dsv4/numerics.hpp).
//
//   model  = embed(ids) -> expand to hc_mult streams -> blocks -> hc_head -> norm -> head (logits, fp32)
//   block  = hc_pre(attn) -> attn_norm -> attention (SWA / CSA / HCA from compress_ratios) -> hc_post
//            -> hc_pre(ffn) -> ffn_norm -> MoE (hash-routed by tid2eid below num_hash_layers, else score-routed with
//            the gate bias for selection) -> hc_post
// forward() takes T new tokens of one sequence (any T: a prompt, a chunk of one, a decode step) and returns the logits
// of every one of them. forward_batch() takes the new tokens of several sequences at once (prefill chunks and decode
// steps mixed): every row-wise op (projections, mHC, norms, gate, experts, compressor projections, head) runs once
// over all their rows, so each weight is read once per step, and attention runs per row against that row's sequence
// pages. Every op is batch-independent on the CPU backend and the caches hold exact per-position state, so a
// sequence's logits do not depend on how it is split into calls, on what else is in the batch, on the thread count
// or on rollbacks (tests/test_forward.cpp). Sequences live in a page_pool (dsv4/model/pool.hpp); the MTP block is
// not run (the reference's generate.py does not use it either).
// Numerics official (chosen per transformer): the residual streams, every block output and every norm output are BF16
// values (official-numerics.md §1 E1-H3), the linears and experts round as ops::linear / ops::moe_ffn say under it,
// the attention as attention_layer says; the router (gate GEMM, scores, weights), mHC's mixing and Sinkhorn, the
// compressor projections and the head stay fp32, as in the official code. Chunk and batch invariance hold as under
// fp32 (every op is row-independent on a backend).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "dsv4/buffer.hpp"
#include "dsv4/exec.hpp"
#include "dsv4/model/attention.hpp"
#include "dsv4/model/config.hpp"
#include "dsv4/model/pool.hpp"
#include "dsv4/model/weights.hpp"
#include "dsv4/numerics.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::model {

// One sequence in a page pool (a handle: moving it is cheap; destroying it hands its pages back).
class sequence_state {
 public:
  sequence_state() = default;
  sequence_state(std::shared_ptr<page_pool> pool, std::int64_t capacity);
  ~sequence_state();
  sequence_state(sequence_state&& o) noexcept;
  sequence_state& operator=(sequence_state&& o) noexcept;
  sequence_state(const sequence_state&) = delete;
  sequence_state& operator=(const sequence_state&) = delete;

  bool valid() const { return pool_ != nullptr; }
  std::int64_t pos() const;        // tokens processed
  std::int64_t capacity() const;
  // Bytes this sequence holds, in the calculator's terms (window entries, compressed entries, indexer keys, state).
  std::int64_t cache_bytes() const;
  // Rollback for speculative decoding: back to position n; continuing gives bitwise what a sequence that never saw
  // the rejected tokens gives. n >= pos() − max_rollback of the pool (see page_pool::truncate).
  void truncate(std::int64_t n);

  page_pool& pool() const { return *pool_; }
  std::int64_t id() const { return id_; }

 private:
  std::shared_ptr<page_pool> pool_;
  std::int64_t id_ = -1;
};

// What one forward call did, per layer (for the teaching example and tests).
struct layer_trace {
  attention_trace attn;
  std::vector<std::int32_t> last_experts;  // routed experts of the last token, in routing order
  std::vector<float> last_weights;         // their routing weights
  bool hash_routed = false;
  std::int64_t distinct_experts = 0;       // routed experts used by any row of the call (weights read once each)
  double attn_s = 0, moe_s = 0, mhc_s = 0;  // wall time of the attention, the MoE (gate, routing, experts) and mHC + norms
};

struct forward_trace {
  std::vector<layer_trace> layers;
  double embed_s = 0, head_s = 0;
};

class graph_runner;

class transformer {
 public:
  // The weights (and the checkpoint they view) must outlive the transformer. `pool` sets the page layout of the
  // transformer's own pool (what new_sequence(capacity) uses).
  // Device: the transformer runs where the weights live. Weights on a CUDA device (upload_weights) run the whole
  // step there: every activation a device buffer, every op its CUDA backend, pages in device memory (the pools it
  // makes put them on that device; pool_options::dev is set to it), logits copied into the caller's views (host or
  // device). The host keeps the bookkeeping (validation, page mapping, positions, block tables, slot lists, staged
  // to the device through page-locked memory); the CSA picks stay on the device (indexer_topk, sort_rows, to_slots).
  // Activations come from an arena that stops allocating once a step shape has been seen. Under check_policy::sync
  // every op waits; under deferred (a stream and a status word) nothing in the step waits but its end
  // (check_status), and a step can be recorded into a CUDA graph (graph_runner below). Numerics fp32 only. Its
  // logits agree with the CPU's within fp32 rounding (tests/test_cuda_forward.cpp) and keep the same invariants,
  // bitwise: chunking, batching, rollback, repeated runs, eager == graph.
  transformer(const model_config& cfg, const model_weights& w, const exec& ex = {}, const pool_options& pool = {},
              numerics nm = numerics::fp32);

  const model_config& config() const { return cfg_; }
  numerics policy() const { return nm_; }
  // A new sequence accepting `capacity` positions (0: max_position_embeddings), in the transformer's own pool or in
  // a pool the caller shares between sequences (one pool per batch).
  sequence_state new_sequence(std::int64_t capacity = 0) const;
  sequence_state new_sequence(const std::shared_ptr<page_pool>& pool, std::int64_t capacity = 0) const;
  std::shared_ptr<page_pool> make_pool(const pool_options& opt = {}) const;
  const std::shared_ptr<page_pool>& pool() const { return pool_; }

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

  // One step for several sequences of one pool (e.g. one prefill chunk of one and decode steps of others), run as
  // one batch: each entry's logits are exactly what forward_rows() gives for it alone.
  struct batch_entry {
    std::span<const std::int64_t> tokens;
    sequence_state* seq = nullptr;
    tensor_view logits;                  // [tokens or rows, vocab], or empty
    std::span<const std::int64_t> rows;  // logits for these token indices only (empty: every token)
  };
  void forward_batch(std::span<const batch_entry> batch, forward_trace* trace = nullptr,
                     const std::function<void(std::int64_t)>& progress = {}) const;

  const exec& execution() const { return ex_; }
  device dev() const { return dev_; }

 private:
  model_config cfg_;
  const model_weights& w_;
  exec ex_;
  numerics nm_;
  std::shared_ptr<page_pool> pool_;
  std::vector<attention_layer> attn_;
  std::vector<ops::qweight> gate_;  // the router weights, named for messages
  device dev_;                       // where the weights live (every activation of a step goes there too)
  struct gpu_step;                   // the GPU steps' memory and its lock (forward.cpp)
  std::shared_ptr<gpu_step> gpu_;
  buffer norm_;                      // f32 [D] on dev_
  std::vector<buffer> attn_norm_, ffn_norm_;
};

// The GPU forward pass as a CUDA graph, step by step (dsv4/graph.hpp), the way an engine runs its decode loop.
// step(batch): maps the pages the step needs (outside the graph: the pool may grow there), records
// transformer::forward_batch(batch) on the transformer's stream — its host bookkeeping runs and writes this step's
// positions, block tables and slot lists into page-locked staging, no GPU work runs — applies the recording to the
// executable graph (in place when only arguments changed: new lengths, tables, slot lists, grid sizes), launches it,
// waits and checks the status word. The transformer's exec must be check_policy::deferred with a stream and a status
// word (dsv4/exec.hpp); logits views must live on the transformer's device (or be empty). Every step gives bitwise
// what forward_batch gives eagerly under the same exec.
class graph_runner {
 public:
  explicit graph_runner(const transformer& tf);
  ~graph_runner();
  graph_runner(const graph_runner&) = delete;
  graph_runner& operator=(const graph_runner&) = delete;

  void step(std::span<const transformer::batch_entry> batch);
  std::int64_t instantiations() const;  // recordings that needed a new executable graph
  std::int64_t updates() const;         // recordings applied in place

 private:
  const transformer& tf_;
  struct impl;
  std::unique_ptr<impl> d_;
};

}  // namespace dsv4::model
