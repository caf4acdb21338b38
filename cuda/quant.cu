// cuda/quant.cu — CUDA kernels and launchers of the block quantizers and dequantization (spec §6.2–§6.4), bitwise
// equal to ref/quant.hpp for every input, finite or not.
//
// Quantizers: one warp per quantization block, lane l holding the PER = block/32 consecutive values from
// 32·PER·b + PER·l (PER a template parameter: registers, no local memory). The block amax is a warp max
// (exact, order-free), the scale the shared UE8M0 rule (formats.hpp), x / s an IEEE division like ref's (exact: s is
// a power of two), the clamp ref's comparisons (NaN stays NaN, with its sign), then the encode:
//   FP8: cvt.rn.satfinite.e4m3x2 (every target here is sm_89+), NaN handled first (ref's sign | 0x7F);
//   FP4: cvt.rn.satfinite.e2m1x2 on family-specific Blackwell targets (sm_100a / 100f), elsewhere the integer RNE
//        encoder of formats.hpp (not CUDA's double-precision emulation, which maps NaN to +6 without a sign rule
//        of ours). conversion_mismatches() holds both hardware conversions to the integer encoders on the device.
// A non-finite block is still written as ref writes it (NaN codes, scale 0xFF when amax is inf) and reported
// through the launch's status (status_nonfinite_input, one count per block).
// Grids: blockIdx.x = row, blockIdx.y = group of 8 blocks (warps) of that row: no integer division in the kernels.
// Contiguous rows aligned for it are read with one 8- / 16-byte load per lane and FP8 codes stored as one 2- / 4-byte
// word (the launcher checks the alignment; otherwise the same values go through strided accesses).
// Dequantization: blockIdx.x = row, one thread per code byte (FP4: two values) or per value (FP8); NaN codes and
// NaN scales are counted per value (status_nan_code). Where an output is NaN, its bits are the GPU's canonical NaN,
// not necessarily the host's: outputs are bitwise ref's except that NaN equals any NaN.
#include <type_traits>

#include "check.cuh"
#include "dsv4/cuda/quant.hpp"
#include "dsv4/detail/quant_instances.hpp"
#include "quant_core.cuh"

