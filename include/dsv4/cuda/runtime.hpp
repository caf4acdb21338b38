// dsv4/cuda/runtime.hpp — the few CUDA runtime services dsv4 needs, behind plain declarations (no
// cuda_runtime.h here, so host code compiles without the toolkit). Defined in cuda/runtime.cu; every CUDA error is
// turned into a dsv4::error naming the call.
#pragma once

#include <cstddef>

#include "dsv4/exec.hpp"

namespace dsv4::cuda {

// Devices visible to the runtime; 0 when there is no driver or no GPU (never throws).
int device_count() noexcept;

void* device_malloc(std::size_t bytes, int device);
void device_free(void* p) noexcept;

// Copy between any two pointers (host or device, unified addressing) on ex.cuda_stream. Under check_policy::sync it
// then waits for the stream (a buffer copy a tool reads at once); under deferred / none it only enqueues, and host
// memory must then be pinned (a pageable copy would synchronize): anything else is an error.
void copy_bytes(void* dst, const void* src, std::size_t bytes, const exec& ex);

// Page-locked host memory (cudaHostAlloc, portable), for asynchronous copies; pinned_free(nullptr) is a no-op.
// Defined in cuda/graph.cu, as are the graph calls below.
void* pinned_malloc(std::size_t bytes);
void pinned_free(void* p) noexcept;

// A non-blocking stream of `device` (stream_destroy waits for nothing: the caller drains it first).
void* stream_create(int device);
void stream_destroy(void* stream) noexcept;

// Whether `stream` is recording into a graph (cudaStreamIsCapturing).
bool stream_capturing(void* stream);

// Stream capture (relaxed mode) into a graph, and executable graphs kept up to date: graph_update applies a newly
// recorded graph of the same topology to an executable one (false: the topology changed, instantiate anew).
void graph_begin(void* stream);
void* graph_end(void* stream);
void graph_abort(void* stream) noexcept;
bool graph_update(void* exec, void* graph);
void* graph_instantiate(void* graph);
void graph_launch(void* exec, void* stream);
void graph_destroy(void* graph) noexcept;
void graph_exec_destroy(void* exec) noexcept;

// check_status (dsv4/exec.hpp) for the CUDA backend: waits for ex.cuda_stream, reads and clears *ex.status, throws
// naming the bits. Defined in cuda/status.cu.
void check_status_word(const exec& ex);

}  // namespace dsv4::cuda
