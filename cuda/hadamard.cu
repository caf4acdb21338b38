// cuda/hadamard.cu — Walsh–Hadamard transform, one thread block per row: load the row into shared memory as fp32,
// log2(n) butterfly stages (thread t handles pairs t, t + blockDim, ...) separated by __syncthreads, the same
// operation order as ref/hadamard.hpp, then scale and store; rows of 32 .. 512 values take a warp each instead
// (registers and shuffles, below). Indices are 32-bit (n <= 8192) and the pair index
// uses shifts (h is a power of two): no integer division. No synchronization: the launch context decides (check.cuh).
#include <type_traits>

#include "check.cuh"
#include "dsv4/cuda/hadamard.hpp"
#include "dsv4/ref/hadamard.hpp"

namespace dsv4::cuda {
namespace {

constexpr std::int64_t kMaxN = 8192;  // 32 KiB of fp32 shared memory per block, under the 48 KiB default

template <class TIn, class TOut>
__global__ void hadamard_kernel(view<const TIn, 2> x, view<TOut, 2> y, int log2n, float scale) {
  extern __shared__ float v[];
  const int n = 1 << log2n;
  for (std::int64_t r = blockIdx.x; r < x.size(0); r += gridDim.x) {
    for (int j = threadIdx.x; j < n; j += blockDim.x) v[j] = to_f32(x(r, j));
    __syncthreads();
    for (int lh = 0; lh < log2n; ++lh) {
      const int h = 1 << lh;
      for (int p = threadIdx.x; p < n / 2; p += blockDim.x) {
        const int j = ((p >> lh) << (lh + 1)) + (p & (h - 1));  // first index of the p-th pair of this stage
        const float a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
      __syncthreads();
    }
    for (int j = threadIdx.x; j < n; j += blockDim.x) y(r, j) = from_f32<TOut>(v[j] * scale);
    __syncthreads();
  }
}

// Rows of 32 .. 512 values (V4's are 128; 1024 would need 32 registers a lane and spills on sm_100a): one warp per
// row, lane l holding values l·P .. l·P + P − 1 (P = n/32) in registers. Stages h < P pair registers of one lane;
// stages h >= P pair lane l with lane l ^ (h/P) through a shuffle, the lower one computing a + b and the upper one
// a − b from the same two values: ref's operations in ref's stage order, so the same bits. No shared memory, no
// barrier, 8 rows per CTA.
constexpr unsigned kRowWarps = 8;

template <int P, class TIn, class TOut>
__global__ void __launch_bounds__(32 * kRowWarps) hadamard_warp_kernel(view<const TIn, 2> x, view<TOut, 2> y,
                                                                       float scale) {
  const int lane = threadIdx.x & 31;
  for (std::int64_t r = static_cast<std::int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / 32; r < x.size(0);
       r += static_cast<std::int64_t>(gridDim.x) * kRowWarps) {
    float v[P];
#pragma unroll
    for (int i = 0; i < P; ++i) v[i] = to_f32(x(r, lane * P + i));  // all of the row is read before y is written
#pragma unroll
    for (int h = 1; h < P; h *= 2)
#pragma unroll
      for (int i = 0; i < P; ++i)
        if ((i & h) == 0) {
          const float a = v[i], b = v[i + h];
          v[i] = __fadd_rn(a, b);
          v[i + h] = __fsub_rn(a, b);
        }
#pragma unroll
    for (int m = 1; m < 32; m *= 2) {  // h = m·P
      const bool upper = (lane & m) != 0;
#pragma unroll
      for (int i = 0; i < P; ++i) {
        const float other = __shfl_xor_sync(0xFFFFFFFFu, v[i], m);
        v[i] = upper ? __fsub_rn(other, v[i]) : __fadd_rn(v[i], other);
      }
    }
#pragma unroll
    for (int i = 0; i < P; ++i) y(r, lane * P + i) = from_f32<TOut>(__fmul_rn(v[i], scale));
  }
}

}  // namespace

template <class TIn, class TOut>
void hadamard(view<const TIn, 2> x, view<TOut, 2> y, const exec& ex) {
  const std::int64_t n = x.size(1);
  DSV4_CHECK(n <= kMaxN, "hadamard", "the CUDA backend handles rows of at most ", kMaxN, " values, got ", n);
  detail::launch l("hadamard", ex);
  if (x.size(0) > 0 && n >= 32 && n <= 512) {
    const unsigned blocks =
        static_cast<unsigned>((x.size(0) + kRowWarps - 1) / kRowWarps < 65535 ? (x.size(0) + kRowWarps - 1) / kRowWarps
                                                                               : 65535);
    const float sc = ref::hadamard_scale(n);
    auto go = [&](auto p) {
      hadamard_warp_kernel<decltype(p)::value><<<blocks, 32 * kRowWarps, 0, l.stream()>>>(x, y, sc);
    };
    switch (n) {
      case 32: go(std::integral_constant<int, 1>{}); break;
      case 64: go(std::integral_constant<int, 2>{}); break;
      case 128: go(std::integral_constant<int, 4>{}); break;
      case 256: go(std::integral_constant<int, 8>{}); break;
      default: go(std::integral_constant<int, 16>{}); break;
    }
  } else if (x.size(0) > 0 && n > 0) {
    int log2n = 0;
    while ((std::int64_t{1} << log2n) < n) ++log2n;
    const unsigned threads = static_cast<unsigned>(n / 2 < 256 ? (n / 2 < 32 ? 32 : n / 2) : 256);
    const unsigned blocks = static_cast<unsigned>(x.size(0) < 65535 ? x.size(0) : 65535);
    hadamard_kernel<<<blocks, threads, n * sizeof(float), l.stream()>>>(x, y, log2n, ref::hadamard_scale(n));
  }
  l.finish();
}

template void hadamard<float, float>(view<const float, 2>, view<float, 2>, const exec&);
template void hadamard<float, bf16>(view<const float, 2>, view<bf16, 2>, const exec&);
template void hadamard<bf16, float>(view<const bf16, 2>, view<float, 2>, const exec&);
template void hadamard<bf16, bf16>(view<const bf16, 2>, view<bf16, 2>, const exec&);

}  // namespace dsv4::cuda
