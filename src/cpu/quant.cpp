// src/cpu/quant.cpp — CPU backend of the block quantizers: oneTBB over rows, per-block xsimd kernels of the best
// ISA (quant_simd_impl.hpp), fp32 staging for bf16 inputs/outputs. Same results as dsv4/ref/quant.hpp, bit for bit.
#include "dsv4/cpu/quant.hpp"
#include "dsv4/detail/quant_instances.hpp"

#include <atomic>
#include <type_traits>

#include "parallel.hpp"
#include "quant_simd.hpp"

namespace dsv4::cpu {
namespace {

// Resolved once; null when this CPU has no compiled ISA (the backend then declines).
const detail::quant_kernels* kernels() noexcept {
  static const auto k = detail::resolve_kernels<detail::quant_kernels, detail::select_quant_kernels>();
  return k.amax ? &k : nullptr;
}

// A block of fp32 values: the row itself when it already is fp32, else converted into `tmp`.
template <class T>
const float* as_f32(const T* p, int n, float* tmp) {
  if constexpr (std::is_same_v<T, float>) {
    return p;
  } else {
    for (int i = 0; i < n; ++i) tmp[i] = to_f32(p[i]);
    return tmp;
  }
}

template <class Code>
struct fmt_of;
template <> struct fmt_of<fp8_e4m3> { using traits = block_quant_traits<fp8_e4m3>; };
template <> struct fmt_of<fp4x2> { using traits = block_quant_traits<fp4_e2m1>; };
template <> struct fmt_of<fp4_e2m1> { using traits = block_quant_traits<fp4_e2m1>; };

// Scale byte of a block and the two powers of two derived from it (s and 1/s, both exact).
struct block_scale {
  std::uint8_t byte;
  float s, inv_s;
};
// Scales a block of n fp32 values (spec §6.2 steps 1-3); false when the block holds inf or NaN.
template <class Traits>
bool scale_block(const detail::quant_kernels& k, const float* v, int n, block_scale& out) {
  const float amax = k.amax(v, n);
  if (amax != amax) return false;
  const std::uint8_t b = ue8m0_ceil_scale(amax, Traits::kAmaxFloor, Traits::kInvMax);
  // byte stays in [1, 253] for finite amax (formats.hpp), so 254 - byte is a normal exponent field
  out = {b, ue8m0{b}.to_float(), bits_to_f32(static_cast<std::uint32_t>(254 - b) << 23)};
  return true;
}

}  // namespace

const char* simd_isa() noexcept {
  const auto* k = kernels();
  return k ? k->isa : nullptr;
}

template <class TIn, class TCode>
std::int64_t block_quantize(view<const TIn, 2> x, view<TCode, 2> q, view<ue8m0, 2> scale, int block,
                            const exec& ex) {
  using traits = typename fmt_of<TCode>::traits;
  constexpr bool is_fp4 = std::is_same_v<TCode, fp4x2>;
  const detail::quant_kernels& k = *kernels();
  std::atomic<std::int64_t> bad{0};
  detail::parallel_rows(x.size(0), 16, ex, [&](std::int64_t r0, std::int64_t r1) {
    alignas(64) float tmp[128];
    std::int64_t local_bad = 0;
    for (std::int64_t r = r0; r < r1; ++r) {
      for (std::int64_t b = 0; b < scale.size(1); ++b) {
        const std::int64_t k0 = b * block;
        const float* v = as_f32(x.row(r) + k0, block, tmp);
        block_scale s;
        if (!scale_block<traits>(k, v, block, s)) {
          ++local_bad;
          continue;
        }
        scale(r, b) = ue8m0{s.byte};
        if constexpr (is_fp4)
          k.fp4_codes(v, block, s.inv_s, reinterpret_cast<std::uint8_t*>(q.row(r) + k0 / 2));
        else
          k.fp8_codes(v, block, s.inv_s, reinterpret_cast<std::uint8_t*>(q.row(r) + k0));
      }
    }
    bad += local_bad;
  });
  return bad.load();
}

template <class Code, class TIn, class TOut>
std::int64_t block_round_trip(view<const TIn, 2> x, view<TOut, 2> y, int block, const exec& ex) {
  using traits = typename fmt_of<Code>::traits;
  const detail::quant_kernels& k = *kernels();
  const auto round_trip = std::is_same_v<Code, fp8_e4m3> ? k.fp8_round_trip : k.fp4_round_trip;
  std::atomic<std::int64_t> bad{0};
  detail::parallel_rows(x.size(0), 16, ex, [&](std::int64_t r0, std::int64_t r1) {
    alignas(64) float tmp[128], out[128];
    std::int64_t local_bad = 0;
    for (std::int64_t r = r0; r < r1; ++r) {
      for (std::int64_t k0 = 0; k0 < x.size(1); k0 += block) {
        const float* v = as_f32(x.row(r) + k0, block, tmp);
        block_scale s;
        if (!scale_block<traits>(k, v, block, s)) {
          ++local_bad;
          continue;
        }
        if constexpr (std::is_same_v<TOut, float>) {
          round_trip(v, block, s.inv_s, s.s, y.row(r) + k0);
        } else {
          round_trip(v, block, s.inv_s, s.s, out);
          for (int i = 0; i < block; ++i) y.row(r)[k0 + i] = from_f32<TOut>(out[i]);  // exact in bf16
        }
      }
    }
    bad += local_bad;
  });
  return bad.load();
}

template <class TCode, class TOut>
std::int64_t dequantize(view<const TCode, 2> q, view<const ue8m0, 2> scale, view<TOut, 2> out, int br, int bc,
                        const exec& ex) {
  // Decode tables (all codes), then one multiply by the tile's power of two per value: a memory-bound loop.
  constexpr bool is_fp4 = std::is_same_v<TCode, fp4x2>;
  static const auto lut = [] {
    struct table { float v[256]; } t{};
    for (int c = 0; c < 256; ++c)
      t.v[c] = is_fp4 ? fp4_e2m1{static_cast<std::uint8_t>(c & 0xF)}.to_float()
                      : fp8_e4m3{static_cast<std::uint8_t>(c)}.to_float();
    return t;
  }();
  std::atomic<std::int64_t> bad{0};
  const std::int64_t K = out.size(1);
  detail::parallel_rows(out.size(0), 8, ex, [&](std::int64_t r0, std::int64_t r1) {
    std::int64_t local_bad = 0;
    for (std::int64_t n = r0; n < r1; ++n) {
      const auto* src = reinterpret_cast<const std::uint8_t*>(q.row(n));
      TOut* dst = out.row(n);
      for (std::int64_t k0 = 0; k0 < K; k0 += bc) {
        const ue8m0 sc = scale(n / br, k0 / bc);
        const float s = sc.to_float();
        const std::int64_t k1 = k0 + bc < K ? k0 + bc : K;
        local_bad += sc.bits == 0xFF ? 1 : 0;
        for (std::int64_t kk = k0; kk < k1; ++kk) {
          float v;
          if constexpr (is_fp4) {
            v = lut.v[(src[kk / 2] >> ((kk & 1) * 4)) & 0xF];
          } else {
            v = lut.v[src[kk]];
            local_bad += (src[kk] & 0x7F) == 0x7F ? 1 : 0;
          }
          dst[kk] = from_f32<TOut>(v * s);
        }
      }
    }
    bad += local_bad;
  });
  return bad.load();
}

DSV4_QUANT_INSTANTIATE_ALL()

}  // namespace dsv4::cpu
