// cuda/rowwise.cu — RMSNorm, RoPE, the embedding gather, scale and the non-finite count on the device
// (dsv4/cuda/rowwise.hpp; ref: dsv4/ref/rotary.hpp). No synchronization: the launch context decides (check.cuh).
#include <cmath>

#include "check.cuh"
#include "dsv4/cuda/rowwise.hpp"
#include "rotary.cuh"

namespace dsv4::cuda {
namespace {

using namespace detail;

constexpr unsigned kWarps = 8, kThreads = 256;

// A warp per row: lane l sums the squares of columns l, l + 32, ... in double (each square of a float is exact in
// double), the xor butterfly adds the 32 partial sums in a fixed order, then ref's fp32 scale and product.
__global__ void __launch_bounds__(32 * kWarps) rms_norm_kernel(view<const float, 2> x, const float* w, double eps,
                                                               view<float, 2> y) {
  const int lane = threadIdx.x & 31;
  const std::int64_t n = x.size(1);
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32; r < x.size(0);
       r += static_cast<std::int64_t>(gridDim.x) * kWarps) {
    double ss = 0;
    for (std::int64_t i = lane; i < n; i += 32) {
      const double v = x(r, i);
      ss = fma(v, v, ss);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float s = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(n) + eps));
    __syncwarp();  // every lane has read its columns before any writes (y may be x)
    for (std::int64_t i = lane; i < n; i += 32) {
      const float v = __fmul_rn(x(r, i), s);
      y(r, i) = w ? __fmul_rn(v, w[i]) : v;
    }
  }
}

// A thread per (row, head, pair): (a, b) -> (a·c − b·s, a·s + b·c) with ref's roundings (no contraction).
__global__ void rope_kernel(view<float, 3> x, const std::int64_t* positions, const float* freq, std::int64_t pairs,
                            std::int64_t off, bool inverse, status_ref st) {
  const std::int64_t H = x.size(1), n = x.size(0) * H * pairs;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t p = i % pairs, th = i / pairs, h = th % H, t = th / H;
    const std::int64_t pos = positions[t];
    if (pos < 0 || pos >= (std::int64_t{1} << 24)) {  // left as is, reported (host positions are an error)
      if (p == 0 && h == 0) st.raise(status_index_oob);
      continue;
    }
    const float ang = __fmul_rn(static_cast<float>(pos), freq[p]);
    float sn, cs;
    sin_cos(ang, sn, cs);
    if (inverse) sn = -sn;
    float& a = x(t, h, off + 2 * p);
    float& b = x(t, h, off + 2 * p + 1);
    const float na = __fsub_rn(__fmul_rn(a, cs), __fmul_rn(b, sn));
    const float nb = __fadd_rn(__fmul_rn(a, sn), __fmul_rn(b, cs));
    a = na;
    b = nb;
  }
}

template <class TT>
__global__ void embed_kernel(const std::int64_t* ids, view<const TT, 2> table, view<float, 2> out, status_ref st) {
  const std::int64_t D = out.size(1), n = out.size(0) * D, V = table.size(0);
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t t = i / D, d = i % D, id = ids[t];
    const bool ok = id >= 0 && id < V;
    if (!ok && d == 0) st.raise(status_index_oob);
    out(t, d) = ok ? to_f32(table(id, d)) : 0.f;
  }
}

__global__ void scale_kernel(view<float, 2> x, float s) {
  const std::int64_t C = x.size(1), n = x.size(0) * C;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    x(i / C, i % C) = __fmul_rn(x(i / C, i % C), s);
}

__global__ void non_finite_kernel(view<const float, 2> x, status_ref st) {
  const std::int64_t C = x.size(1), n = x.size(0) * C;
  unsigned bad = 0;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    bad += isfinite(x(i / C, i % C)) ? 0u : 1u;
  bad = __reduce_add_sync(0xffffffffu, bad);
  if ((threadIdx.x & 31) == 0 && bad) st.raise(status_nonfinite_input, bad);
}

}  // namespace

void rms_norm(view<const float, 2> x, const float* weight, double eps, view<float, 2> y, const exec& ex) {
  launch l("rms_norm", ex);
  if (x.size(0) > 0)
    rms_norm_kernel<<<blocks_for(x.size(0), kWarps), 32 * kWarps, 0, l.stream()>>>(x, weight, eps, y);
  l.finish();
}

void rope(view<float, 3> x, const std::int64_t* positions, const float* freq, std::int64_t pairs, std::int64_t off,
          bool inverse, const exec& ex) {
  launch l("rope", ex);
  const std::int64_t n = x.size(0) * x.size(1) * pairs;
  if (n > 0)
    rope_kernel<<<blocks_for(n, kThreads), kThreads, 0, l.stream()>>>(x, positions, freq, pairs, off, inverse,
                                                                       l.status());
  if (const std::int64_t bad = l.finish(); bad > 0)
    DSV4_FAIL("rope", bad, " rows have a position outside [0, 2^24)");
}

template <class TT>
void embed(const std::int64_t* ids, view<const TT, 2> table, view<float, 2> out, const exec& ex) {
  launch l("embed", ex);
  const std::int64_t n = out.size(0) * out.size(1);
  if (n > 0) embed_kernel<TT><<<blocks_for(n, kThreads), kThreads, 0, l.stream()>>>(ids, table, out, l.status());
  if (const std::int64_t bad = l.finish(); bad > 0)
    DSV4_FAIL("embed", bad, " token ids are outside the vocabulary [0, ", table.size(0), ")");
}
template void embed<float>(const std::int64_t*, view<const float, 2>, view<float, 2>, const exec&);
template void embed<bf16>(const std::int64_t*, view<const bf16, 2>, view<float, 2>, const exec&);

void scale(view<float, 2> x, float s, const exec& ex) {
  launch l("scale", ex);
  const std::int64_t n = x.size(0) * x.size(1);
  if (n > 0) scale_kernel<<<blocks_for(n, kThreads), kThreads, 0, l.stream()>>>(x, s);
  l.finish();
}

std::int64_t count_non_finite(view<const float, 2> x, const exec& ex) {
  launch l("count_non_finite", ex);
  const std::int64_t n = x.size(0) * x.size(1);
  if (n > 0) non_finite_kernel<<<blocks_for(n, kThreads), kThreads, 0, l.stream()>>>(x, l.status());
  return l.finish();
}

}  // namespace dsv4::cuda