namespace dsv4::cuda {
namespace {

using namespace detail;  // quant_core.cuh

constexpr unsigned kWarpsPerCta = 8, kThreads = 32 * kWarpsPerCta;

// The lane's PER values: one vector load when `vec` (contiguous rows aligned for it, checked by the launcher), else
// PER strided loads of the same values.
template <int PER, class TIn>
__device__ void load_lane(view<const TIn, 2> x, std::int64_t r, std::int64_t k, bool vec, float (&v)[PER]) {
  if constexpr (PER > 1) {
    if (vec) {
      const TIn* p = &x(r, k);
      if constexpr (std::is_same_v<TIn, float>) {
        if constexpr (PER == 4) {
          const float4 a = *reinterpret_cast<const float4*>(p);
          v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w;
        } else {
          const float2 a = *reinterpret_cast<const float2*>(p);
          v[0] = a.x, v[1] = a.y;
        }
      } else {  // bf16: PER halves of 32-bit words
        unsigned u[PER / 2];
        if constexpr (PER == 4) {
          const uint2 a = *reinterpret_cast<const uint2*>(p);
          u[0] = a.x, u[PER / 2 - 1] = a.y;
        } else {
          u[0] = *reinterpret_cast<const unsigned*>(p);
        }
#pragma unroll
        for (int i = 0; i < PER / 2; ++i) {
          v[2 * i] = __uint_as_float(u[i] << 16);
          v[2 * i + 1] = __uint_as_float(u[i] & 0xFFFF0000u);
        }
      }
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < PER; ++i) v[i] = to_f32(x(r, k + i));
}

// Whether the rows of a view allow PER-element vector accesses (inner stride 1, base and row stride aligned).
template <class T>
bool vec_ok(const view<T, 2>& v, int per) {
  const std::int64_t bytes = static_cast<std::int64_t>(sizeof(T)) * per;
  return per > 1 && (v.shape[1] <= 1 || v.stride[1] == 1) && reinterpret_cast<std::uintptr_t>(v.data) % bytes == 0 &&
         (v.stride[0] * static_cast<std::int64_t>(sizeof(T))) % bytes == 0;
}

template <class TIn, class TCode, int PER>
__global__ void __launch_bounds__(kThreads) block_quantize_kernel(view<const TIn, 2> x, view<TCode, 2> q,
                                                                  view<ue8m0, 2> scale, bool vec_in, bool vec_out,
                                                                  detail::status_ref st) {
  constexpr bool fp4 = std::is_same_v<TCode, fp4x2>;
  using Code = std::conditional_t<fp4, fp4_e2m1, fp8_e4m3>;
  static_assert(!fp4 || PER == 1, "FP4 blocks are 32 values: adjacent lanes pair up into one byte");
  const std::int64_t r = blockIdx.x, b = static_cast<std::int64_t>(blockIdx.y) * kWarpsPerCta + threadIdx.x / 32;
  if (b >= scale.size(1)) return;  // warp-uniform
  const int lane = threadIdx.x & 31;
  const std::int64_t k = b * (32 * PER) + lane * PER;
  float v[PER];
  load_lane<PER>(x, r, k, vec_in, v);
  std::uint8_t code[PER];
  float s;
  const std::uint8_t sbyte = quantize_lane<Code, PER>(v, code, s, st);
  if (lane == 0) scale(r, b) = ue8m0{sbyte};
  if constexpr (fp4) {
    const unsigned odd = __shfl_down_sync(kFull, static_cast<unsigned>(code[0]), 1);
    if ((lane & 1) == 0) q(r, k / 2) = fp4x2{static_cast<std::uint8_t>(code[0] | (odd << 4))};
  } else {
    if constexpr (PER > 1) {
      if (vec_out) {  // one 2- or 4-byte store of the lane's codes
        unsigned word = 0;
#pragma unroll
        for (int i = 0; i < PER; ++i) word |= static_cast<unsigned>(code[i]) << (8 * i);
        auto* p = reinterpret_cast<unsigned char*>(&q(r, k));
        if constexpr (PER == 4)
          *reinterpret_cast<unsigned*>(p) = word;
        else
          *reinterpret_cast<unsigned short*>(p) = static_cast<unsigned short>(word);
        return;
      }
    }
#pragma unroll
    for (int i = 0; i < PER; ++i) q(r, k + i) = fp8_e4m3{code[i]};
  }
}

template <class Code, class TIn, class TOut, int PER>
__global__ void __launch_bounds__(kThreads) block_round_trip_kernel(view<const TIn, 2> x, view<TOut, 2> y,
                                                                    std::int64_t nb, bool vec_in,
                                                                    detail::status_ref st) {
  const std::int64_t r = blockIdx.x, b = static_cast<std::int64_t>(blockIdx.y) * kWarpsPerCta + threadIdx.x / 32;
  if (b >= nb) return;
  const std::int64_t k = b * (32 * PER) + (threadIdx.x & 31) * PER;
  float v[PER];
  load_lane<PER>(x, r, k, vec_in, v);  // the whole block is read (in registers) before y, which may alias x, is written
  std::uint8_t code[PER];
  float s;
  quantize_lane<Code, PER>(v, code, s, st);
#pragma unroll
  for (int i = 0; i < PER; ++i) y(r, k + i) = from_f32<TOut>(decode<Code>(code[i]) * s);
}

// One thread per FP4 byte (values 2c, 2c + 1) or FP8 code.
template <class TCode, class TOut>
__global__ void __launch_bounds__(kThreads) dequantize_kernel(view<const TCode, 2> q, view<const ue8m0, 2> scale,
                                                              view<TOut, 2> out, int br, int bc,
                                                              detail::status_ref st) {
  constexpr bool fp4 = std::is_same_v<TCode, fp4x2>;
  const int n = static_cast<int>(blockIdx.x);
  const int unit = static_cast<int>(blockIdx.y * kThreads + threadIdx.x);
  const int K = static_cast<int>(out.size(1));
  const int k0 = fp4 ? 2 * unit : unit;
  if (k0 >= K) return;
  const int sr = n / br;  // 32-bit divisions by the tile sizes, once per thread
  unsigned bad = 0;
  if constexpr (fp4) {
    const fp4x2 byte = q(n, unit);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int k = k0 + i;
      if (k >= K) break;
      const ue8m0 s = scale(sr, k / bc);
      const float v = (i == 0 ? byte.lo() : byte.hi()).to_float();
      bad += (s.bits == 0xFF) ? 1u : 0u;  // E2M1 has no NaN code
      out(n, k) = from_f32<TOut>(v * s.to_float());
    }
  } else {
    const fp8_e4m3 c = q(n, k0);
    const ue8m0 s = scale(sr, k0 / bc);
    bad += (s.bits == 0xFF || (c.bits & 0x7F) == 0x7F) ? 1u : 0u;
    out(n, k0) = from_f32<TOut>(c.to_float() * s.to_float());
  }
  if (bad) st.raise(status_nan_code, bad);
}

// Grid limits the launchers check (rows in grid.x, column groups in grid.y; 32-bit column indices).
constexpr std::int64_t kMaxGridX = 2147483647LL, kMaxGridY = 65535LL;

void check_grid(const char* op, std::int64_t rows, std::int64_t groups, std::int64_t cols) {
  DSV4_CHECK(rows <= kMaxGridX && groups <= kMaxGridY && cols <= kMaxGridX, op, "the CUDA backend takes at most ",
             kMaxGridX, " rows and ", kMaxGridY, " column groups per launch, got ", rows, " rows, ", groups,
             " groups (", cols, " columns)");
}

// Dispatch block (32 / 64 / 128) to PER (1 / 2 / 4).
template <class F>
void with_per(int block, F&& f) {
  switch (block) {
    case 32: return f(std::integral_constant<int, 1>{});
    case 64: return f(std::integral_constant<int, 2>{});
    case 128: return f(std::integral_constant<int, 4>{});
    default: DSV4_FAIL("cuda", "quantization block ", block, " is not 32, 64 or 128");
  }
}

}  // namespace

template <class TIn, class TCode>
std::int64_t block_quantize(view<const TIn, 2> x, view<TCode, 2> q, view<ue8m0, 2> scale, int block,
                            const exec& ex) {
  constexpr const char* op = "block_quantize";
  const std::int64_t rows = x.size(0), nb = scale.size(1), groups = (nb + kWarpsPerCta - 1) / kWarpsPerCta;
  check_grid(op, rows, groups, x.size(1));
  detail::launch l(op, ex);
  if (rows > 0 && nb > 0) {
    const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(groups));
    if constexpr (std::is_same_v<TCode, fp4x2>) {
      DSV4_CHECK(block == 32, op, "FP4 blocks are 32 values, got ", block);
      block_quantize_kernel<TIn, TCode, 1><<<grid, kThreads, 0, l.stream()>>>(x, q, scale, false, false,
                                                                              l.status());
    } else {
      with_per(block, [&](auto per) {
        constexpr int P = decltype(per)::value;
        block_quantize_kernel<TIn, TCode, P><<<grid, kThreads, 0, l.stream()>>>(x, q, scale, vec_ok(x, P),
                                                                                 vec_ok(q, P), l.status());
      });
    }
  }
  return l.finish();
}

