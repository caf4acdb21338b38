// cuda/quant_core.cuh — the device side of the block quantizers (spec §6.2, §6.3), shared by cuda/quant.cu and the
// page stores of cuda/paged.cu: the encoders (hardware conversions where the target has them, else the integer RNE
// encoders of formats.hpp; NaN handled first, as ref) and one warp's block — amax by a warp max, the UE8M0 scale,
// x / s, ref's clamp, the codes — so every page write is ref's bytes.
#pragma once

#include <cuda_fp4.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <type_traits>

#include "check.cuh"
#include "dsv4/formats.hpp"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FAMILY_SPECIFIC__) && (__CUDA_ARCH_FAMILY_SPECIFIC__ >= 1000)
#define DSV4_FP4_CVT 1  // the e2m1x2 conversion instruction exists on this target
#else
#define DSV4_FP4_CVT 0
#endif

namespace dsv4::cuda::detail {

inline constexpr unsigned kFull = 0xFFFFFFFFu;

// The hardware conversions, NaN excluded (the caller maps NaN first). v is already clamped to the format's range.
__device__ inline std::uint8_t hw_fp8(float v) {
  return static_cast<std::uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}
__device__ inline std::uint8_t hw_or_int_fp4(float v) {
#if DSV4_FP4_CVT
  return static_cast<std::uint8_t>(__nv_cvt_float_to_fp4(v, __NV_E2M1, cudaRoundNearest)) & 0xFu;
#else
  return encode_e2m1_int(v);
#endif
}

template <class Code>
__device__ std::uint8_t encode(float v) {
  if constexpr (std::is_same_v<Code, fp8_e4m3>) {
    if (v != v) return static_cast<std::uint8_t>(((f32_to_bits(v) >> 24) & 0x80u) | 0x7Fu);
    return hw_fp8(v);
  } else {
    if (v != v) return 0x7u;  // fp4_e2m1::from_float's NaN (unreachable through a finite scale; kept equal to ref)
    return hw_or_int_fp4(v);
  }
}

template <class Code>
__device__ float decode(std::uint8_t c) {
  if constexpr (std::is_same_v<Code, fp8_e4m3>)
    return fp8_e4m3{c}.to_float();
  else
    return fp4_e2m1{c}.to_float();
}

// One warp's block: the scale byte of v[0:PER) across the warp and the codes of this lane's values (ref's steps).
template <class Code, int PER>
__device__ std::uint8_t quantize_lane(const float (&v)[PER], std::uint8_t (&code)[PER], float& s,
                                      const status_ref& st) {
  using tr = block_quant_traits<Code>;
  float amax = 0.f;
  bool finite = true;
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    const float a = fabsf(v[i]);
    finite = finite && (a <= 3.4028235e38f);
    amax = a > amax ? a : amax;  // ref's comparison: NaN never wins
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float other = __shfl_xor_sync(kFull, amax, o);
    amax = other > amax ? other : amax;
  }
  if (!__all_sync(kFull, finite) && (threadIdx.x & 31) == 0) st.raise(status_nonfinite_input);
  const std::uint8_t sbyte = ue8m0_ceil_scale(amax, tr::kAmaxFloor, tr::kInvMax);
  s = ue8m0{sbyte}.to_float();
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    // A NaN input stays itself (ref's x / s on the host returns its NaN operand, sign included; a GPU division
    // would return the canonical NaN). Only the sign of a NaN reaches a code.
    float c = v[i] != v[i] ? v[i] : __fdiv_rn(v[i], s);
    c = c > tr::kMax ? tr::kMax : (c < -tr::kMax ? -tr::kMax : c);
    code[i] = encode<Code>(c);
  }
  return sbyte;
}

}  // namespace dsv4::cuda::detail
