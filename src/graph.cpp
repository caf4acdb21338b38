// src/graph.cpp — pinned_buffer and stream_graph (dsv4/graph.hpp) over cuda/graph.cu.
#include "dsv4/graph.hpp"

#include <cstdlib>

#include "dsv4/error.hpp"
#include "dsv4/ops/memory.hpp"
#if DSV4_WITH_CUDA
#include "dsv4/cuda/runtime.hpp"
#endif

namespace dsv4 {

pinned_buffer::pinned_buffer(std::size_t bytes) : n_(bytes) {
#if DSV4_WITH_CUDA
  if (cuda::device_count() > 0) {
    p_ = cuda::pinned_malloc(bytes > 0 ? bytes : 1);
    pinned_ = true;
    return;
  }
#endif
  p_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
  DSV4_CHECK(p_ != nullptr, "pinned_buffer", "out of memory allocating ", bytes, " bytes");
}

pinned_buffer::~pinned_buffer() {
  if (!p_) return;
#if DSV4_WITH_CUDA
  if (pinned_) {
    cuda::pinned_free(p_);
    return;
  }
#endif
  std::free(p_);
}

device_stream::device_stream(int device) : device_(device) {
#if DSV4_WITH_CUDA
  DSV4_CHECK(device >= 0 && device < cuda::device_count(), "device_stream", "CUDA device ", device,
             " is not visible (", cuda::device_count(), " devices)");
  status_ = buffer(dtype::i32, {1}, device::cuda(device));  // the uint32 status word
  const std::int32_t zero = 0;
  ops::copy(tensor_view(const_cast<std::int32_t*>(&zero), dtype::i32, {1}), status_.view());
  stream_ = cuda::stream_create(device);
#else
  DSV4_FAIL("device_stream", "this build of dsv4 has no CUDA backend");
#endif
}

device_stream::~device_stream() {
#if DSV4_WITH_CUDA
  if (!stream_) return;
  try {
    check_status(deferred());  // drains the stream
  } catch (...) {
  }
  cuda::stream_destroy(stream_);
#endif
}

exec device_stream::deferred() const {
  exec e;
  e.cuda_stream = stream_;
  e.device = device_;
  e.checks = check_policy::deferred;
  e.status = static_cast<std::uint32_t*>(status_.data());
  return e;
}

bool stream_capturing(void* cuda_stream) {
#if DSV4_WITH_CUDA
  return cuda_stream != nullptr && cuda::device_count() > 0 && cuda::stream_capturing(cuda_stream);
#else
  (void)cuda_stream;
  return false;
#endif
}

stream_graph::stream_graph(void* cuda_stream) : stream_(cuda_stream) {
  DSV4_CHECK(cuda_stream != nullptr, "stream_graph", "a graph records a stream of the caller's (not the legacy stream)");
#if !DSV4_WITH_CUDA
  DSV4_FAIL("stream_graph", "this build of dsv4 has no CUDA backend");
#endif
}

stream_graph::~stream_graph() {
#if DSV4_WITH_CUDA
  cuda::graph_exec_destroy(exec_);
#endif
}

void stream_graph::begin() {
#if DSV4_WITH_CUDA
  cuda::graph_begin(stream_);
#endif
}

void stream_graph::abort() noexcept {
#if DSV4_WITH_CUDA
  cuda::graph_abort(stream_);
#endif
}

void stream_graph::end() {
#if DSV4_WITH_CUDA
  void* g = cuda::graph_end(stream_);
  struct release {
    void* g;
    ~release() { cuda::graph_destroy(g); }
  } r{g};
  if (exec_ && cuda::graph_update(exec_, g)) {
    ++updates_;
    return;
  }
  cuda::graph_exec_destroy(exec_);
  exec_ = nullptr;
  exec_ = cuda::graph_instantiate(g);
  ++instantiations_;
#endif
}

void stream_graph::launch() const {
  DSV4_CHECK(exec_ != nullptr, "stream_graph", "nothing recorded yet");
#if DSV4_WITH_CUDA
  cuda::graph_launch(exec_, stream_);
#endif
}

}  // namespace dsv4
