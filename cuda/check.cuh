// cuda/check.cuh — every CUDA runtime call goes through DSV4_CUDA_CHECK, which turns a failure into dsv4::error.
#pragma once

#include <cuda_runtime.h>

#include "dsv4/error.hpp"
#include "dsv4/exec.hpp"

#define DSV4_CUDA_CHECK(call)                                                                              \
  do {                                                                                                     \
    const cudaError_t dsv4_err_ = (call);                                                                  \
    if (dsv4_err_ != cudaSuccess)                                                                          \
      ::dsv4::detail::fail("cuda", ::dsv4::detail::concat(#call, " failed: ", cudaGetErrorString(dsv4_err_)), \
                           __FILE__, __LINE__);                                                            \
  } while (0)

namespace dsv4::cuda::detail {

inline cudaStream_t stream_of(const exec& ex) { return static_cast<cudaStream_t>(ex.cuda_stream); }

// A per-launch device counter of bad blocks, read back after the stream drains.
struct bad_counter {
  unsigned long long* dev = nullptr;
  explicit bad_counter(cudaStream_t s) : stream(s) {
    DSV4_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&dev), sizeof(unsigned long long), stream));
    DSV4_CUDA_CHECK(cudaMemsetAsync(dev, 0, sizeof(unsigned long long), stream));
  }
  std::int64_t read() {
    unsigned long long host = 0;
    DSV4_CUDA_CHECK(cudaGetLastError());
    DSV4_CUDA_CHECK(cudaMemcpyAsync(&host, dev, sizeof host, cudaMemcpyDeviceToHost, stream));
    DSV4_CUDA_CHECK(cudaStreamSynchronize(stream));
    return static_cast<std::int64_t>(host);
  }
  ~bad_counter() { cudaFreeAsync(dev, stream); }
  bad_counter(const bad_counter&) = delete;
  bad_counter& operator=(const bad_counter&) = delete;
  cudaStream_t stream;
};

inline unsigned blocks_for(std::int64_t work, unsigned threads) {
  const std::int64_t b = (work + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535LL * 16 ? 65535LL * 16 : b));
}

}  // namespace dsv4::cuda::detail
