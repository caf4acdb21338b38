// dsv4/ops/paged.hpp — the attention ops of V4 over engine-owned paged caches (dsv4/cache.hpp), with the
// conventions of FlashMLA and DeepGEMM (engine-interface study §b.3), so an engine can swap its kernels for these
// one op at a time. Numerics policy fp32 (the official policy's BF16 rounding points are a separate issue).
//
// Conventions shared by every op:
//   * rows t = 0 .. T−1 are query tokens of possibly different requests: row_req[t] (i32) picks the request's row of a
//     block table (i32 [R, max_pages]); −1 in a block table, a slot list or an index list means "invalid / skip";
//   * a per-row length (n_keys, len) bounds what is read: lanes at or past it are ignored even when they hold garbage;
//     a length of 0 is legal (warm-up, padding rows) and gives the empty result (top-k all −1, attention out 0 /
//     lse +inf);
//   * slots are i32 physical slots (page · B + offset), as FlashMLA's indices_in_kvcache;
//   * every op is validated at the boundary (dtype, shapes, page geometry, and every slot or block-table entry it
//     dereferences is range-checked) and runs on the ref backend or the CPU backend (the same results: byte-identical
//     page writes, bitwise top-k and slots, attention within fp32 rounding);
//   * on CUDA tensors (dsv4/cuda/paged.hpp; fp32 policy) shapes are checked here and
//     values on the device: a slot, block-table entry or length out of range is skipped (a store does nothing, a load
//     or attention lane gives nothing, a logit is −inf, a slot −1) and reported through exec's check policy
//     (dsv4/exec.hpp: an error under the default sync policy, a status bit under deferred); page writes are ref's
//     bytes, FP4 index scores, top-k and slots ref's bits, FP8 scores and attention within fp32 rounding.
#pragma once

#include <cstddef>
#include <cstdint>

#include "dsv4/cache.hpp"
#include "dsv4/exec.hpp"
#include "dsv4/numerics.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::ops {

// ---- entries into pages ------------------------------------------------------------------------------------------

// values f32 [T, D] -> slot slots[t] (i32 [T]; −1: row skipped), quantized and packed as dsv4/ref/cache.hpp says.
// Errors: a slot outside the pages, two rows writing one slot, non-finite values.
void kv_store(const tensor_view& values, const tensor_view& slots, const cache::kv_pages& kv, const exec& ex = {});
// The stored entries decoded to fp32: values f32 [N, D]; a −1 slot gives a row of zeros.
void kv_load(const cache::kv_pages& kv, const tensor_view& slots, const tensor_view& values, const exec& ex = {});
void key_store(const tensor_view& values, const tensor_view& slots, const cache::key_pages& keys, const exec& ex = {});
void key_load(const cache::key_pages& keys, const tensor_view& slots, const tensor_view& values, const exec& ex = {});

// ---- compressor (spec §3.4) with position-keyed state rows --------------------------------------------------------

struct compressor_params {
  int ratio = 4;                 // 4 (overlapped: coff = 2) or 128
  std::int64_t c = 0;            // entry width: head_dim (main) or index_head_dim (indexer)
  std::int64_t rope_dim = 0;     // RoPE on the last rope_dim channels of the entry
  double norm_eps = 1e-6;
  bool indexer = false;          // false: FP8 round trip of dims [0, c − rope_dim) (block 64) into KV pages;
                                 // true: Hadamard over c + FP4 round trip (block 32) into key pages
  numerics nm = numerics::fp32;  // official (official-numerics.md §1 C4-C6): the pooled entry rounded to BF16 before
                                 // the norm, the norm and RoPE outputs to BF16, the Hadamard output to BF16
  int coff() const { return ratio == 4 ? 2 : 1; }
};

// Writes the state row of each token: state[state_slot[t]] = [kv[t] | score[t] + ape[positions[t] mod ratio]].
// kv, score f32 [T, cw] (cw = coff·c, the compressor projections); ape f32 [ratio, cw]; positions i64 [T] >= 0;
// state_slot i32 [T] (−1: padding row, nothing written). Rows are keyed by position: nothing is ever moved, so
// rolling a sequence back is only rewinding its length.
void compressor_append(const tensor_view& kv, const tensor_view& score, const tensor_view& ape,
                       const tensor_view& positions, const tensor_view& state_slot, const cache::state_rows& state,
                       const compressor_params& p, const exec& ex = {});

// For each row t whose token closes a block ((positions[t] + 1) mod ratio == 0) and whose out_slot[t] >= 0: entry
// j = positions[t] / ratio is the per-channel softmax pool of the state rows of positions (j+1)·ratio − coff·ratio ..
// positions[t], read through row_req[t]'s row of state_table (positions below 0 read as kv 0, score −inf;
// overlapped: the older `ratio` rows give channels [0, c), the newer ones channels [c, 2c)); then RMSNorm with
// norm_weight f32 [c], RoPE (rope_freq f32 [rope_dim / 2]) on the last rope_dim channels at position ratio·j, the
// format's round trip (see compressor_params::indexer), and a store into `main_out` (KV pages) or `key_out` (key
// pages) at out_slot[t]. entries f32 [T, c] (optional, may be empty): the stored values, row t (other rows untouched).
void compressor_emit(const tensor_view& positions, const tensor_view& row_req, const tensor_view& state_table,
                     const cache::state_rows& state, const tensor_view& norm_weight, const tensor_view& rope_freq,
                     const tensor_view& out_slot, const compressor_params& p, const cache::kv_pages* main_out,
                     const cache::key_pages* key_out, const tensor_view& entries, const exec& ex = {});

