// cuda/linear_core.cuh — the warp-level dot of the CUDA fp32 linear (dsv4/cuda/linear.hpp has the order), shared by
// cuda/linear.cu and the grouped expert GEMMs of cuda/moe.cu, so an expert's rows are the same bits as ops::linear's.
#pragma once

#include <cuda_fp8.h>

#include <cstdint>

#include "check.cuh"
#include "dsv4/ref/linear.hpp"

namespace dsv4::cuda::detail {

using ref::wfmt;
inline constexpr int kWarps = 4, kRows = 4;  // warps per CTA, rows per warp
inline constexpr unsigned kThreads = 32 * kWarps;

template <wfmt F>
struct fmt_traits {
  static constexpr int E = F == wfmt::f32 ? 4 : 8;  // elements per lane per group
  static constexpr int G = 32 * E;                   // elements per group
};

// E = 8 FP8 codes (two 32-bit words) -> fp32, exact.
__device__ inline void fp8x8(unsigned lo, unsigned hi, float (&w)[8]) {
  const unsigned words[2] = {lo, hi};
#pragma unroll
  for (int h = 0; h < 2; ++h)
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(
          static_cast<__nv_fp8x2_storage_t>((words[h] >> (16 * p)) & 0xFFFFu), __NV_E4M3);
      const float2 f = __half22float2(__half2(r));
      w[4 * h + 2 * p] = f.x;
      w[4 * h + 2 * p + 1] = f.y;
    }
}

// E2M1 nibble -> fp32 from its fields (fp4_e2m1::to_float without a branch on the exponent).
__device__ inline float e2m1(unsigned c) {
  const unsigned e = (c >> 1) & 3u, m = c & 1u;
  const float mag = e == 0u ? 0.5f * static_cast<float>(m) : __uint_as_float(((e + 126u) << 23) | (m << 22));
  return (c & 8u) ? -mag : mag;
}

// Row n's E weights from element k0 (k0 % E == 0, k0 + E <= K), decoded; returns how many are NaN (ref's count).
template <wfmt F>
__device__ int load_weights(const ref::weight_ref& w, std::int64_t n, std::int64_t k0, bool vec,
                            float (&out)[fmt_traits<F>::E]) {
  constexpr int E = fmt_traits<F>::E;
  if constexpr (F == wfmt::f32) {
    const float* p = &w.f32(n, k0);
    if (vec) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(p));
      out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
    } else {
#pragma unroll
      for (int i = 0; i < E; ++i) out[i] = __ldg(p + i);
    }
    return 0;
  } else if constexpr (F == wfmt::bf16) {
    const auto* p = reinterpret_cast<const unsigned short*>(&w.bf(n, k0));
    if (vec) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
      const unsigned u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        out[2 * i] = __uint_as_float(u[i] << 16);
        out[2 * i + 1] = __uint_as_float(u[i] & 0xFFFF0000u);
      }
    } else {
#pragma unroll
      for (int i = 0; i < E; ++i) out[i] = __uint_as_float(static_cast<unsigned>(__ldg(p + i)) << 16);
    }
    return 0;
  } else if constexpr (F == wfmt::fp8_b128) {
    const auto* p = reinterpret_cast<const unsigned char*>(&w.f8(n, k0));
    unsigned lo, hi;
    if (vec) {
      const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
      lo = v.x, hi = v.y;
    } else {
      lo = hi = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        lo |= static_cast<unsigned>(__ldg(p + i)) << (8 * i);
        hi |= static_cast<unsigned>(__ldg(p + 4 + i)) << (8 * i);
      }
    }
    fp8x8(lo, hi, out);
    const ue8m0 s = w.scale(n / ref::kFp8WeightTile, k0 / ref::kFp8WeightTile);  // E | 128: one tile
    const float sf = s.to_float();
    int bad = 0;
#pragma unroll
    for (int i = 0; i < E; ++i) {
      const unsigned c = ((i < 4 ? lo : hi) >> (8 * (i & 3))) & 0xFFu;
      bad += ((c & 0x7Fu) == 0x7Fu || s.bits == 0xFF) ? 1 : 0;
      out[i] *= sf;
    }
    return bad;
  } else {
    const auto* p = reinterpret_cast<const unsigned char*>(&w.f4(n, k0 / 2));
    unsigned v;
    if (vec) {
      v = __ldg(reinterpret_cast<const unsigned*>(p));
    } else {
      v = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i) v |= static_cast<unsigned>(__ldg(p + i)) << (8 * i);
    }
    const ue8m0 s = w.scale(n, k0 / ref::kFp4WeightBlock);  // E | 32: one block
    const float sf = s.to_float();
#pragma unroll
    for (int i = 0; i < E; ++i) out[i] = e2m1((v >> (4 * i)) & 0xFu) * sf;  // element 2c: low nibble of byte c
    return s.bits == 0xFF ? E : 0;
  }
}

