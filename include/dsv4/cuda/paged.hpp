// dsv4/cuda/paged.hpp — CUDA backends of the paged-cache ops (dsv4/ops/paged.hpp; ref: dsv4/ref/cache.hpp,
// dsv4/ref/indexer.hpp, ref::sparse_attention_rows), numerics policy fp32.
//
// What differs from the host backends is where the values are checked: every slot, block-table entry, row request
// and length is range-checked on the device, and one out of range is skipped (a store or load does nothing / gives
// zeros, a logit becomes −inf, a slot −1, an attention lane is left out) and reported as status_index_oob; non-finite
// values given to a store are stored as ref stores them and reported as status_nonfinite_input; NaN logits in a
// counted range rank below −inf in top-k and are reported the same way. Under check_policy::sync these reports
// become dsv4::error as on the host. Two rows writing one slot is not detected (the last writer wins).
//
//   stores / loads    one warp per row; the bytes of ref::store_kv_entry / store_key (quant_core.cuh's blocks).
//   indexer_logits    FP4 keys: the exact score of ref/indexer.hpp bit for bit — q rounded to FP4 in shared memory,
//                     per block an integer dot (dp4a on 2·E2M1 values), the blocks summed in double in block order,
//                     rounded once, ReLU, the fixed 16-lane head tree; one thread per key. FP8 keys: fp32 dots in
//                     k order and an fma head sum (ref sums in double: within fp32 rounding). FP4: c in {32, 64,
//                     128} and at most 128 heads.
//   topk_rows         one CTA per row: radix select on 64-bit keys (orderable(score) << 32 | ~index: ties to the
//                     lower index), then a bitonic sort of the k picks: the same idx as ref for the same logits.
//                     k <= 4096.
//   to_slots          one thread per lane.
//   indexer_topk      indexer_logits into exec::scratch ([T, keys.num_slots()] f32), then topk_rows and to_slots.
//   sparse_mqa        one CTA per (token, 8 heads), a warp per head: the row's entries decoded into shared memory 8
//                     at a time (an fp8_ds_mla entry decoded exactly), an online softmax with the sink in the
//                     denominator only; FlashMLA's out = 0 / lse = +inf for a row with no valid lane. ref sums in
//                     another order: within fp32 rounding. head_dim in {128, 256, 512} (V4: 512; 128: the `small`
//                     demo shape. 64 and 96 spill registers under ptxas as the kernel stands, so `tiny` stays on the host).
//   compressor_emit   one CTA per emitting row: the pool and RMSNorm in ref's orders, RoPE and the round trips; expf
//                     is the GPU's (within 2 ulp of libm) and sin / cos a double-precision reduction and series, so
//                     the entries agree with ref's within fp32 rounding and a stored code can sit one step away where
//                     a value falls on a rounding boundary; the page bytes are always the store of the entries.
// Not on CUDA yet: the official policy.
#pragma once

#include <cstddef>
#include <cstdint>

#include "dsv4/cache.hpp"
#include "dsv4/exec.hpp"
#include "dsv4/tensor.hpp"

