// tests/cuda_harness.hpp — what the CUDA test files share: the device, copies back, and a stream with a status word
// for check_policy::deferred. Test code may allocate and synchronize (the library may not).
#pragma once

#include <cuda_runtime.h>

#include "harness.hpp"

namespace dsv4::test {

inline const device kGpu = device::cuda(0);

inline buffer to_host(const buffer& d) { return clone_to(d, device::cpu()); }

// A non-blocking stream and a zeroed device status word, released at scope exit (test code may allocate and sync).
struct stream_and_status {
  cudaStream_t stream{};
  std::uint32_t* status = nullptr;
  stream_and_status() {
    REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cudaMalloc(reinterpret_cast<void**>(&status), sizeof(std::uint32_t)) == cudaSuccess);
    REQUIRE(cudaMemset(status, 0, sizeof(std::uint32_t)) == cudaSuccess);
  }
  ~stream_and_status() {
    cudaStreamSynchronize(stream);
    cudaFree(status);
    cudaStreamDestroy(stream);
  }
  exec deferred() const {
    exec e;
    e.cuda_stream = stream;
    e.checks = check_policy::deferred;
    e.status = status;
    return e;
  }
  std::uint32_t word() const {
    std::uint32_t w = 0;
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    REQUIRE(cudaMemcpy(&w, status, sizeof w, cudaMemcpyDeviceToHost) == cudaSuccess);
    return w;
  }
};

// Device -> host after the stream has drained (ops::copy itself runs on the legacy stream under the sync policy).
inline std::vector<std::uint8_t> drained_bytes(const buffer& d, cudaStream_t s) {
  REQUIRE(cudaStreamSynchronize(s) == cudaSuccess);
  return bytes_of(to_host(d));
}

// A CUDA graph recorded from what `record` enqueues on `stream` (stream capture, global mode), instantiated once and
// replayed by launch() (which waits for the stream).
struct captured_graph {
  cudaStream_t stream{};
  cudaGraph_t graph{};
  cudaGraphExec_t exe{};
  template <class Record>
  captured_graph(cudaStream_t s, Record&& record) : stream(s) {
    REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal) == cudaSuccess);
    record();
    REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
    REQUIRE(cudaGraphInstantiate(&exe, graph, 0) == cudaSuccess);
  }
  void launch() const {
    REQUIRE(cudaGraphLaunch(exe, stream) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  }
  ~captured_graph() {
    cudaGraphExecDestroy(exe);
    cudaGraphDestroy(graph);
  }
  captured_graph(const captured_graph&) = delete;
  captured_graph& operator=(const captured_graph&) = delete;
};

}  // namespace dsv4::test
