// dsv4/model/costs.hpp — the FLOPs / KV-cache calculator behind `dsv4 report` (spec §8).
//
// decode_costs(cfg, L) counts, for one decoded token whose context holds L tokens (itself included), every
// multiply-add of the forward pass as 2 FLOPs, term by term and tagged with the precision the computation runs in,
// and the bytes the caches hold after L tokens. It covers V4 configs and the V3.2 baseline (MLA + DSA indexer over
// every token + 3 dense layers). Every counting rule is below, with its source; the ones the report does not
// state are marked [assumption] and can be switched in cost_assumptions.
//
// FLOPs (per layer unless noted):
//   projections   2·K·N per weight matrix a token multiplies (wq_a, wq_b, wkv, wo_b: FP8 GEMMs, spec §6.4; wo_a: the
//                 reference runs it as a BF16 einsum, spec §3.8). V3.2: wq_a, wq_b, wkv_a, wo FP8; the absorbed wkv_b
//                 (q_nope -> latent, latent -> v) BF16, as its reference decodes.
//   compressor    wkv + wgate, 2·2·D·coff·c (stored BF16, spec §1.2) for the main and the indexer's compressor; the
//                 per-channel softmax pooling is counted with the elementwise terms.
//   indexer       wq_b (FP8), weights_proj (BF16); V3.2 adds wk (FP8).
//   indexer scores  2·n_h·c·E over the E = floor(L/4) visible compressed entries in FP4 (V4: q and k are FP4,
//                 report §3.4) or over the L tokens in FP8 (V3.2, spec §3.5).
//   indexer weighting  Σ_h w_h·ReLU(score): 2·n_h·E in BF16 (spec §3.5 step 6).
//   core attention  QK and PV: 4·H·head_dim·N in BF16 with N = min(L, window) + (CSA: min(top-k, floor(L/4));
//                 HCA: floor(L/128)); V3.2 (MLA, absorbed): 2·H·(576 + 512)·min(top-k, L).
//   MoE           gate 2·D·E (BF16), routed k·3·2·D·I and shared 3·2·D·I in FP8 (FP4 expert weights are cast exactly to
//                 FP8 and run on FP8 tensor cores, spec §6.4; the report: FP4×FP8 peak equals FP8×FP8 today);
//                 V3.2's first 3 layers: dense SwiGLU 3·2·D·18432 FP8.
//   mHC           the mixes GEMMs: 2·(2·hc·D·mix) per layer (two hc_pre) + 2·hc·D·hc (hc_head), FP32 (spec §4).
//   head          2·D·vocab in BF16 (DeepSeek keeps the output head in BF16 [assumption, V3 practice]).
//   elementwise   [switchable, approximate] the rest of mHC (RMS, collapse, Sinkhorn, hc_post), RMSNorms, RoPE,
//                 softmax, SwiGLU, Hadamard, pooling: FP32, small (< 1% of the total at 1M).
//   not counted   the embedding lookup (no arithmetic), top-k selection (comparisons), the MTP block
//                 [assumption: the headline figure is for plain decoding; switch count_mtp].
// "Equivalent FP8 FLOPs" weight each precision: FP4 ×0.5, FP8 ×1, BF16 ×2, FP32 ×4 by default [assumption, spec
// §8.2: this weighting reproduces 27% / 10%].
//
// KV bytes after L tokens (all layers; the MTP block's cache is not counted unless count_mtp):
//   deployed layout (report §2.3.4, FlashMLA): V4 entry = nope FP8 + rope BF16 + one E8M0 per 64 nope dims, padded to
//     a multiple of 8: 448 + 128 + 7 + 1 = 584 B; indexer key = c/2 FP4 bytes + c/32 E8M0 = 68 B. V3.2 entry = 512
//     FP8 + 4 fp32 scales + 64 BF16 = 656 B; indexer key = 128 FP8 + one fp32 scale = 132 B (spec §8.2).
//   bf16 layout: every cached value in BF16 (V4 entry 1024 B, key 256 B; V3.2 1152 B, key 256 B).
//   terms: window rings min(L, window) entries per layer; compressed entries floor(L/ratio) per CSA/HCA layer;
//     indexer keys floor(L/4) per CSA layer (V3.2: L per layer); compressor state (fp32 kv + score rows, spec §7),
//     V3.2: the latent for every token.
// The GQA baseline of the report (§2.3.4): 2 (K, V) · 8 heads · 128 dims · 2 B (BF16) per token per layer, with the
// V4 model's layer count.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "dsv4/model/config.hpp"

namespace dsv4::model {

enum class precision : std::uint8_t { fp4, fp8, bf16, fp32 };
const char* precision_name(precision p);

struct flops_weights {
  double fp4 = 0.5, fp8 = 1.0, bf16 = 2.0, fp32 = 4.0;
  double of(precision p) const;
};

enum class kv_layout : std::uint8_t { deployed, bf16 };
const char* kv_layout_name(kv_layout l);

struct cost_assumptions {
  flops_weights weights;
  kv_layout layout = kv_layout::deployed;
  bool count_elementwise = true;  // mHC, norms, RoPE, softmax, Hadamard, pooling
  bool count_head = true;         // the output head GEMM
  bool count_mtp = false;         // the MTP block(s): FLOPs and cache
  bool count_state = true;        // window rings and compressor state in the KV total
};

struct flops_term {
  std::string name;  // "projections", "routed experts", ...
  precision prec;
  double flops;
};

struct kv_term {
  std::string name;  // "compressed entries", "indexer keys", ...
  double bytes;
};

struct cost_report {
  std::string model;
  std::int64_t context = 0;
  std::vector<flops_term> flops;
  std::vector<kv_term> kv;
  double flops_total() const;                           // raw FLOPs
  double flops_fp8(const flops_weights& w) const;       // equivalent FP8 FLOPs
  double kv_total() const;                              // bytes
};

// One decoded token with L tokens of context (L >= 1).
cost_report decode_costs(const model_config& cfg, std::int64_t context, const cost_assumptions& a = {});

// Bytes of the report's BF16 GQA8 (head dim 128) cache for `layers` layers and L tokens.
double gqa_kv_bytes(std::int64_t layers, std::int64_t context, int kv_heads = 8, int head_dim = 128,
                    int bytes_per_value = 2);

// Parameter counts from the config's shapes (FP4 values count one each). active = what one token multiplies:
// everything except the routed experts it does not select and the embedding table (a lookup), head included.
struct param_counts {
  double total = 0;       // main model, MTP excluded
  double active = 0;      // per token, MTP excluded
  double embedding = 0;   // vocab · D (inside total, not inside active)
  double mtp = 0;         // the MTP block(s), excluding the shared embed/head
};
param_counts count_params(const model_config& cfg);

// Per-token KV bytes of one compressed V4 entry / indexer key in a layout (584 / 68 deployed for V4's shapes).
std::int64_t kv_entry_bytes(const model_config& cfg, kv_layout layout);
std::int64_t index_key_bytes(const model_config& cfg, kv_layout layout);

}  // namespace dsv4::model