template <class Code, class TIn, class TOut>
std::int64_t block_round_trip(view<const TIn, 2> x, view<TOut, 2> y, int block, const exec& ex) {
  constexpr const char* op = "block_round_trip";
  const std::int64_t rows = x.size(0), nb = x.size(1) / block, groups = (nb + kWarpsPerCta - 1) / kWarpsPerCta;
  check_grid(op, rows, groups, x.size(1));
  detail::launch l(op, ex);
  if (rows > 0 && nb > 0) {
    const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(groups));
    with_per(block, [&](auto per) {
      constexpr int P = decltype(per)::value;
      block_round_trip_kernel<Code, TIn, TOut, P><<<grid, kThreads, 0, l.stream()>>>(x, y, nb, vec_ok(x, P),
                                                                                      l.status());
    });
  }
  return l.finish();
}

template <class TCode, class TOut>
std::int64_t dequantize(view<const TCode, 2> q, view<const ue8m0, 2> scale, view<TOut, 2> out, int br, int bc,
                        const exec& ex) {
  constexpr const char* op = "dequantize";
  constexpr bool fp4 = std::is_same_v<TCode, fp4x2>;
  const std::int64_t rows = out.size(0), K = out.size(1), units = fp4 ? (K + 1) / 2 : K;
  const std::int64_t groups = (units + kThreads - 1) / kThreads;
  check_grid(op, rows, groups, K);
  detail::launch l(op, ex);
  if (rows > 0 && K > 0)
    dequantize_kernel<<<dim3(static_cast<unsigned>(rows), static_cast<unsigned>(groups)), kThreads, 0,
                        l.stream()>>>(q, scale, out, br, bc, l.status());
  return l.finish();
}

DSV4_QUANT_INSTANTIATE_ALL()

// ---- conversion self-check ----------------------------------------------------------------------------------------

namespace {
// Every fp32 pattern u = i + j·stride (grid-stride): the conversion the quantizers use against the integer encoder.
// Values outside the format's clamp range are clamped first, as the quantizers do.
__global__ void conversion_check_kernel(int fmt, detail::status_ref st) {
  unsigned bad = 0;
  for (unsigned long long u = blockIdx.x * static_cast<unsigned long long>(blockDim.x) + threadIdx.x;
       u <= 0xFFFFFFFFull; u += static_cast<unsigned long long>(gridDim.x) * blockDim.x) {
    float v = bits_to_f32(static_cast<std::uint32_t>(u));
    if (fmt == 8) {
      v = v > 448.f ? 448.f : (v < -448.f ? -448.f : v);
      bad += encode<fp8_e4m3>(v) != encode_e4m3_int(v);
    } else {
      v = v > 6.f ? 6.f : (v < -6.f ? -6.f : v);
      bad += encode<fp4_e2m1>(v) != encode_e2m1_int(v);
    }
  }
  if (bad) st.raise(status_nan_code, bad);
}
}  // namespace

std::int64_t conversion_mismatches(int format_bits, const exec& ex) {
  constexpr const char* op = "conversion_mismatches";
  DSV4_CHECK(format_bits == 8 || format_bits == 4, op, "format_bits must be 8 (E4M3) or 4 (E2M1), got ",
             format_bits);
  DSV4_CHECK(ex.checks == check_policy::sync, op, "returns a count: needs check_policy::sync");
  detail::launch l(op, ex);
  conversion_check_kernel<<<4096, kThreads, 0, l.stream()>>>(format_bits, l.status());
  return l.finish();
}

}  // namespace dsv4::cuda
