// dsv4/numerics.hpp — the numerics policy: where a forward pass rounds.
//
//   fp32      weights decoded exactly, activations and accumulations in fp32; only the architecture's own quantizers
//             round (the KV FP8 round trip, the indexer's FP4 round trips). The default: nothing rounds that the
//             architecture does not ask for.
//   official  the rounding points of DeepSeek's own V4 inference code (../shared/spec/official-numerics.md §1, §2):
//             BF16 activations and residual streams, FP8 1x128 activation quantization with per-block promotion
//             before every FP8 / FP4 GEMM, BF16 GEMMs for wo_a and the indexer weights, the BF16 q head norm, BF16
//             index scores, BF16 P in attention. What engine developers validate their kernels against.
//
// Under `official` a BF16 activation is held as an fp32 value that is exactly a BF16 number (round_bf16), so every
// tensor stays f32 and the two policies share the ops' interfaces.
#pragma once

#include <cstdint>
#include <string_view>

#include "dsv4/error.hpp"
#include "dsv4/formats.hpp"

namespace dsv4 {

enum class numerics : std::uint8_t { fp32, official };

inline constexpr const char* numerics_name(numerics n) { return n == numerics::official ? "official" : "fp32"; }

inline numerics parse_numerics(std::string_view s) {
  if (s == "fp32") return numerics::fp32;
  if (s == "official") return numerics::official;
  DSV4_FAIL("numerics", "unknown numerics policy \"", detail::printable(s, 40), "\" (expected fp32 or official)");
}

// fp32 -> the nearest BF16 value, ties to even (bf16::from_float), back in fp32. NaN stays NaN, overflow goes to inf.
inline float round_bf16(float v) { return bf16::from_float(v).to_float(); }
inline void round_bf16(float* v, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) v[i] = round_bf16(v[i]);
}

// Where a step's output is a BF16 tensor in the official code: rounded to BF16 under `official`, left as is under
// `fp32`. The one switch the model code and the ops use at those points.
inline void round_activations(numerics nm, float* v, std::int64_t n) {
  if (nm == numerics::official) round_bf16(v, n);
}

}  // namespace dsv4
