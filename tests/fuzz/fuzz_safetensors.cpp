// libFuzzer harness: a whole safetensors file image (8-byte length, header, data) through the header parser. An
// accepted image must describe tensors inside it, so every tensor's byte range is read back (ASan checks the
// bounds); a rejected one must throw dsv4::error and nothing else.
#include <cstddef>
#include <cstdint>
#include <span>

#include "dsv4/error.hpp"
#include "dsv4/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> img(reinterpret_cast<const std::byte*>(data), size);
  try {
    const dsv4::io::header h = dsv4::io::parse_file_bytes(img, "fuzz.safetensors");
    const std::size_t base = 8 + static_cast<std::size_t>(h.header_len);
    unsigned sum = 0;
    for (const auto& t : h.tensors) {
      (void)t.numel();
      for (std::uint64_t b = t.begin; b < t.end; ++b) sum += static_cast<unsigned>(img[base + b]);
    }
    volatile unsigned sink = sum;
    (void)sink;
  } catch (const dsv4::error&) {
  }
  return 0;
}
