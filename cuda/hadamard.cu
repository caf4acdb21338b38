// cuda/hadamard.cu — Walsh–Hadamard transform, one thread block per row: load the row into shared memory as fp32,
// log2(n) butterfly stages (thread t handles pairs t, t + blockDim, ...) separated by __syncthreads, the same
// operation order as ref/hadamard.hpp, then scale and store.
#include "check.cuh"
#include "dsv4/cuda/hadamard.hpp"
#include "dsv4/ref/hadamard.hpp"

namespace dsv4::cuda {
namespace {

constexpr std::int64_t kMaxN = 8192;  // 32 KiB of fp32 shared memory per block, under the 48 KiB default

template <class TIn, class TOut>
__global__ void hadamard_kernel(view<const TIn, 2> x, view<TOut, 2> y, float scale) {
  extern __shared__ float v[];
  const std::int64_t n = x.size(1);
  for (std::int64_t r = blockIdx.x; r < x.size(0); r += gridDim.x) {
    for (std::int64_t j = threadIdx.x; j < n; j += blockDim.x) v[j] = to_f32(x(r, j));
    __syncthreads();
    for (std::int64_t h = 1; h < n; h *= 2) {
      for (std::int64_t p = threadIdx.x; p < n / 2; p += blockDim.x) {
        const std::int64_t j = (p / h) * 2 * h + (p % h);  // first index of the p-th pair of this stage
        const float a = v[j], b = v[j + h];
        v[j] = a + b;
        v[j + h] = a - b;
      }
      __syncthreads();
    }
    for (std::int64_t j = threadIdx.x; j < n; j += blockDim.x) y(r, j) = from_f32<TOut>(v[j] * scale);
    __syncthreads();
  }
}

}  // namespace

template <class TIn, class TOut>
void hadamard(view<const TIn, 2> x, view<TOut, 2> y, const exec& ex) {
  const std::int64_t n = x.size(1);
  DSV4_CHECK(n <= kMaxN, "hadamard", "the CUDA backend handles rows of at most ", kMaxN, " values, got ", n);
  if (x.size(0) == 0 || n == 0) return;
  const cudaStream_t s = detail::stream_of(ex);
  const unsigned threads = static_cast<unsigned>(n / 2 < 256 ? (n / 2 < 32 ? 32 : n / 2) : 256);
  const unsigned blocks = static_cast<unsigned>(x.size(0) < 65535 ? x.size(0) : 65535);
  hadamard_kernel<<<blocks, threads, n * sizeof(float), s>>>(x, y, ref::hadamard_scale(n));
  DSV4_CUDA_CHECK(cudaGetLastError());
  DSV4_CUDA_CHECK(cudaStreamSynchronize(s));
}

template void hadamard<float, float>(view<const float, 2>, view<float, 2>, const exec&);
template void hadamard<float, bf16>(view<const float, 2>, view<bf16, 2>, const exec&);
template void hadamard<bf16, float>(view<const bf16, 2>, view<float, 2>, const exec&);
template void hadamard<bf16, bf16>(view<const bf16, 2>, view<bf16, 2>, const exec&);

}  // namespace dsv4::cuda
