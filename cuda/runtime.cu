// cuda/runtime.cu — device memory and copies for dsv4::buffer and ops::copy.
#include "check.cuh"
#include "dsv4/cuda/runtime.hpp"

namespace dsv4::cuda {

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver / no device" error
    return 0;
  }
  return n;
}

void* device_malloc(std::size_t bytes, int device) {
  int prev = 0;
  DSV4_CUDA_CHECK(cudaGetDevice(&prev));
  DSV4_CUDA_CHECK(cudaSetDevice(device));
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  cudaSetDevice(prev);
  DSV4_CUDA_CHECK(e);
  return p;
}

void device_free(void* p) noexcept { cudaFree(p); }

void copy_bytes(void* dst, const void* src, std::size_t bytes, const exec& ex) {
  const cudaStream_t s = detail::stream_of(ex);
  DSV4_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s));
  DSV4_CUDA_CHECK(cudaStreamSynchronize(s));
}

}  // namespace dsv4::cuda
