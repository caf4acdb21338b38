// dsv4/model/synth.hpp — random checkpoints in exactly the official on-disk format (`dsv4 synth`).
//
// Writes DIR/config.json (the HF spelling, to_hf_json) and DIR/model-0000i-of-0000n.safetensors +
// model.safetensors.index.json with the official tensor names, shapes and dtypes of spec §1.2: FP8 E4M3 weights with
// E8M0 128x128 tile scales, FP4 experts as I8 bytes (element 2c in the low nibble) with E8M0 per 1x32, BF16 norms,
// embedding, head, gate and compressor projections, F32 mHC / sink / ape / gate bias, tid2eid as I64 (what the
// official checkpoints hold).
//
// Weight scales keep activations O(1) through the layers (fp32 numerics):
//   * every projection ~ N(0, 1/K) (K = fan-in), so an RMS-normalized input gives O(1) outputs;
//   * the two residual-branch outputs (wo_b, expert w2) are further scaled by 1/sqrt(2·n_layers), the usual
//     depth scaling, so the residual streams grow slowly with depth;
//   * norm weights 1 + 0.1·N(0,1); attn_sink N(0,1); ape 0.5·N(0,1); gate bias 0.1·N(0,1);
//   * mHC fn ~ N(0, 0.25/(hc·D)) so each mix is ~N(0, 0.25) after the RMS rescale; base: pre 0, post 0 (post gate
//     2σ(0) = 1), comb 1 on the diagonal (streams mostly keep their own state), each + 0.1·N(0,1); scales 1.
// Each tensor is drawn from its own stream (seed, tensor name), so contents do not depend on write order.
//
// sparse = true writes the headers and leaves the data as holes (zeros on read): a full-size V4-Flash or V4-Pro
// checkpoint layout in a few MB of disk, for shape and lazy-loading tests.
#pragma once

#include <cstdint>
#include <filesystem>

#include "dsv4/model/config.hpp"

namespace dsv4::model {

struct synth_options {
  std::uint64_t seed = 1;
  bool sparse = false;
  std::uint64_t shard_bytes = 4ull << 30;  // official shards are 3.4–4.3 GB
  int shards = 0;                          // > 0: aim for this many shards instead (shard_bytes = total / shards)
  bool mtp = true;                         // write the mtp.* block(s)
  // A directory that already holds a checkpoint (config.json, model*.safetensors, the index) is refused, so stale
  // shards of an earlier, larger checkpoint can never be mixed in; overwrite removes exactly those files first.
  bool overwrite = false;
};

struct synth_result {
  std::size_t tensors = 0;
  std::size_t shards = 0;
  std::uint64_t bytes = 0;  // data bytes (holes included when sparse)
};

// Bytes of all tensors of a V4 config in its official storage (what synth writes, data only).
std::uint64_t checkpoint_bytes(const model_config& cfg, bool mtp = true);

synth_result synthesize(const model_config& cfg, const std::filesystem::path& dir, const synth_options& opt = {});

}  // namespace dsv4::model
