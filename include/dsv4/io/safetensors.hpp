// dsv4/io/safetensors.hpp — lazy, validated reading (and writing) of safetensors checkpoints.
//
// File layout (the safetensors format): u64 little-endian N, then N bytes of JSON header
// {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}},
// then the data section; offsets are relative to the data section.
//
// Opening reads only headers (one pread of 8 + N bytes per file). The data is mmap'ed read-only on the first
// tensor access to that file, so opening the 46 shards of V4-Flash (160 GB) costs a few MB of reads and no data;
// pages come in when a block touches them. Views handed out point into that read-only mapping: never write
// through them.
//
// Every header is fully validated before use, and each problem is a dsv4::error("safetensors", "<file>: ...")
// naming the file, the tensor and the rule: length bounds (N >= 2, N <= 100 MB, 8 + N <= file size), well-formed
// JSON object with no NUL byte (the JSON lexer would stop at one) nested at most 16 deep, no duplicate names, known
// dtype strings, shape entries non-negative integers whose product (in order, as the reference reader computes it)
// fits int64, data_offsets two integers with begin <= end <= data size, end - begin == product(shape) · itemsize
// (overflow-checked), tensors neither overlapping nor leaving gaps, and the data section fully covered (as the
// reference implementation requires). The parser is a one-pass SAX handler: linear in the header size. A sharded
// checkpoint (model.safetensors.index.json, at most 100 MB) is checked for shards outside the directory, names
// mapped to shards that lack them and names present in two shards. Only regular files are opened (io/file.hpp).
// Names from the files are escaped in messages (detail::printable).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "dsv4/tensor.hpp"

namespace dsv4::io {

// The safetensors dtype strings. F8_E5M2 and the wide or boolean types are parsed (so sizes are validated) but
// cannot be viewed: DeepSeek-V4 checkpoints never use them, and view() refuses them by name.
enum class st_dtype : std::uint8_t { F64, F32, F16, BF16, F8_E4M3, F8_E5M2, F8_E8M0, I64, I32, I16, I8, U64, U32, U16,
                                     U8, BOOL };
const char* st_dtype_name(st_dtype t);
int st_dtype_size(st_dtype t);  // bytes per element
std::optional<st_dtype> parse_st_dtype(std::string_view s);
// The dsv4 dtype a stored type is viewed as (F8_E8M0 -> ue8m0, F8_E4M3 -> fp8_e4m3, ...), or nothing.
std::optional<dtype> to_dtype(st_dtype t);
st_dtype from_dtype(dtype t);  // error for fp4 (stored as I8 bytes by the checkpoints) and other unmapped types

struct tensor_record {
  std::string name;
  st_dtype dt = st_dtype::F32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;  // byte range inside the data section
  std::int64_t numel() const;
  std::uint64_t nbytes() const { return end - begin; }
};

struct header {
  std::vector<tensor_record> tensors;  // in header order
  std::map<std::string, std::string> metadata;
  std::uint64_t header_len = 0;        // N
};

// Validates header JSON `text` (N bytes) for a data section of `data_bytes`; `where` names the file in messages.
header parse_header(std::string_view text, std::uint64_t data_bytes, std::string_view where);
// Validates a whole file held in memory (length prefix + header + data): the fuzz target.
header parse_file_bytes(std::span<const std::byte> file, std::string_view where);

class safetensors_file {
 public:
  explicit safetensors_file(std::filesystem::path path);  // reads and validates the header only
  ~safetensors_file();
  safetensors_file(const safetensors_file&) = delete;
  safetensors_file& operator=(const safetensors_file&) = delete;

  const std::filesystem::path& path() const { return path_; }
  const header& hdr() const { return hdr_; }
  const tensor_record* find(std::string_view name) const;
  std::uint64_t file_size() const { return size_; }
  std::uint64_t header_bytes_read() const { return 8 + hdr_.header_len; }
  bool mapped() const;

  // The tensor's bytes, mapping the file on first use (thread-safe).
  std::span<const std::byte> bytes(const tensor_record& t) const;
  // A read-only tensor_view in the stored dtype (see to_dtype); errors for types dsv4 cannot view and rank > 6.
  // A tensor whose data does not start at a multiple of its element size (the format allows it; the reference
  // writer never does it) is copied once into aligned memory owned by this file, and the view shows the copy.
  tensor_view view(const tensor_record& t) const;
  bool aligned(const tensor_record& t) const;  // its bytes start at a multiple of its element size
  // Misaligned tensors copied so far, and their bytes.
  std::size_t copied_tensors() const;
  std::uint64_t copied_bytes() const;

 private:
  const std::byte* map() const;
  std::filesystem::path path_;
  std::uint64_t size_ = 0;
  header hdr_;
  std::unordered_map<std::string, std::size_t> by_name_;
  struct mapping;
  std::unique_ptr<mapping> map_;
};

// A checkpoint: one .safetensors file, or a directory with model.safetensors.index.json (sharded) or
// model.safetensors. Tensor names are unique across shards.
class checkpoint {
 public:
  static checkpoint open(const std::filesystem::path& path);

  const std::filesystem::path& root() const { return root_; }
  bool contains(std::string_view name) const;
  const tensor_record* find(std::string_view name) const;  // nullptr when absent
  tensor_view view(std::string_view name) const;           // error naming the checkpoint when absent
  std::span<const std::byte> bytes(std::string_view name) const;
  const safetensors_file& shard_of(std::string_view name) const;
  std::vector<std::string> names() const;                  // sorted
  std::size_t shard_count() const { return shards_.size(); }
  const safetensors_file& shard(std::size_t i) const { return *shards_[i]; }

  // Laziness, observable: bytes read so far (headers + index) and how many shards have been mapped.
  std::uint64_t header_bytes_read() const;
  std::size_t mapped_shards() const;
  // Misaligned tensors copied into aligned memory so far (see safetensors_file::view), over all shards.
  std::size_t copied_tensors() const;
  std::uint64_t copied_bytes() const;

 private:
  std::filesystem::path root_;
  std::vector<std::unique_ptr<safetensors_file>> shards_;
  std::map<std::string, std::pair<std::size_t, const tensor_record*>, std::less<>> index_;
  std::uint64_t index_bytes_ = 0;
};

// ---- writing ---------------------------------------------------------------------------------------------------

struct tensor_data {
  std::string name;
  st_dtype dt = st_dtype::F32;
  std::vector<std::int64_t> shape;
  std::vector<std::byte> data;  // product(shape) · itemsize bytes; empty = leave a hole (sparse file, reads as 0)
  std::uint64_t nbytes() const;
};

// Writes one file: data in order of decreasing element size (stable), header padded with spaces to a multiple of 8,
// so every tensor is aligned to its element size and the data section has no gaps (the reference writer's layout).
void write_safetensors(const std::filesystem::path& file, std::span<const tensor_data> tensors,
                       const std::map<std::string, std::string>& metadata = {});
// Consecutive runs [first, last) of `tensors` of at most shard_bytes each (a larger tensor gets a run of its own).
std::vector<std::pair<std::size_t, std::size_t>> plan_shards(std::span<const tensor_data> tensors,
                                                             std::uint64_t shard_bytes);
// Writes model-0000i-of-0000n.safetensors shards of at most `shard_bytes` each (a tensor larger than that gets a
// shard of its own) plus model.safetensors.index.json, the layout of the official checkpoints. Returns the number
// of shards.
std::size_t write_sharded(const std::filesystem::path& dir, std::span<const tensor_data> tensors,
                          std::uint64_t shard_bytes);

}  // namespace dsv4::io
