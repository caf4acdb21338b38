// dsv4/model/rope.hpp — per-layer rotary tables with YaRN (spec §3.1).
//
// Each attention layer rotates the last `rope_dim` channels of its vectors in interleaved pairs: pair i is
// channels (off + 2i, off + 2i + 1), rotated by angle pos·f_i: (a, b) -> (a·cos − b·sin, a·sin + b·cos); the inverse
// (output path, spec §3.8) uses −pos·f_i. Frequencies, in fp32: f_i = 1 / base^(2i / rope_dim), with
//   * ratio-0 (sliding-window-only) layers: base = rope_theta (10000), no YaRN;
//   * compressed layers (ratio 4 or 128): base = compress_rope_theta (160000) and YaRN: with
//     corr(r) = rope_dim·ln(L_orig / (2π·r)) / (2·ln base), low = max(floor(corr(beta_fast)), 0),
//     high = min(ceil(corr(beta_slow)), rope_dim − 1) (+0.001 when equal), ramp_i = clamp((i − low)/(high − low), 0, 1):
//     f_i <- f_i/factor·ramp_i + f_i·(1 − ramp_i). For V4 (160000, 65536, 32, 1): low 15, high 25.
// No YaRN attention temperature (mscale): V4's softmax scale is exactly head_dim^-0.5. The angle is
// fp32(float(pos)·f_i) and cos/sin are taken in fp32, so a position's rotation does not depend on anything else.
#pragma once

#include <cstdint>
#include <vector>

#include "dsv4/model/config.hpp"

namespace dsv4::model {

struct rope_table {
  std::int64_t rope_dim = 0;
  std::vector<float> freq;  // [rope_dim / 2]
  int yarn_low = 0, yarn_high = 0;
  bool yarn = false;

  // The table of layer `layer` (its compress ratio picks the base and YaRN).
  static rope_table for_layer(const model_config& cfg, std::int64_t layer);
  static rope_table make(std::int64_t rope_dim, double base, bool yarn, double factor, std::int64_t original_len,
                         double beta_fast, double beta_slow);

  // Rotates v[off .. off + rope_dim) of one vector at position pos; inverse = rotate by −pos·f.
  void apply(float* v, std::int64_t off, std::int64_t pos, bool inverse = false) const;
};

}  // namespace dsv4::model