// ---- lightning indexer over paged keys (spec §3.5) --------------------------------------------------------------

// logits f32 [T, L]: logits[t, s] = Σ_h w[t, h] · ReLU(q[t, h] · key_s) for s < n_keys[t], where key_s is logical key
// s of request row_req[t] (through block_table); −inf for n_keys[t] <= s < L. q f32 [T, H, c] (after RoPE, Hadamard
// and the FP4 round trip), w f32 [T, H] (weights_proj output times c^-1/2 · H^-1/2); n_keys i32 [T] in [0, L].
// FP4 key pages: q is rounded to FP4 here (idempotent on an already rounded q) and the score is the exact FP4 score
// of dsv4/ref/indexer.hpp (exact dot rounded once, heads summed in a fixed 16-lane tree): ref and cpu bitwise equal,
// the cpu through AVX512-VNNI integer dots where the CPU has them. FP8 key pages: fp32 scores (ref in double).
// numerics official (FP4 keys only): the BF16 score of dsv4/ref/official.hpp, bf16(Σ_h bf16(ReLU(bf16(dot)) · w_h)),
// the same exact dots and head tree; ref and cpu bitwise equal.
void indexer_logits(const tensor_view& q, const tensor_view& w, const cache::key_pages& keys,
                    const tensor_view& block_table, const tensor_view& row_req, const tensor_view& n_keys,
                    const tensor_view& logits, const exec& ex = {}, numerics nm = numerics::fp32);

// Top-k of each row's first n_keys[t] logits: idx i32 [T, k] best first, equal scores -> lower index (dsv4 rule),
// valid entries first and −1 only in the tail; len i32 [T] = min(k, n_keys[t]) (n_keys 0: all −1). logits f32 [T, L]
// without NaN in the counted range.
void topk_rows(const tensor_view& logits, const tensor_view& n_keys, const tensor_view& idx, const tensor_view& len,
               const exec& ex = {});

// Sorts the first len[t] indices of each row of idx (i32 [T, k], in place) ascending: top-k picks in entry order,
// the order the attention sums them in, so the sum does not depend on the scores' ranking. len i32 [T] in [0, k].
void sort_rows(const tensor_view& idx, const tensor_view& len, const exec& ex = {});

// Logical entry -> physical slot (FlashMLA's indices_in_kvcache): slots[t, i] = slot_of(block_table[row_req[t]],
// idx[t, i], page_tokens) for i < len[t] (len absent: every lane) and idx >= 0; −1 elsewhere. An index whose page is
// past the table or unmapped is an error (never an out-of-bounds read).
void to_slots(const tensor_view& idx, const tensor_view& len, const tensor_view& row_req,
              const tensor_view& block_table, std::int64_t page_tokens, const tensor_view& slots, const exec& ex = {});

// The fused decode form: indexer_logits + topk_rows for each row without a [T, L] logits matrix (one row of scores
// at a time in scratch). idx i32 [T, k], len i32 [T]; slots i32 [T, k] (optional: to_slots of the picks).
void indexer_topk(const tensor_view& q, const tensor_view& w, const cache::key_pages& keys,
                  const tensor_view& block_table, const tensor_view& row_req, const tensor_view& n_keys,
                  const tensor_view& idx, const tensor_view& len, const tensor_view& slots, const exec& ex = {},
                  numerics nm = numerics::fp32);
// The device scratch (exec::scratch) indexer_topk needs on CUDA for T rows over these key pages: a [T, slots] f32
// score matrix (the host backends need none).
std::size_t indexer_topk_workspace_bytes(std::int64_t T, const cache::key_pages& keys);

// ---- sparse MQA with sink over two page segments (spec §3.7; FlashMLA semantics) ----------------------------------

// One segment of a row's attention list: slots i32 [T, K] into `kv`, read for lanes i < len[t] (len i32 [T], or
// absent: every lane) that are not −1.
struct sparse_segment {
  cache::kv_pages kv;
  tensor_view slots;
  tensor_view len;
};

// out f32 [T, H, D]: per (t, h), over the valid lanes of the window segment then of the compressed one, in list order:
//   l_i = scale · q[t, h] · kv_i;  M = max_i l_i;  out = Σ_i e^(l_i − M) kv_i / (Σ_i e^(l_i − M) + e^(sink[h] − M));
// lse f32 [T, H] (optional, may be empty) = M + ln Σ_i e^(l_i − M), natural log over the real logits (the sink
// excluded). A row with no valid lane gives out = 0 and lse = +inf (FlashMLA). q f32 [T, H, D]; sink f32 [H]
// (−inf: a padded head). `compressed` may be null (SWA layers).
// numerics official: the blocked online softmax with BF16 P of dsv4/ref/official.hpp (attention_row: blocks of 64
// through the window lanes, a fresh block at the first compressed lane, P rounded to BF16 for P·V only, the sink in
// the denominator only, out rounded to BF16); the same code on ref and cpu (bitwise equal).
void sparse_mqa(const tensor_view& q, const sparse_segment& window, const sparse_segment* compressed,
                const tensor_view& sink, float scale, const tensor_view& out, const tensor_view& lse,
                const exec& ex = {}, numerics nm = numerics::fp32);

}  // namespace dsv4::ops