namespace dsv4::cuda {

// The shapes the kernels take (checked by the launchers; the forward pass checks a model against them up front).
inline constexpr int kMaxTopkK = 4096;        // top-k / sort_rows: k in shared memory
inline constexpr int kMaxIndexerHeads = 128;  // indexer heads per query row
inline constexpr int kMaxEmitC = 1024;        // compressor entry width
inline constexpr bool mqa_head_dim_ok(std::int64_t d) { return d == 128 || d == 256 || d == 512; }
inline constexpr bool fp4_key_dim_ok(std::int64_t c) { return c == 32 || c == 64 || c == 128; }

// Device page memory as kernels see it.
struct kv_dev {
  std::uint8_t* base = nullptr;
  std::int64_t page_stride = 0;  // bytes between pages
  cache::kv_geometry geo;
  std::int64_t num_slots = 0;
};
struct key_dev {
  std::uint8_t* base = nullptr;
  std::int64_t page_stride = 0;
  cache::key_geometry geo;
  std::int64_t num_slots = 0;
};
inline kv_dev device_pages(const cache::kv_pages& p) {
  return {static_cast<std::uint8_t*>(p.pages.data()), p.pages.stride(0), p.geo, p.num_slots()};
}
inline key_dev device_pages(const cache::key_pages& p) {
  return {static_cast<std::uint8_t*>(p.pages.data()), p.pages.stride(0), p.geo, p.num_slots()};
}

// One segment of sparse_mqa: slots [T, K] into kv, lanes i < len[t] (len null: all K).
struct segment_dev {
  kv_dev kv;
  view<const std::int32_t, 2> slots;
  const std::int32_t* len = nullptr;
};

// values [T, width] (contiguous); slots [T] (−1: skip). Stores return the count of non-finite 64- / 32-blocks or
// keys under check_policy::sync (0 otherwise); out-of-range slots are reported through the status.
std::int64_t kv_store(view<const float, 2> values, const std::int32_t* slots, const kv_dev& kv, const exec& ex);
void kv_load(const kv_dev& kv, const std::int32_t* slots, view<float, 2> values, const exec& ex);
std::int64_t key_store(view<const float, 2> values, const std::int32_t* slots, const key_dev& keys, const exec& ex);
void key_load(const key_dev& keys, const std::int32_t* slots, view<float, 2> values, const exec& ex);

// state rows [slots, 2·cw]: row state_slot[t] = [kv[t] | score[t] + ape[positions[t] mod ratio]].
void compressor_append(view<const float, 2> kv, view<const float, 2> score, view<const float, 2> ape,
                       const std::int64_t* positions, const std::int32_t* state_slot, view<float, 2> rows,
                       int ratio, const exec& ex);

// For each row closing a block with out_slot >= 0: pool (softmax over the coff·ratio state rows, ref's two passes),
// RMSNorm (double sum of squares), RoPE at ratio·j, then main: FP8 round trip of the nope dims + store into kv;
// indexer: Hadamard + FP4 round trip + store into keys. entries [T, c] (or null): the stored values.
void compressor_emit(const std::int64_t* positions, const std::int32_t* row_req, view<const std::int32_t, 2> table,
                     view<const float, 2> rows, std::int64_t state_page_tokens, const float* norm_weight,
                     const float* rope_freq, const std::int32_t* out_slot, int ratio, std::int64_t c,
                     std::int64_t rope_dim, double norm_eps, bool indexer, const kv_dev* kv, const key_dev* keys,
                     float* entries, std::int64_t T, const exec& ex);

void to_slots(view<const std::int32_t, 2> idx, const std::int32_t* len, const std::int32_t* row_req,
              view<const std::int32_t, 2> table, std::int64_t page_tokens, view<std::int32_t, 2> slots,
              const exec& ex);
void topk_rows(view<const float, 2> logits, const std::int32_t* n_keys, view<std::int32_t, 2> idx, std::int32_t* len,
               const exec& ex);
// idx[t, 0 .. len[t]) sorted ascending in place (one CTA per row, bitonic in shared memory); k <= 4096.
void sort_rows(view<std::int32_t, 2> idx, const std::int32_t* len, const exec& ex);
void indexer_logits(view<const float, 3> q, view<const float, 2> w, const key_dev& keys,
                    view<const std::int32_t, 2> table, const std::int32_t* row_req, const std::int32_t* n_keys,
                    view<float, 2> logits, const exec& ex);
std::size_t indexer_topk_workspace_bytes(std::int64_t T, std::int64_t max_keys);
void indexer_topk(view<const float, 3> q, view<const float, 2> w, const key_dev& keys,
                  view<const std::int32_t, 2> table, const std::int32_t* row_req, const std::int32_t* n_keys,
                  view<std::int32_t, 2> idx, std::int32_t* len, std::int32_t* slots /* [T, k] or null */,
                  const exec& ex);
void sparse_mqa(view<const float, 3> q, const segment_dev& window, const segment_dev* compressed, const float* sink,
                float scale, view<float, 3> out, float* lse, const exec& ex);

}  // namespace dsv4::cuda
