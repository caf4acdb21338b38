// cuda/status.cu — the launch context of every CUDA op (device guard, stream and policy checks) and the only
// synchronizing code of the CUDA backend: the sync policy's epilogue and check_status (dsv4/exec.hpp).
#include <string>

#include "check.cuh"
#include "dsv4/cuda/runtime.hpp"

namespace dsv4::cuda {
namespace detail {
namespace {

// One pinned, mapped sync_words per (thread, device), made on the thread's first sync-policy op on that device and
// kept until the thread exits. Kernels reach it through its device alias (unified addressing).
struct thread_words {
  static constexpr int kDevices = 64;
  sync_words* host[kDevices] = {};
  ~thread_words();
};

thread_words::~thread_words() {
  for (sync_words* w : host)
    if (w) cudaFreeHost(w);  // at process exit the runtime may be gone already: nothing to report to
}

std::string bit_names(std::uint32_t bits) {
  std::string s;
  auto add = [&](std::uint32_t b, const char* name) {
    if (bits & b) s += (s.empty() ? "" : ", ") + std::string(name);
  };
  add(status_nonfinite_input, "non-finite input (inf or NaN in a quantizer block)");
  add(status_nan_code, "NaN weight code or NaN scale");
  add(status_index_oob, "index out of range");
  const std::uint32_t known = status_nonfinite_input | status_nan_code | status_index_oob;
  if (bits & ~known) s += (s.empty() ? "" : ", ") + std::string("unknown bits ") + std::to_string(bits & ~known);
  return s;
}

}  // namespace

sync_words* thread_sync_words(int device) {
  thread_local thread_words tw;
  DSV4_CHECK(device >= 0 && device < thread_words::kDevices, "cuda", "device ", device, " is beyond the ",
             thread_words::kDevices, " devices the sync policy keeps words for");
  sync_words*& w = tw.host[device];
  if (!w) {
    DSV4_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&w), sizeof(sync_words),
                                  cudaHostAllocMapped | cudaHostAllocPortable));
  }
  return w;
}

std::int64_t sync_finish(const char* op, cudaStream_t s, sync_words* w) {
  const cudaError_t e = cudaStreamSynchronize(s);
  DSV4_CHECK(e == cudaSuccess, op, "the CUDA stream failed: ", cudaGetErrorString(e),
             " (a fault inside a kernel leaves the CUDA context unusable)");
  return w ? static_cast<std::int64_t>(w->count) : 0;
}

launch::launch(const char* op, const exec& ex)
    : op_(op), stream_(static_cast<cudaStream_t>(ex.cuda_stream)), policy_(ex.checks) {
  DSV4_CUDA_CHECK(cudaGetDevice(&prev_device_));
  device_ = ex.device >= 0 ? ex.device : prev_device_;
  DSV4_CHECK(policy_ == check_policy::sync || stream_ != nullptr, op,
             "check_policy deferred / none needs exec.cuda_stream: the legacy default stream (nullptr) synchronizes "
             "with every blocking stream of the process");
  DSV4_CHECK(policy_ != check_policy::deferred || ex.status != nullptr, op,
             "check_policy deferred needs exec.status (a device word the kernels report into)");
  DSV4_CHECK(policy_ != check_policy::deferred || reinterpret_cast<std::uintptr_t>(ex.status) % 4 == 0, op,
             "exec.status must be 4-byte aligned");
  DSV4_CHECK(device_ < device_count(), op, "the tensors live on cuda:", device_, " but ", device_count(),
             " CUDA device(s) are visible");
  if (stream_ != nullptr) {
    int sd = -1;
    const cudaError_t e = cudaStreamGetDevice(stream_, &sd);
    if (e != cudaSuccess) cudaGetLastError();
    DSV4_CHECK(e == cudaSuccess && sd == device_, op, "exec.cuda_stream ",
               e == cudaSuccess ? "belongs to cuda:" + std::to_string(sd) : std::string("is not a valid stream"),
               " but the tensors live on cuda:", device_);
  }
  if (policy_ == check_policy::sync) words_ = thread_sync_words(device_);
  // Everything that can throw is above: from here the destructor restores the caller's device.
  if (prev_device_ != device_) DSV4_CUDA_CHECK(cudaSetDevice(device_));
  switch (policy_) {
    case check_policy::sync:
      words_->bits = 0;
      words_->count = 0;
      status_.bits = &words_->bits;
      status_.count = &words_->count;
      break;
    case check_policy::deferred:
      status_.bits = ex.status;
      break;
    case check_policy::none:
      break;
  }
}

launch::~launch() {
  if (prev_device_ >= 0 && prev_device_ != device_) cudaSetDevice(prev_device_);
}

std::int64_t launch::finish() {
  const cudaError_t e = cudaPeekAtLastError();
  if (e != cudaSuccess) {
    cudaGetLastError();  // a rejected launch is not sticky: clear it once it is reported
    DSV4_FAIL(op_, "kernel launch failed: ", cudaGetErrorString(e));
  }
  return policy_ == check_policy::sync ? sync_finish(op_, stream_, words_) : 0;
}

}  // namespace detail

void check_status_word(const exec& ex) {
  constexpr const char* op = "check_status";
  DSV4_CHECK(ex.status != nullptr, op, "exec.status is null: nothing to check");
  cudaPointerAttributes attr{};
  DSV4_CUDA_CHECK(cudaPointerGetAttributes(&attr, ex.status));
  DSV4_CHECK(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged, op,
             "exec.status must point to device memory");
  const int dev = ex.device >= 0 ? ex.device : attr.device;
  int prev = 0;
  DSV4_CUDA_CHECK(cudaGetDevice(&prev));
  if (prev != dev) DSV4_CUDA_CHECK(cudaSetDevice(dev));
  struct restore {
    int prev, dev;
    ~restore() {
      if (prev != dev) cudaSetDevice(prev);
    }
  } r{prev, dev};
  const cudaStream_t s = static_cast<cudaStream_t>(ex.cuda_stream);
  std::uint32_t bits = 0;
  DSV4_CUDA_CHECK(cudaMemcpyAsync(&bits, ex.status, sizeof bits, cudaMemcpyDeviceToHost, s));
  DSV4_CUDA_CHECK(cudaStreamSynchronize(s));
  if (bits == 0) return;
  DSV4_CUDA_CHECK(cudaMemsetAsync(ex.status, 0, sizeof bits, s));
  DSV4_FAIL(op, "the kernels since the last check reported: ", detail::bit_names(bits), " (status word ", bits,
            ", now cleared)");
}

}  // namespace dsv4::cuda
