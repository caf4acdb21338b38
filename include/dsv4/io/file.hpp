// dsv4/io/file.hpp — opening files that come from users without trusting them.
//
// Everything dsv4 reads from a model directory goes through here:
//   * open_regular() opens with O_NONBLOCK, so a FIFO, a socket or a device never blocks the open; it then
//     refuses anything that is not a regular file (a symlink to /dev/zero is a character device: refused);
//   * read_text_file() reads a whole small file with a size cap (config.json, model.safetensors.index.json), and
//     never more than the cap even if the file grows while it is read;
//   * mapped files register their address range so that install_sigbus_handler() can turn the SIGBUS of a file
//     truncated while mapped into a one-line message naming the file (see the README, "What is safe with mmap").
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

namespace dsv4::io {

// Size caps (documented in the README): config.json is ~2 KB in the official releases; the V4-Pro index is ~12 MB.
inline constexpr std::uint64_t kMaxConfigBytes = 1u << 20;          // 1 MiB
inline constexpr std::uint64_t kMaxIndexBytes = 100'000'000;        // the safetensors header limit, reused

// A read-only descriptor of a regular file and its size; closed at scope exit. Errors name `op` and the path.
struct regular_file {
  int fd = -1;
  std::uint64_t size = 0;
  regular_file(const std::filesystem::path& p, const char* op);
  ~regular_file();
  regular_file(const regular_file&) = delete;
  regular_file& operator=(const regular_file&) = delete;
};

// The whole file as bytes; an error when it is not a regular file or larger than max_bytes.
std::string read_text_file(const std::filesystem::path& p, std::uint64_t max_bytes, const char* op);

// Mappings the SIGBUS handler knows about (a fixed table, async-signal-safe to read). register returns a slot
// (or -1 when the table is full: that mapping then just is not named by the handler).
int register_mapping(const void* base, std::size_t len, const std::filesystem::path& p);
void unregister_mapping(int slot);

// Opt-in, process-wide (a library must not take signals from its host; the dsv4 tool calls it): a SIGBUS whose
// address lies in a registered mapping prints "dsv4: <file>: ... truncated or changed while mapped" and exits with
// status 1; any other SIGBUS gets the default action. Idempotent.
void install_sigbus_handler();

}  // namespace dsv4::io
