// cuda/quant.cu — CUDA kernels and launchers of the block quantizers and dequantization (spec §6.2–§6.4).
//
// Quantizers: one warp per quantization block (block 32/64/128 -> 1/2/4 values per lane); the block amax and the
// finiteness test are warp reductions; the UE8M0 scale uses the shared bit rule (formats.hpp); codes come from the
// CUDA cvt routines — an implementation independent of ref's frexp/rint one. FP4 pairs are packed by the even
// lane (element 2c in the low nibble). Dequantization: one thread per value, grid-stride.
#include <cuda_fp4.h>
#include <cuda_fp8.h>

#include <type_traits>

#include "check.cuh"
#include "dsv4/cuda/quant.hpp"
#include "dsv4/detail/quant_instances.hpp"

namespace dsv4::cuda {
namespace {

constexpr unsigned kFull = 0xFFFFFFFFu;

template <class Code>
__device__ std::uint8_t encode(float v) {
  if constexpr (std::is_same_v<Code, fp8_e4m3>)
    return static_cast<std::uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
  else
    return static_cast<std::uint8_t>(__nv_cvt_float_to_fp4(v, __NV_E2M1, cudaRoundNearest)) & 0xFu;
}

template <class Code>
__device__ float decode(std::uint8_t c) {
  __half_raw h;
  if constexpr (std::is_same_v<Code, fp8_e4m3>)
    h = __nv_cvt_fp8_to_halfraw(static_cast<__nv_fp8_storage_t>(c), __NV_E4M3);
  else
    h = __nv_cvt_fp4_to_halfraw(static_cast<__nv_fp4_storage_t>(c), __NV_E2M1);
  return __half2float(__half(h));
}

// Per-warp block setup: loads this lane's `per` values, returns false (after counting) for a non-finite block.
template <class Code, class TIn>
__device__ bool load_and_scale(view<const TIn, 2> x, std::int64_t r, std::int64_t k, int per, float* v,
                               std::uint8_t& sbyte, float& inv_s, float& s, unsigned long long* bad) {
  using tr = block_quant_traits<Code>;
  float amax = 0.f;
  bool finite = true;
  for (int i = 0; i < per; ++i) {
    v[i] = to_f32(x(r, k + i));
    const float a = fabsf(v[i]);
    finite = finite && (a <= 3.4028235e38f);
    amax = fmaxf(amax, a);
  }
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(kFull, amax, o));
  if (!__all_sync(kFull, finite)) {
    if ((threadIdx.x & 31) == 0) atomicAdd(bad, 1ull);
    return false;
  }
  sbyte = ue8m0_ceil_scale(amax, tr::kAmaxFloor, tr::kInvMax);
  s = ue8m0{sbyte}.to_float();
  inv_s = bits_to_f32(static_cast<std::uint32_t>(254 - sbyte) << 23);
  return true;
}

template <class TIn, class TCode>
__global__ void block_quantize_kernel(view<const TIn, 2> x, view<TCode, 2> q, view<ue8m0, 2> scale, int block,
                                      unsigned long long* bad) {
  using Code = std::conditional_t<std::is_same_v<TCode, fp4x2>, fp4_e2m1, fp8_e4m3>;
  using tr = block_quant_traits<Code>;
  const std::int64_t nb = scale.size(1), total = x.size(0) * nb;
  const int lane = threadIdx.x & 31, per = block / 32;
  for (std::int64_t w = (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x) / 32; w < total;
       w += static_cast<std::int64_t>(gridDim.x) * blockDim.x / 32) {
    const std::int64_t r = w / nb, b = w % nb, k = b * block + lane * per;
    float v[4];
    std::uint8_t sbyte;
    float inv_s, s;
    if (!load_and_scale<Code>(x, r, k, per, v, sbyte, inv_s, s, bad)) continue;
    if (lane == 0) scale(r, b) = ue8m0{sbyte};
    for (int i = 0; i < per; ++i) {
      const float c = fminf(fmaxf(v[i] * inv_s, -tr::kMax), tr::kMax);
      const std::uint8_t code = encode<Code>(c);
      if constexpr (std::is_same_v<TCode, fp4x2>) {
        const std::uint8_t odd = static_cast<std::uint8_t>(__shfl_down_sync(kFull, code, 1));
        if ((lane & 1) == 0) q(r, k / 2) = fp4x2{static_cast<std::uint8_t>(code | (odd << 4))};
      } else {
        q(r, k + i) = fp8_e4m3{code};
      }
    }
  }
}

template <class Code, class TIn, class TOut>
__global__ void block_round_trip_kernel(view<const TIn, 2> x, view<TOut, 2> y, int block,
                                        unsigned long long* bad) {
  using tr = block_quant_traits<Code>;
  const std::int64_t nb = x.size(1) / block, total = x.size(0) * nb;
  const int lane = threadIdx.x & 31, per = block / 32;
  for (std::int64_t w = (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x) / 32; w < total;
       w += static_cast<std::int64_t>(gridDim.x) * blockDim.x / 32) {
    const std::int64_t r = w / nb, k = (w % nb) * block + lane * per;
    float v[4];
    std::uint8_t sbyte;
    float inv_s, s;
    if (!load_and_scale<Code>(x, r, k, per, v, sbyte, inv_s, s, bad)) continue;
    for (int i = 0; i < per; ++i) {
      const float c = fminf(fmaxf(v[i] * inv_s, -tr::kMax), tr::kMax);
      y(r, k + i) = from_f32<TOut>(decode<Code>(encode<Code>(c)) * s);
    }
  }
}

template <class TCode, class TOut>
__global__ void dequantize_kernel(view<const TCode, 2> q, view<const ue8m0, 2> scale, view<TOut, 2> out, int br,
                                  int bc, unsigned long long* bad) {
  const std::int64_t K = out.size(1), total = out.size(0) * K;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t n = i / K, k = i % K;
    float v;
    if constexpr (std::is_same_v<TCode, fp4x2>) {
      const fp4x2 byte = q(n, k / 2);
      v = decode<fp4_e2m1>((k & 1) ? byte.hi().code : byte.lo().code);
    } else {
      v = decode<fp8_e4m3>(q(n, k).bits);
    }
    const ue8m0 s = scale(n / br, k / bc);
    if (v != v || s.bits == 0xFF) atomicAdd(bad, 1ull);
    out(n, k) = from_f32<TOut>(v * s.to_float());
  }
}

