// dsv4/graph.hpp — two services for running dsv4 on a CUDA stream the way engines do: page-locked host memory (what
// asynchronous host -> device copies need) and a CUDA graph recorded from a stream and kept executable.
//
// stream_graph: record(f) captures what f enqueues on the stream (relaxed capture mode: memory may still be
// allocated while recording, nothing may synchronize) into a graph — the host code in f runs, no GPU work does. The
// first recording is instantiated; each later one updates the executable graph in place (cudaGraphExecUpdate: new
// kernel arguments, grid sizes, copy sources, as a decode step's lengths, block tables and slot lists change), or is
// instantiated anew when the topology changed. launch() enqueues the executable graph on the stream.
// Without a CUDA build (or device) these are errors; pinned_buffer falls back to ordinary host memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <utility>

#include "dsv4/buffer.hpp"
#include "dsv4/exec.hpp"

namespace dsv4 {

class pinned_buffer {
 public:
  pinned_buffer() = default;
  explicit pinned_buffer(std::size_t bytes);
  ~pinned_buffer();
  pinned_buffer(pinned_buffer&& o) noexcept : p_(o.p_), n_(o.n_), pinned_(o.pinned_) { o.p_ = nullptr, o.n_ = 0; }
  pinned_buffer& operator=(pinned_buffer&& o) noexcept {
    pinned_buffer t(std::move(o));
    std::swap(p_, t.p_), std::swap(n_, t.n_), std::swap(pinned_, t.pinned_);
    return *this;
  }
  pinned_buffer(const pinned_buffer&) = delete;
  pinned_buffer& operator=(const pinned_buffer&) = delete;
  void* data() const { return p_; }
  std::size_t bytes() const { return n_; }

 private:
  void* p_ = nullptr;
  std::size_t n_ = 0;
  bool pinned_ = false;
};

// What a tool needs to run dsv4 the deferred way on a device: a non-blocking stream and a zeroed status word, owned;
// exec() is check_policy::deferred on them. The stream is drained before it is destroyed.
class device_stream {
 public:
  explicit device_stream(int device = 0);
  ~device_stream();
  device_stream(const device_stream&) = delete;
  device_stream& operator=(const device_stream&) = delete;
  exec deferred() const;
  void* stream() const { return stream_; }

 private:
  int device_;
  void* stream_ = nullptr;
  buffer status_;
};

// Whether a CUDA stream is recording into a graph (false for the legacy stream, or without CUDA).
bool stream_capturing(void* cuda_stream);

class stream_graph {
 public:
  explicit stream_graph(void* cuda_stream);
  ~stream_graph();
  stream_graph(const stream_graph&) = delete;
  stream_graph& operator=(const stream_graph&) = delete;

  template <class F>
  void record(F&& f) {
    begin();
    try {
      f();
    } catch (...) {
      abort();
      throw;
    }
    end();
  }
  void launch() const;
  bool ready() const { return exec_ != nullptr; }
  std::int64_t instantiations() const { return instantiations_; }  // recordings that needed a new executable graph
  std::int64_t updates() const { return updates_; }                // recordings applied in place

 private:
  void begin();
  void end();
  void abort() noexcept;
  void* stream_;
  void* exec_ = nullptr;
  std::int64_t instantiations_ = 0, updates_ = 0;
};

}  // namespace dsv4
