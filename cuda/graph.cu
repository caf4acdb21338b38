// cuda/graph.cu — stream capture into CUDA graphs and pinned host memory, behind the plain declarations of
// dsv4/cuda/runtime.hpp (dsv4::stream_graph and dsv4::pinned_buffer use them).
#include "check.cuh"
#include "dsv4/cuda/runtime.hpp"

namespace dsv4::cuda {

void* pinned_malloc(std::size_t bytes) {
  void* p = nullptr;
  DSV4_CUDA_CHECK(cudaHostAlloc(&p, bytes, cudaHostAllocPortable));
  return p;
}

void pinned_free(void* p) noexcept { cudaFreeHost(p); }

void* stream_create(int device) {
  int prev = 0;
  DSV4_CUDA_CHECK(cudaGetDevice(&prev));
  DSV4_CUDA_CHECK(cudaSetDevice(device));
  cudaStream_t s = nullptr;
  const cudaError_t e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
  cudaSetDevice(prev);
  DSV4_CUDA_CHECK(e);
  return s;
}

void stream_destroy(void* stream) noexcept {
  if (stream) cudaStreamDestroy(static_cast<cudaStream_t>(stream));
}

bool stream_capturing(void* stream) {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  DSV4_CUDA_CHECK(cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &st));
  return st == cudaStreamCaptureStatusActive;
}

void graph_begin(void* stream) {
  DSV4_CHECK(stream != nullptr, "stream_graph", "recording needs a stream of the caller's (not the legacy stream)");
  // relaxed: a step may still allocate (its arena growing) while it records; nothing in it synchronizes
  DSV4_CUDA_CHECK(cudaStreamBeginCapture(static_cast<cudaStream_t>(stream), cudaStreamCaptureModeRelaxed));
}

void* graph_end(void* stream) {
  cudaGraph_t g = nullptr;
  DSV4_CUDA_CHECK(cudaStreamEndCapture(static_cast<cudaStream_t>(stream), &g));
  return g;
}

void graph_abort(void* stream) noexcept {
  cudaGraph_t g = nullptr;
  if (cudaStreamEndCapture(static_cast<cudaStream_t>(stream), &g) == cudaSuccess && g) cudaGraphDestroy(g);
  cudaGetLastError();  // an invalidated capture leaves a sticky-free error behind: clear it
}

bool graph_update(void* exec, void* graph) {
  cudaGraphExecUpdateResultInfo info{};
  const cudaError_t e = cudaGraphExecUpdate(static_cast<cudaGraphExec_t>(exec), static_cast<cudaGraph_t>(graph), &info);
  if (e == cudaSuccess) return true;
  cudaGetLastError();  // a topology change: the caller instantiates anew
  return false;
}

void* graph_instantiate(void* graph) {
  cudaGraphExec_t x = nullptr;
  DSV4_CUDA_CHECK(cudaGraphInstantiate(&x, static_cast<cudaGraph_t>(graph), 0));
  return x;
}

void graph_launch(void* exec, void* stream) {
  DSV4_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec), static_cast<cudaStream_t>(stream)));
}

void graph_destroy(void* graph) noexcept {
  if (graph) cudaGraphDestroy(static_cast<cudaGraph_t>(graph));
}

void graph_exec_destroy(void* exec) noexcept {
  if (exec) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec));
}

}  // namespace dsv4::cuda
