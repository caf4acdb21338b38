// dsv4/exec.hpp — how an op should run: which backend, how many CPU threads, which CUDA stream.
#pragma once

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

struct exec {
  backend prefer = backend::automatic;
  int threads = 0;               // CPU backend: worker threads in [1, kMaxThreads] (0 = oneTBB's default, all cores)
  void* cuda_stream = nullptr;   // CUDA backend: a cudaStream_t (nullptr = the default stream)
};

}  // namespace dsv4