constexpr unsigned kThreads = 256;

}  // namespace

template <class TIn, class TCode>
std::int64_t block_quantize(view<const TIn, 2> x, view<TCode, 2> q, view<ue8m0, 2> scale, int block,
                            const exec& ex) {
  const cudaStream_t s = detail::stream_of(ex);
  detail::bad_counter bad(s);
  const std::int64_t warps = x.size(0) * scale.size(1);
  if (warps > 0)
    block_quantize_kernel<<<detail::blocks_for(warps * 32, kThreads), kThreads, 0, s>>>(x, q, scale, block, bad.dev);
  return bad.read();
}

template <class Code, class TIn, class TOut>
std::int64_t block_round_trip(view<const TIn, 2> x, view<TOut, 2> y, int block, const exec& ex) {
  const cudaStream_t s = detail::stream_of(ex);
  detail::bad_counter bad(s);
  const std::int64_t warps = x.size(0) * (x.size(1) / block);
  if (warps > 0)
    block_round_trip_kernel<Code><<<detail::blocks_for(warps * 32, kThreads), kThreads, 0, s>>>(x, y, block, bad.dev);
  return bad.read();
}

template <class TCode, class TOut>
std::int64_t dequantize(view<const TCode, 2> q, view<const ue8m0, 2> scale, view<TOut, 2> out, int br, int bc,
                        const exec& ex) {
  const cudaStream_t s = detail::stream_of(ex);
  detail::bad_counter bad(s);
  const std::int64_t n = out.size(0) * out.size(1);
  if (n > 0) dequantize_kernel<<<detail::blocks_for(n, kThreads), kThreads, 0, s>>>(q, scale, out, br, bc, bad.dev);
  return bad.read();
}

DSV4_QUANT_INSTANTIATE_ALL()

}  // namespace dsv4::cuda
