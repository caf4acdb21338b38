// cuda/check.cuh — the execution model of every CUDA op (dsv4/exec.hpp): DSV4_CUDA_CHECK for runtime calls, the
// device guard, the stream and policy checks, and where kernels report what they find (status_ref).
//
// An op builds one `launch` from its exec and its tensors' device, launches its kernels on launch.stream() with
// launch.status(), and ends with launch.finish(). Under check_policy::sync finish() waits for the stream and returns
// the bad-element count (today's contract: the op turns it into a dsv4::error); under deferred and none it only
// checks that the launches were accepted and returns 0, so the op neither allocates, nor synchronizes, nor reads
// device memory: capturable in a CUDA graph. The synchronizing calls live in cuda/status.cu alone (the static check
// in tests/cuda_static_check.cmake holds every other file of the CUDA backend to that).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

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

// Where a kernel reports a finding: `bits` gets the status bit OR-ed in (deferred: the caller's exec::status; sync:
// a host-mapped word of the calling thread), `count` (sync only) how many blocks or values were bad, for the op's
// error message. Both null under check_policy::none.
struct status_ref {
  std::uint32_t* bits = nullptr;
  unsigned long long* count = nullptr;
  __device__ void raise(std::uint32_t bit, unsigned long long n = 1) const {
    if (bits) atomicOr(bits, bit);
    if (count) atomicAdd(count, n);
  }
};

// The sync policy's words of one thread on one device (pinned, mapped: kernels write them, the host reads them
// after the stream drains, no copy). Defined in cuda/status.cu.
struct sync_words {
  std::uint32_t bits;
  std::uint32_t pad;
  unsigned long long count;
};
sync_words* thread_sync_words(int device);
// Under sync: wait for the stream, surface asynchronous faults, return the count. Defined in cuda/status.cu.
std::int64_t sync_finish(const char* op, cudaStream_t s, sync_words* w);

class launch {
 public:
  // Validates ex for op on exec::device (the ops layer sets it to the tensors' device; -1 = the current device):
  // a stream must belong to it; deferred needs exec::status; deferred and none need a stream of the caller's.
  // Makes the device current until destruction (then restores the caller's).
  launch(const char* op, const exec& ex);
  ~launch();
  launch(const launch&) = delete;
  launch& operator=(const launch&) = delete;

  cudaStream_t stream() const { return stream_; }
  status_ref status() const { return status_; }
  // Call after the kernels: a rejected launch throws (naming op); under sync, waits and returns the count.
  std::int64_t finish();

 private:
  const char* op_;
  cudaStream_t stream_;
  check_policy policy_;
  status_ref status_{};
  sync_words* words_ = nullptr;
  int prev_device_ = -1, device_ = 0;
};

// Grid size for `work` items of `threads` threads each, capped (grid-stride loops cover the rest).
inline unsigned blocks_for(std::int64_t work, unsigned threads) {
  const std::int64_t b = (work + threads - 1) / threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535LL * 16 ? 65535LL * 16 : b));
}

}  // namespace dsv4::cuda::detail
