// dsv4/model/weights.hpp — a checkpoint's tensors bound by their official names to typed, shape-checked views.
//
// bind_weights(checkpoint, config) walks the tensor inventory of spec §1.2 for every layer the config describes and
// returns non-owning views into the checkpoint's mapping, in the stored format: FP8 weights as fp8_e4m3 + ue8m0
// 128x128 tile scales, routed experts as fp4_e2m1 [N, K] (the checkpoint's I8 [N, K/2] bytes, same memory) + ue8m0
// per 1x32, norms in BF16, mHC and biases in F32. The blocks decode FP8/FP4 on the fly (ops::linear); a caller that
// prefers decoded weights can dequantize these views into its own cache. Nothing is copied and no weight page is
// read except the tid2eid tables, whose values are range-checked.
//
// Every tensor is checked (presence, dtype, exact shape from the config; with bind_options::verify_dense, finite
// values), and the problems are reported at once in one dsv4::error("bind_weights", ...) listing each missing,
// misshapen, mistyped, non-finite or unexpected tensor (the first 40; binding stops there, so a config that does not
// describe the checkpoint fails fast). A config whose inventory cannot fit in the checkpoint (more expert tensors
// than the checkpoint holds tensors) is refused before anything is allocated for it. Every ops::qweight carries its
// tensor name, so a NaN code met later in ops::linear names the tensor too.
#pragma once

#include <functional>
#include <optional>
#include <vector>

#include "dsv4/buffer.hpp"

#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/config.hpp"
#include "dsv4/ops/linear.hpp"
#include "dsv4/ops/moe.hpp"

namespace dsv4::model {

// compressor.{wkv, wgate}.weight [coff·c, D] (BF16 in the checkpoint; coff = 2 for ratio 4), ape [ratio, coff·c]
// F32, norm.weight [c] (c = head_dim, or index_head_dim for the indexer's compressor).
struct compressor_weights {
  ops::qweight wkv, wgate;
  tensor_view ape, norm;
};

// CSA layers only: wq_b [index_n_heads·index_head_dim, q_lora] FP8, weights_proj [index_n_heads, D] BF16.
struct indexer_weights {
  ops::qweight wq_b, weights_proj;
  compressor_weights compressor;
};

struct attention_weights {
  ops::qweight wq_a;          // [q_lora, D]
  tensor_view q_norm;         // [q_lora]
  ops::qweight wq_b;          // [H·head_dim, q_lora]
  ops::qweight wkv;           // [head_dim, D]
  tensor_view kv_norm;        // [head_dim]
  ops::qweight wo_a;          // [o_groups·o_lora, H·head_dim/o_groups]
  ops::qweight wo_b;          // [D, o_groups·o_lora]
  tensor_view attn_sink;      // [H] F32
  std::optional<compressor_weights> compressor;  // ratio 4 and 128
  std::optional<indexer_weights> indexer;        // ratio 4
};

// hc_{attn,ffn,head}_{fn, base, scale}: fn [mix, hc·D], base [mix], scale [3] (head: [1]) F32.
struct hc_weights {
  tensor_view fn, base, scale;
};

struct moe_weights {
  tensor_view gate;      // [E, D] BF16 (ffn.gate.weight)
  tensor_view bias;      // [E] F32 on score-routed layers; empty on hash layers
  tensor_view tid2eid;   // [vocab, k] I32 | I64 on hash layers; empty otherwise
  std::vector<ops::ffn_weights> experts;  // E routed experts
  std::optional<ops::ffn_weights> shared;
};

struct block_weights {
  std::int64_t layer = 0;  // n_layers + j for MTP block j
  int ratio = 0;
  hc_weights hc_attn, hc_ffn;
  tensor_view attn_norm, ffn_norm;
  attention_weights attn;
  moe_weights ffn;
};

// mtp.{j}: one more block plus its input projections and its own head collapse; embed and head are shared.
struct mtp_weights {
  block_weights block;
  ops::qweight e_proj, h_proj;  // [D, D] FP8
  tensor_view enorm, hnorm, norm;
  hc_weights hc_head;
};

struct model_weights {
  tensor_view embed;  // [vocab, D]
  tensor_view head;   // [vocab, D]
  tensor_view norm;   // [D]
  hc_weights hc_head;
  std::vector<block_weights> layers;
  std::vector<mtp_weights> mtp;
  expert_format experts = expert_format::fp4;  // what the checkpoint holds (resolves config `detect`)
};

struct bind_options {
  bool mtp = true;  // bind mtp.* (false: ignore them, e.g. for a checkpoint converted without MTP)
  // Read every BF16 / F32 tensor (embeddings, head, norms, mHC, sinks, compressor and gate weights: ~2.3 GB of
  // V4-Flash's 160) and refuse NaN or Inf by tensor name. On by default: a non-finite value there would otherwise
  // surface only as NaN logits.
  bool verify_dense = true;
  // Also read every FP8 / FP4 weight and E8M0 scale and refuse NaN codes and 0xFF scales by name (the whole
  // checkpoint: `dsv4 info --verify`). Off by default: ops::linear refuses them, by name, when it meets them.
  bool verify_quantized = false;
};

model_weights bind_weights(const io::checkpoint& ckpt, const model_config& cfg, const bind_options& opt = {});

// Bound weights copied once to a device, in their stored formats (FP8 / FP4 codes, E8M0 scales, BF16, F32) under the
// same names (transformer takes `weights`):
//   a CUDA device: for the forward pass on the GPU;
//   the host (device::cpu()): a resident copy in dsv4::buffer memory, which takes 2 MiB pages where the kernel gives
//   them (dsv4/buffer.hpp), instead of views into the checkpoint's file mapping (4 KiB pages of the page cache). The
//   CPU forward pass gives bitwise the same logits from either; the copy costs the weights' size in memory and saves
//   the decode GEMVs a page walk every 4 KiB (README, "Benchmarks": ~10% on FP8 decode with one thread).
// It owns the memory; `weights` views it and stays valid while this object lives (moving it keeps the views valid).
// MTP blocks are not copied: the forward pass does not run them. progress(done, total) is called after each tensor
// with bytes copied so far.
struct device_weights {
  model_weights weights;
  std::vector<buffer> memory;
  std::int64_t bytes = 0;
};
device_weights upload_weights(const model_weights& w, device dev,
                              const std::function<void(std::int64_t, std::int64_t)>& progress = {});

}  // namespace dsv4::model
