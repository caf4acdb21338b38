// dsv4/model/attention.hpp — one V4 attention layer (SWA, CSA or HCA, from the config's compress ratio) with its
// per-sequence cache (spec §3, §7, §10; numerics policy fp32 or official, dsv4/numerics.hpp).
//
// forward(x, rows, y) runs T new token rows, possibly of several sequences (rows.seq[t] at rows.pos[t]; each
// sequence's rows are its next positions, in order), against the sequences' pages in a page_pool
// (dsv4/model/pool.hpp). Every row-wise step runs once over all T rows (one read of each weight):
//   query   qr = q_norm(wq_a x); q = wq_b qr, per-head RMS rescale (no weight), RoPE at each row's position;
//   kv      kv = kv_norm(wkv x), RoPE, FP8 round trip of dims [0, nope) (blocks of 64, UE8M0), stored into the
//           window pages at the row's position (ops::kv_store);
//   compressor (ratio 4 overlapped, 128 not): each row's state row [kv | score + ape] is written at its position
//           (ops::compressor_append); a row that closes a block (p + 1 ≡ 0 mod ratio) emits entry j = p / ratio
//           (ops::compressor_emit: per-channel softmax pool over the coff·ratio rows ending at p, RMSNorm, RoPE at
//           ratio·j, FP8 round trip into the KV pages, or Hadamard + FP4 round trip into the key pages);
//   indexer (CSA) qI = wq_b_I qr, RoPE, Hadamard, FP4 round trip; w = weights_proj x · (c_I^-1/2 · n_I^-1/2);
//           scores over the (p+1) div 4 keys of the row's sequence and top-k (k = min(index_topk, keys)), ties to the
//           lower index (ops::indexer_topk);
//   attention over [window: positions max(0, p−W+1) .. p ascending ; compressed: the CSA picks ascending, or every
//           visible HCA entry] read from the pages by slot (ops::sparse_mqa), sink in the denominator, scale
//           head_dim^-1/2; then inverse RoPE, wo_a per group, wo_b.
// Every store happens before any read, and every read of row t is bounded by its own position, so a row's output
// depends only on its sequence's earlier tokens: any split of a sequence into calls, any mix of sequences in a call
// and any rollback give bit-identical outputs on a given backend. Visibility: compressed entry j is visible to
// position i iff (j+1)·ratio <= i+1.
//
// The layer keeps non-owning views of the bound weights (the checkpoint must outlive it), reads wo_a as stored when
// its groups align with the FP8 tiles (else decodes it to fp32 once: the fp32 policy's values are the same) and
// copies the small vectors (norms, sink, ape).
//
// Device: the layer runs where its weights live. With weights on a CUDA device (model::upload_weights) and a pool
// whose pages live there too, every activation is a device buffer and every step an op with a CUDA backend; what
// stays on the host is the bookkeeping (page mapping, the slot lists of each row), built as on the CPU and staged to
// the device per call; the CSA picks are sorted ascending and mapped to slots by ops on the device (the attention
// sums in entry order on every device). Memory comes from the step's arena (the transformer's; forward() alone makes
// its own). The numerics official policy has no CUDA path (an error).
//
// Under numerics official every step rounds where DeepSeek's inference code does (official-numerics.md §1 A6-A16,
// C1-C7, I1-I8, S1-S4): wq_a, wq_b, wkv, the indexer's wq_b and wo_b are promoted FP8 GEMMs with BF16 outputs, the
// norms and RoPE write BF16, the q head norm is the BF16-arithmetic chain, the indexer weights are a BF16 GEMM times
// the scale rounded again, index scores are BF16, attention rounds P to BF16, wo_a is a BF16 GEMM (the stored FP8
// values, exact in BF16); the compressor projections stay fp32 GEMMs (C1). The entry lists and their order are the
// fp32 policy's (see ops::sparse_mqa for the block rule), so chunk and batch invariance hold under both policies.
#pragma once

#include <cstdint>
#include <vector>

#include "dsv4/buffer.hpp"
#include "dsv4/exec.hpp"
#include "dsv4/model/config.hpp"
#include "dsv4/model/pool.hpp"
#include "dsv4/model/rope.hpp"
#include "dsv4/model/weights.hpp"
#include "dsv4/numerics.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::model {

// The rows of one forward call: row t is token position pos[t] of sequence seq[t] of `pool`.
struct row_batch {
  page_pool* pool = nullptr;
  std::vector<std::int64_t> seq, pos;
  std::int64_t size() const { return static_cast<std::int64_t>(seq.size()); }
  // T rows of one sequence from position p0.
  static row_batch one(page_pool& pool, std::int64_t seq, std::int64_t p0, std::int64_t T);
};

// What one forward call did, for its last row (tests and the teaching example).
struct attention_trace {
  std::int64_t emitted = 0;                // compressed entries emitted (main), over all rows
  std::int64_t emitted_index = 0;          // indexer keys emitted
  std::vector<std::int32_t> last_picks;    // CSA: compressed entries the last row attends, ascending
  std::int64_t last_window = 0;            // window entries the last row attends
  std::int64_t last_compressed = 0;        // compressed entries the last row attends
};

namespace detail {
class step_memory;
}
class transformer;

class attention_layer {
 public:
  attention_layer(const model_config& cfg, const block_weights& w, const exec& ex = {},
                  numerics nm = numerics::fp32);

  attn_kind kind() const { return kind_; }
  int ratio() const { return ratio_; }
  std::int64_t layer() const { return layer_; }
  const rope_table& rope() const { return rope_; }

  // x [T, D] f32 (the attn_norm output of the block) -> y [T, D] f32 for the rows of `rows`; advances each of their
  // sequences in this layer. Errors: shapes, T = 0, rows of a sequence that are not its next positions in order,
  // positions past a sequence's capacity, a pool made for another config.
  void forward(const tensor_view& x, const row_batch& rows, const tensor_view& y,
               attention_trace* trace = nullptr) const;

 private:
  friend class transformer;
  // forward() with the step's memory (activations, staged index arrays) from `mem` (the transformer's).
  void run(const tensor_view& x, const row_batch& rows, const tensor_view& y, attention_trace* trace,
           detail::step_memory* mem) const;

  model_config cfg_;
  std::int64_t layer_;
  int ratio_;
  attn_kind kind_;
  exec ex_;
  numerics nm_;
  device dev_;  // where the weights live: every activation and index array of a call goes there too
  rope_table rope_;
  attention_weights w_;
  // The small vectors as f32 on dev_: RoPE frequencies, norms, sink, compressor ape.
  buffer freq_, q_norm_, kv_norm_, sink_, comp_norm_, comp_ape_, index_norm_, index_ape_;
  bool wo_a_stored_ = false;  // wo_a read as stored (FP8, groups tile-aligned); else wo_a_ holds it decoded
  buffer wo_a_;               // [g·o_lora, H·head_dim / g] f32 on dev_ (only when !wo_a_stored_)
};

}  // namespace dsv4::model