// One decoded weight of row n at k (the tail of K, k < K).
template <wfmt F>
__device__ float load_weight(const ref::weight_ref& w, std::int64_t n, std::int64_t k, int& bad) {
  if constexpr (F == wfmt::f32) {
    return w.f32(n, k);
  } else if constexpr (F == wfmt::bf16) {
    return w.bf(n, k).to_float();
  } else if constexpr (F == wfmt::fp8_b128) {
    const ue8m0 s = w.scale(n / ref::kFp8WeightTile, k / ref::kFp8WeightTile);
    const fp8_e4m3 c = w.f8(n, k);
    bad += (s.bits == 0xFF || (c.bits & 0x7F) == 0x7F) ? 1 : 0;
    return c.to_float() * s.to_float();
  } else {
    const ue8m0 s = w.scale(n, k / ref::kFp4WeightBlock);
    bad += s.bits == 0xFF ? 1 : 0;
    const fp4x2 b = w.f4(n, k / 2);
    return ((k & 1) ? b.hi() : b.lo()).to_float() * s.to_float();
  }
}

// acc[t][r] = the dot of token t (xat(t, k), t < nt) with weight row n0 + r (r < nr) in the lane order of this format,
// then the xor butterfly: every lane returns every sum. Returns this lane's NaN-weight count.
template <wfmt F, int TT, class XAt>
__device__ int rows_dot(const ref::weight_ref& w, std::int64_t n0, int nr, int nt, bool vec, XAt xat,
                        float (&acc)[TT][kRows]) {
  constexpr int E = fmt_traits<F>::E, G = fmt_traits<F>::G;
  const int lane = threadIdx.x & 31;
  const std::int64_t K = w.k;
#pragma unroll
  for (int t = 0; t < TT; ++t)
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[t][r] = 0.f;
  int bad = 0;
  const std::int64_t full = K / G * G;
  for (std::int64_t g = 0; g < full; g += G) {
    const std::int64_t k0 = g + lane * E;
    float xv[TT][E];
#pragma unroll
    for (int t = 0; t < TT; ++t)
#pragma unroll
      for (int i = 0; i < E; ++i) xv[t][i] = t < nt ? xat(t, k0 + i) : 0.f;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      if (r < nr) {
        float wv[E];
        bad += load_weights<F>(w, n0 + r, k0, vec, wv);
#pragma unroll
        for (int t = 0; t < TT; ++t)
#pragma unroll
          for (int i = 0; i < E; ++i) acc[t][r] = fmaf(xv[t][i], wv[i], acc[t][r]);
      }
    }
  }
  // the tail group: lane l's elements that exist, in the same increasing order
  for (int i = 0; i < E; ++i) {
    const std::int64_t k = full + lane * E + i;
    if (k >= K) break;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {  // unrolled with guards: acc stays in registers
      if (r < nr) {
        const float wk = load_weight<F>(w, n0 + r, k, bad);
#pragma unroll
        for (int t = 0; t < TT; ++t)
          if (t < nt) acc[t][r] = fmaf(xat(t, k), wk, acc[t][r]);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < TT; ++t)
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) acc[t][r] += __shfl_xor_sync(0xFFFFFFFFu, acc[t][r], o);
  return bad;
}

// The warp's NaN-weight count into the status (lane 0 raises once).
__device__ inline void warp_raise_nan(int bad, const status_ref& st) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) bad += __shfl_xor_sync(0xFFFFFFFFu, bad, o);
  if (bad && (threadIdx.x & 31) == 0) st.raise(status_nan_code, static_cast<unsigned long long>(bad));
}

// Whether every row of the weight starts at a multiple of the lane's vector width (then the vector loads are legal).
inline bool rows_aligned(const ref::weight_ref& w) {
  auto ok = [](const void* base, std::int64_t row_stride_bytes, std::int64_t bytes) {
    return reinterpret_cast<std::uintptr_t>(base) % static_cast<std::uintptr_t>(bytes) == 0 &&
           row_stride_bytes % bytes == 0;
  };
  switch (w.fmt) {
    case wfmt::f32: return ok(w.f32.data, w.f32.stride[0] * 4, 16);
    case wfmt::bf16: return ok(w.bf.data, w.bf.stride[0] * 2, 16);
    case wfmt::fp8_b128: return ok(w.f8.data, w.f8.stride[0], 8);
    case wfmt::fp4_b32: return ok(w.f4.data, w.f4.stride[0], 4);
  }
  return false;
}

// y = x · W^T on l's stream with the linear kernels (cuda/linear.cu), f32 output; for ops that run linears inside
// their own launch (the MoE's shared expert). TX in {float, bf16}.
template <class TX>
void linear_into(view<const TX, 2> x, const ref::weight_ref& w, view<float, 2> y, launch& l);

}  // namespace dsv4::cuda::detail
