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
  constexpr const char* op = "copy";
  int device = -1;
  for (const void* p : {static_cast<const void*>(dst), src}) {
    cudaPointerAttributes a{};
    DSV4_CUDA_CHECK(cudaPointerGetAttributes(&a, p));
    if (a.type == cudaMemoryTypeDevice && device < 0) device = a.device;
    DSV4_CHECK(ex.checks == check_policy::sync || a.type != cudaMemoryTypeUnregistered, op,
               "an asynchronous copy (check_policy deferred / none) needs pinned host memory: pageable memory "
               "would make the copy synchronize");
  }
  exec on = ex;
  if (on.device < 0) on.device = device;  // -1 (host to host through the runtime) stays the current device
  detail::launch l(op, on);
  DSV4_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, l.stream()));
  l.finish();
}

}  // namespace dsv4::cuda
