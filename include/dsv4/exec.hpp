// dsv4/exec.hpp — how an op should run: which backend, how many CPU threads, which CUDA stream and device, how the
// CUDA backend reports errors, and which device scratch it may use.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dsv4 {

// The backends every op offers. `automatic` picks, in order: CUDA when the tensors live on a CUDA device, else the
// CPU SIMD backend, else the scalar reference. Naming one forces it (an error if it cannot take the input).
enum class backend : std::uint8_t { automatic, ref, cpu, cuda };

inline constexpr const char* backend_name(backend b) {
  switch (b) {
    case backend::automatic: return "automatic";
    case backend::ref: return "ref";
    case backend::cpu: return "cpu";
    case backend::cuda: return "cuda";
  }
  return "?";
}

// The most CPU worker threads an exec may ask for (every op refuses more, and negative counts, by name).
inline constexpr int kMaxThreads = 1024;

// How a CUDA op reports what its kernels find (bad codes, non-finite input, indices out of range):
//   sync      the op waits for its stream and throws dsv4::error before returning (tools, tests, the CPU-style
//             contract of every op). The one policy that synchronizes; the default.
//   deferred  kernels OR error bits into the caller's device word exec::status and the op returns at once: no
//             allocation, no synchronization, no host read of device memory, so it can be captured in a CUDA graph
//             and overlapped on an engine's streams. check_status(ex) reads the word when the caller chooses.
//   none      no checks at all (exec::status unused).
// CPU and ref backends ignore the policy: they check synchronously, as they always did.
enum class check_policy : std::uint8_t { sync, deferred, none };

// The bits kernels OR into exec::status (check_status names them in its error).
enum status_bits : std::uint32_t {
  status_nonfinite_input = 1u << 0,  // a quantizer block held inf or NaN (its codes are NaN codes, its scale 0xFF)
  status_nan_code = 1u << 1,         // a NaN weight code or a NaN (0xFF) scale was decoded
  status_index_oob = 1u << 2,        // an index (token id, expert, slot, page) outside its range was skipped
};

// Device scratch owned by the caller (an engine's allocator, a CUDA graph's static pool). Ops that need scratch
// say how much through <op>_workspace_bytes(...) and never allocate it themselves.
struct workspace {
  void* data = nullptr;  // device memory, 256-byte aligned
  std::size_t bytes = 0;
};

struct exec {
  backend prefer = backend::automatic;
  int threads = 0;               // CPU backend: worker threads in [1, kMaxThreads] (0 = oneTBB's default, all cores)
  // CUDA backend: a cudaStream_t. nullptr (the legacy default stream, which synchronizes with every blocking stream
  // of the process) is accepted under check_policy::sync only; deferred and none need a stream of the caller's.
  void* cuda_stream = nullptr;
  // CUDA backend: the device the op runs on. -1 = the device of its tensors. Every launcher makes it current for the
  // launch (and restores the caller's), and refuses tensors or a stream of another device.
  int device = -1;
  check_policy checks = check_policy::sync;
  std::uint32_t* status = nullptr;  // device word for check_policy::deferred (4-byte aligned; zero it before use)
  workspace scratch{};              // CUDA backend: see workspace
};

// Host side of check_policy::deferred: waits for ex.cuda_stream, reads and clears *ex.status, and throws dsv4::error
// naming the bits found (nothing when the word is zero). The one call of the CUDA backend, with the sync policy's
// own epilogue, that synchronizes. Defined in the library (an error without a CUDA build).
void check_status(const exec& ex);

}  // namespace dsv4
