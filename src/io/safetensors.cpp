// safetensors: header validation, lazy mmap'ed shards, sharded index, writer.
#include "dsv4/io/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <numeric>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "dsv4/error.hpp"
#include "dsv4/io/file.hpp"
#include "io/json_text.hpp"

namespace dsv4::io {

namespace {

using json = nlohmann::json;
constexpr const char* kOp = "safetensors";
// The reference implementation's header limit (safetensors: MAX_HEADER_SIZE = 100,000,000).
constexpr std::uint64_t kMaxHeader = 100'000'000;
// Nesting deeper than this cannot be a safetensors header (it needs 3 levels); refusing it up front keeps a hostile
// header from driving the JSON parser into deep recursion.
constexpr int kMaxDepth = 16;

struct dtype_row {
  st_dtype t;
  const char* name;
  int size;
};
constexpr dtype_row kDtypes[] = {
    {st_dtype::F64, "F64", 8},         {st_dtype::F32, "F32", 4},         {st_dtype::F16, "F16", 2},
    {st_dtype::BF16, "BF16", 2},       {st_dtype::F8_E4M3, "F8_E4M3", 1}, {st_dtype::F8_E5M2, "F8_E5M2", 1},
    {st_dtype::F8_E8M0, "F8_E8M0", 1}, {st_dtype::I64, "I64", 8},         {st_dtype::I32, "I32", 4},
    {st_dtype::I16, "I16", 2},         {st_dtype::I8, "I8", 1},           {st_dtype::U64, "U64", 8},
    {st_dtype::U32, "U32", 4},         {st_dtype::U16, "U16", 2},         {st_dtype::U8, "U8", 1},
    {st_dtype::BOOL, "BOOL", 1}};

std::string sys_error(const char* what, const std::filesystem::path& p) {
  return detail::concat(detail::printable(p.string(), 400), ": ", what, " failed: ", std::strerror(errno));
}

std::uint64_t read_u64_le(const unsigned char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::uint64_t header_len_checked(std::uint64_t n, std::uint64_t file_size, std::string_view where) {
  DSV4_CHECK(file_size >= 8, kOp, where, ": truncated file (", file_size, " bytes; a safetensors file starts with ",
             "an 8-byte header length)");
  DSV4_CHECK(n >= 2, kOp, where, ": header length ", n, " is too small for a JSON object");
  DSV4_CHECK(n <= kMaxHeader, kOp, where, ": header length ", n, " exceeds the format's limit of ", kMaxHeader,
             " bytes");
  DSV4_CHECK(n <= file_size - 8, kOp, where, ": header length ", n, " runs past the end of the file (",
             file_size, " bytes): truncated or corrupt");
  return n;
}

}  // namespace

const char* st_dtype_name(st_dtype t) {
  for (const auto& r : kDtypes)
    if (r.t == t) return r.name;
  return "?";
}

int st_dtype_size(st_dtype t) {
  for (const auto& r : kDtypes)
    if (r.t == t) return r.size;
  return 0;
}

std::optional<st_dtype> parse_st_dtype(std::string_view s) {
  for (const auto& r : kDtypes)
    if (s == r.name) return r.t;
  return std::nullopt;
}

std::optional<dtype> to_dtype(st_dtype t) {
  switch (t) {
    case st_dtype::F32: return dtype::f32;
    case st_dtype::F16: return dtype::f16;
    case st_dtype::BF16: return dtype::bf16;
    case st_dtype::F8_E4M3: return dtype::fp8_e4m3;
    case st_dtype::F8_E8M0: return dtype::ue8m0;
    case st_dtype::I64: return dtype::i64;
    case st_dtype::I32: return dtype::i32;
    case st_dtype::I8: return dtype::i8;
    case st_dtype::U8: return dtype::u8;
    default: return std::nullopt;
  }
}

st_dtype from_dtype(dtype t) {
  switch (t) {
    case dtype::f32: return st_dtype::F32;
    case dtype::f16: return st_dtype::F16;
    case dtype::bf16: return st_dtype::BF16;
    case dtype::fp8_e4m3: return st_dtype::F8_E4M3;
    case dtype::ue8m0: return st_dtype::F8_E8M0;
    case dtype::i64: return st_dtype::I64;
    case dtype::i32: return st_dtype::I32;
    case dtype::i8: return st_dtype::I8;
    case dtype::u8: return st_dtype::U8;
    case dtype::fp4_e2m1: break;
  }
  DSV4_FAIL(kOp, "dtype ", dtype_name(t), " has no safetensors type (FP4 is stored as I8 bytes, two values each)");
}

std::int64_t tensor_record::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::uint64_t tensor_data::nbytes() const {
  std::uint64_t n = static_cast<std::uint64_t>(st_dtype_size(dt));
  for (auto d : shape) n *= static_cast<std::uint64_t>(d);
  return n;
}

// ---- header validation -------------------------------------------------------------------------------------------

namespace {

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// A SAX handler that builds the header's tensor records in one pass: linear in the header size (the DOM parser with
// a callback rescans each parent object on every close, which made a 69k-tensor header take most of a minute),
// depth-limited, and strict about types. It stops at the first problem and keeps its message.
class header_builder {
 public:
  using json_t = nlohmann::json;
  header_builder(header& h, std::string_view where) : h_(h), where_(where) {}

  std::string error;  // empty while all is well

  bool null() { return scalar("null"); }
  bool boolean(bool v) { return scalar(v ? "true" : "false"); }
  bool number_integer(json_t::number_integer_t v) {
    if (v >= 0) return number_unsigned(static_cast<std::uint64_t>(v));
    return scalar(std::to_string(v));
  }
  bool number_unsigned(json_t::number_unsigned_t v) {
    if (depth_ == 3 && in_array_) {
      if (field_ == field::shape) {
        if (v > static_cast<std::uint64_t>(INT64_MAX))
          return fail("tensor \"", name(), "\" extent ", v, " too large");
        if (cur_.shape.size() >= 64) return fail("tensor \"", name(), "\" has rank > 64");
        cur_.shape.push_back(static_cast<std::int64_t>(v));
        return true;
      }
      if (field_ == field::offsets) {
        if (n_offsets_ >= 2) return fail("tensor \"", name(), "\" needs data_offsets [begin, end]");
        offsets_[n_offsets_++] = v;
        return true;
      }
    }
    return scalar(std::to_string(v));
  }
  bool number_float(json_t::number_float_t, const std::string& text) { return scalar(text); }
  bool string(std::string& v) {
    if (depth_ == 2 && in_tensor_ && field_ == field::dtype) {
      const auto dt = parse_st_dtype(v);
      if (!dt) return fail("tensor \"", name(), "\" has unknown dtype \"", detail::printable(v, 40), "\"");
      cur_.dt = *dt;
      has_dtype_ = true;
      return true;
    }
    if (depth_ == 2 && in_meta_) {
      if (!h_.metadata.emplace(meta_key_, std::move(v)).second)
        return fail("__metadata__ key \"", detail::printable(meta_key_), "\" appears twice");
      return true;
    }
    return scalar(detail::concat('"', detail::printable(v, 40), '"'));
  }
  bool binary(json_t::binary_t&) { return scalar("binary"); }

  bool start_object(std::size_t) {
    if (!enter()) return false;
    if (depth_ == 1) return true;
    if (depth_ == 2) {
      if (key_ == "__metadata__") {
        if (seen_meta_) return fail("\"__metadata__\" appears twice in the header");
        seen_meta_ = in_meta_ = true;
        return true;
      }
      in_tensor_ = true;
      cur_ = tensor_record{};
      cur_.name = key_;
      has_dtype_ = false;
      has_shape_ = false;
      n_offsets_ = 0;
      has_offsets_ = false;
      return true;
    }
    return nested("an object");
  }
  bool key(std::string& k) {
    if (depth_ == 1) {
      key_ = std::move(k);
      return true;
    }
    if (depth_ == 2 && in_meta_) {
      meta_key_ = std::move(k);
      return true;
    }
    if (depth_ == 2 && in_tensor_) {
      field_ = k == "dtype" ? field::dtype : k == "shape" ? field::shape : k == "data_offsets" ? field::offsets
                                                                                             : field::other;
      if ((field_ == field::dtype && has_dtype_) || (field_ == field::shape && has_shape_) ||
          (field_ == field::offsets && has_offsets_))
        return fail("tensor \"", name(), "\" has \"", k, "\" twice");
    }
    return true;
  }
  bool end_object() {
    if (depth_ == 2 && in_meta_) in_meta_ = false;
    else if (depth_ == 2 && in_tensor_ && !finish_tensor()) return false;
    --depth_;
    field_ = field::other;
    return true;
  }
  bool start_array(std::size_t) {
    if (!enter()) return false;
    if (depth_ == 1) return fail("header is not a JSON object");
    if (depth_ == 3 && in_tensor_ && (field_ == field::shape || field_ == field::offsets)) {
      in_array_ = true;
      if (field_ == field::shape) has_shape_ = true;
      else has_offsets_ = true;
      return true;
    }
    return nested("an array");
  }
  bool end_array() {
    if (depth_ == 3) in_array_ = false;
    --depth_;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    if (error.empty()) error = detail::concat(where_, ": header is not valid JSON (", e.what(), ")");
    return false;
  }

 private:
  enum class field { dtype, shape, offsets, other };

  std::string name() const { return detail::printable(cur_.name); }

  template <class... P>
  bool fail(const P&... parts) {
    if (error.empty()) error = detail::concat(where_, ": ", parts...);
    return false;
  }

  bool enter() {
    if (++depth_ > kMaxDepth) return fail("header JSON nests deeper than ", kMaxDepth, " levels");
    return true;
  }

  // A value nested where the format has none: only tolerated inside a tensor's unknown fields (ignored, as the
  // reference reader ignores them).
  bool nested(const char* what) {
    if (in_tensor_ && depth_ >= 3 && field_ == field::other) return true;
    if (depth_ == 2) return fail(key_ == "__metadata__" ? "__metadata__ must be an object of strings"
                                                        : "entry \"" + detail::printable(key_) + "\" is not an object");
    if (in_meta_) return fail("__metadata__[\"", detail::printable(meta_key_), "\"] is not a string");
    if (in_tensor_ && field_ == field::dtype) return fail("tensor \"", name(), "\" has no dtype string");
    if (in_tensor_ && field_ == field::shape) return fail("tensor \"", name(), "\" has shape entry ", what,
                                                          " (expected a non-negative integer)");
    if (in_tensor_ && field_ == field::offsets) return fail("tensor \"", name(), "\" has data offset ", what,
                                                            " (expected a non-negative integer)");
    return fail("unexpected ", what, " in the header");
  }

  // A scalar other than what the position allows.
  bool scalar(const std::string& text) {
    if (depth_ == 0) return fail("header is not a JSON object");
    if (depth_ == 1) return fail(key_ == "__metadata__" ? std::string("__metadata__ must be an object of strings")
                                                        : "entry \"" + detail::printable(key_) + "\" is not an object");
    if (in_meta_ && depth_ == 2) return fail("__metadata__[\"", detail::printable(meta_key_), "\"] is not a string");
    if (in_tensor_ && depth_ == 2 && field_ == field::dtype) return fail("tensor \"", name(), "\" has no dtype string");
    if (in_tensor_ && depth_ == 2 && field_ == field::shape) return fail("tensor \"", name(), "\" has no shape array");
    if (in_tensor_ && depth_ == 2 && field_ == field::offsets)
      return fail("tensor \"", name(), "\" needs data_offsets [begin, end]");
    if (in_tensor_ && depth_ == 3 && in_array_ && field_ == field::shape)
      return fail("tensor \"", name(), "\" has shape entry ", detail::printable(text, 40),
                  " (expected a non-negative integer)");
    if (in_tensor_ && depth_ == 3 && in_array_ && field_ == field::offsets)
      return fail("tensor \"", name(), "\" has data offset ", detail::printable(text, 40),
                  " (expected a non-negative integer)");
    return true;  // inside an ignored field
  }

  bool finish_tensor() {
    in_tensor_ = false;
    tensor_record& t = cur_;
    if (!has_dtype_) return fail("tensor \"", name(), "\" has no dtype string");
    if (!has_shape_) return fail("tensor \"", name(), "\" has no shape array");
    if (!has_offsets_ || n_offsets_ != 2) return fail("tensor \"", name(), "\" needs data_offsets [begin, end]");
    t.begin = offsets_[0];
    t.end = offsets_[1];
    // Elements multiplied in order with an overflow check (as the reference reader does), so even a shape with a 0
    // extent must not overflow before it; then bytes = elements x itemsize.
    std::int64_t elems = 1;
    for (const std::int64_t e : t.shape)
      if (__builtin_mul_overflow(elems, e, &elems))
        return fail("tensor \"", name(), "\" shape ", shape_text(t.shape), " has more than 2^63 elements");
    std::uint64_t bytes = 0;
    const bool overflow =
        __builtin_mul_overflow(static_cast<std::uint64_t>(elems), static_cast<std::uint64_t>(st_dtype_size(t.dt)),
                               &bytes);
    if (t.begin > t.end)
      return fail("tensor \"", name(), "\" has data_offsets [", t.begin, ", ", t.end, "] with begin > end");
    if (t.end > data_bytes_)
      return fail("tensor \"", name(), "\" data_offsets [", t.begin, ", ", t.end, "] run past the data section (",
                  data_bytes_, " bytes): offsets out of range or file truncated");
    if (overflow || bytes != t.end - t.begin)
      return fail("tensor \"", name(), "\" ", st_dtype_name(t.dt), " shape ", shape_text(t.shape), " needs ",
                  overflow ? std::string("more than 2^64") : std::to_string(bytes), " bytes but data_offsets span ",
                  t.end - t.begin);
    h_.tensors.push_back(std::move(t));
    return true;
  }

 public:
  std::uint64_t data_bytes_ = 0;

 private:
  header& h_;
  std::string_view where_;
  int depth_ = 0;
  std::string key_, meta_key_;
  bool in_meta_ = false, in_tensor_ = false, in_array_ = false, seen_meta_ = false;
  field field_ = field::other;
  tensor_record cur_;
  bool has_dtype_ = false, has_shape_ = false, has_offsets_ = false;
  int n_offsets_ = 0;
  std::uint64_t offsets_[2] = {0, 0};
};

}  // namespace

header parse_header(std::string_view text, std::uint64_t data_bytes, std::string_view where) {
  header h;
  h.header_len = text.size();
  DSV4_CHECK(!text.empty() && text.front() == '{', kOp, where, ": header does not start with '{' (not a ",
             "safetensors file, or a corrupt length prefix)");
  // The JSON lexer takes a NUL byte for the end of its input, which would accept whatever follows it; the format
  // allows only JSON and trailing spaces, so any NUL is refused (as the reference reader does).
  DSV4_CHECK(std::memchr(text.data(), '\0', text.size()) == nullptr, kOp, where, ": header holds a NUL byte at ",
             static_cast<const char*>(std::memchr(text.data(), '\0', text.size())) - text.data(),
             " (a safetensors header is JSON padded with spaces)");

  header_builder b(h, where);
  b.data_bytes_ = data_bytes;
  const bool ok = json::sax_parse(text.begin(), text.end(), &b, json::input_format_t::json, /*strict=*/true);
  if (!ok || !b.error.empty()) DSV4_FAIL(kOp, b.error.empty() ? std::string(where) + ": header is not valid JSON"
                                                               : b.error);

  // Duplicate names are legal JSON but ambiguous: sorted once, neighbours compared (n log n).
  {
    std::vector<const tensor_record*> by_name;
    by_name.reserve(h.tensors.size());
    for (const auto& t : h.tensors) by_name.push_back(&t);
    std::sort(by_name.begin(), by_name.end(),
              [](const tensor_record* a, const tensor_record* b) { return a->name < b->name; });
    for (std::size_t i = 1; i < by_name.size(); ++i)
      DSV4_CHECK(by_name[i]->name != by_name[i - 1]->name, kOp, where, ": tensor name \"",
                 detail::printable(by_name[i]->name), "\" appears twice in the header");
  }

  // Non-overlapping and gap-free: sorted by offset, each tensor starts where the previous ended, and the last one
  // ends at the end of the file.
  std::vector<const tensor_record*> order;
  order.reserve(h.tensors.size());
  for (const auto& t : h.tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const tensor_record* a, const tensor_record* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  std::uint64_t pos = 0;
  const tensor_record* prev = nullptr;
  for (const tensor_record* t : order) {
    DSV4_CHECK(t->begin >= pos, kOp, where, ": tensors \"", prev ? detail::printable(prev->name) : "", "\" [",
               prev ? prev->begin : 0, ", ", pos, ") and \"", detail::printable(t->name), "\" [", t->begin, ", ",
               t->end, ") overlap");
    DSV4_CHECK(t->begin == pos, kOp, where, ": bytes [", pos, ", ", t->begin, ") of the data section before \"",
               detail::printable(t->name), "\" belong to no tensor");
    pos = t->end;
    prev = t;
  }
  DSV4_CHECK(pos == data_bytes, kOp, where, ": the data section has ", data_bytes, " bytes but the tensors cover ",
             pos, " (trailing bytes belong to no tensor)");
  return h;
}

header parse_file_bytes(std::span<const std::byte> file, std::string_view where) {
  DSV4_CHECK(file.size() >= 8, kOp, where, ": truncated file (", file.size(), " bytes; a safetensors file starts ",
             "with an 8-byte header length)");
  const std::uint64_t n =
      header_len_checked(read_u64_le(reinterpret_cast<const unsigned char*>(file.data())), file.size(), where);
  const std::string_view text(reinterpret_cast<const char*>(file.data()) + 8, n);
  return parse_header(text, file.size() - 8 - n, where);
}

// ---- one file ------------------------------------------------------------------------------------------------------

struct safetensors_file::mapping {
  std::once_flag once;
  std::atomic<const std::byte*> base{nullptr};
  std::size_t len = 0;
  int slot = -1;  // in the SIGBUS handler's table
  // Misaligned tensors, copied once into aligned memory (header index -> copy).
  std::mutex copies_mu;
  std::map<std::size_t, std::unique_ptr<std::byte[], void (*)(void*)>> copies;
  std::atomic<std::uint64_t> copied_bytes{0};
};

safetensors_file::safetensors_file(std::filesystem::path path) : path_(std::move(path)), map_(new mapping) {
  const std::string where = detail::printable(path_.string(), 400);
  const regular_file file(path_, kOp);
  const int fd = file.fd;
  size_ = file.size;
  DSV4_CHECK(size_ >= 8, kOp, where, ": truncated file (", size_, " bytes; a safetensors file starts with an ",
             "8-byte header length)");
  unsigned char len[8];
  DSV4_CHECK(::pread(fd, len, 8, 0) == 8, kOp, sys_error("read", path_));
  const std::uint64_t n = header_len_checked(read_u64_le(len), size_, where);
  std::string text(n, '\0');
  std::uint64_t got = 0;
  while (got < n) {
    const ssize_t r = ::pread(fd, text.data() + got, n - got, static_cast<off_t>(8 + got));
    DSV4_CHECK(r > 0, kOp, r < 0 ? sys_error("read", path_) : where + ": unexpected end of file in the header");
    got += static_cast<std::uint64_t>(r);
  }
  hdr_ = parse_header(text, size_ - 8 - n, where);
  by_name_.reserve(hdr_.tensors.size());
  for (std::size_t i = 0; i < hdr_.tensors.size(); ++i) by_name_.emplace(hdr_.tensors[i].name, i);
}

safetensors_file::~safetensors_file() {
  if (const std::byte* b = map_->base.load()) {
    unregister_mapping(map_->slot);
    ::munmap(const_cast<std::byte*>(b), map_->len);
  }
}

const tensor_record* safetensors_file::find(std::string_view name) const {
  const auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &hdr_.tensors[it->second];
}

bool safetensors_file::mapped() const { return map_->base.load() != nullptr; }

const std::byte* safetensors_file::map() const {
  std::call_once(map_->once, [&] {
    const regular_file file(path_, kOp);
    DSV4_CHECK(file.size == size_, kOp, detail::printable(path_.string(), 400), ": file changed size since it was ",
               "opened (", size_, " -> ", file.size, " bytes)");
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, file.fd, 0);
    DSV4_CHECK(p != MAP_FAILED, kOp, sys_error("mmap", path_));
    map_->len = size_;
    map_->slot = register_mapping(p, size_, path_);
    map_->base.store(static_cast<const std::byte*>(p));
  });
  return map_->base.load();
}

std::span<const std::byte> safetensors_file::bytes(const tensor_record& t) const {
  if (t.nbytes() == 0) return {};
  const std::byte* base = map();
  return {base + 8 + hdr_.header_len + t.begin, t.nbytes()};
}

bool safetensors_file::aligned(const tensor_record& t) const {
  const int esize = st_dtype_size(t.dt);
  return esize <= 1 || (8 + hdr_.header_len + t.begin) % static_cast<std::uint64_t>(esize) == 0;
}

std::uint64_t safetensors_file::copied_bytes() const { return map_->copied_bytes.load(); }

std::size_t safetensors_file::copied_tensors() const {
  std::lock_guard<std::mutex> lock(map_->copies_mu);
  return map_->copies.size();
}

tensor_view safetensors_file::view(const tensor_record& t) const {
  const std::string where = detail::printable(path_.string(), 400);
  const auto dt = to_dtype(t.dt);
  DSV4_CHECK(dt.has_value(), kOp, where, ": tensor \"", detail::printable(t.name), "\" has dtype ",
             st_dtype_name(t.dt),
             t.dt == st_dtype::F8_E5M2 ? ", which DeepSeek-V4 checkpoints never use; dsv4 does not decode it"
                                       : ", which dsv4 cannot view");
  DSV4_CHECK(t.shape.size() <= static_cast<std::size_t>(kMaxRank), kOp, where, ": tensor \"",
             detail::printable(t.name), "\" has rank ", t.shape.size(), " > ", kMaxRank);
  const auto b = bytes(t);
  const std::byte* data = b.data();
  // The format does not require a tensor to start at a multiple of its element size (the reference writer arranges
  // it; other writers may not). Views must be aligned, so such a tensor is copied once into 64-byte-aligned memory
  // and every later view shares the copy.
  if (!aligned(t) && !b.empty()) {
    const std::size_t index = static_cast<std::size_t>(&t - hdr_.tensors.data());
    DSV4_CHECK(index < hdr_.tensors.size(), kOp, where, ": tensor record of another file");
    std::lock_guard<std::mutex> lock(map_->copies_mu);
    auto it = map_->copies.find(index);
    if (it == map_->copies.end()) {
      void* mem = std::aligned_alloc(64, (b.size() + 63) / 64 * 64);
      DSV4_CHECK(mem != nullptr, kOp, where, ": cannot allocate ", b.size(), " bytes to align tensor \"",
                 detail::printable(t.name), "\"");
      std::memcpy(mem, b.data(), b.size());
      it = map_->copies.emplace(index, std::unique_ptr<std::byte[], void (*)(void*)>(static_cast<std::byte*>(mem),
                                                                                     std::free))
               .first;
      map_->copied_bytes += b.size();
    }
    data = it->second.get();
  }
  return tensor_view(const_cast<std::byte*>(data), *dt,
                     std::span<const std::int64_t>(t.shape.data(), t.shape.size()));
}

// ---- checkpoint --------------------------------------------------------------------------------------------------

checkpoint checkpoint::open(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  using dsv4::detail::printable;
  checkpoint c;
  c.root_ = path;
  const std::string where = printable(path.string(), 400);
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);  // stat, never open: a FIFO does not block here
  DSV4_CHECK(fs::exists(st), kOp, where, ": no such file or directory");
  auto add_shard = [&](const fs::path& file) {
    c.shards_.push_back(std::make_unique<safetensors_file>(file));
    const std::size_t s = c.shards_.size() - 1;
    for (const auto& t : c.shards_[s]->hdr().tensors) {
      auto [it, fresh] = c.index_.try_emplace(t.name, s, &t);
      DSV4_CHECK(fresh, kOp, where, ": tensor \"", printable(t.name), "\" is in two shards (",
                 printable(c.shards_[it->second.first]->path().filename().string()), " and ",
                 printable(file.filename().string()), ")");
    }
  };

  if (!fs::is_directory(st)) {
    add_shard(path);  // a single file (anything but a regular file is refused by the open)
    return c;
  }
  const fs::path index = path / "model.safetensors.index.json";
  if (!fs::exists(fs::symlink_status(index, ec))) {
    const fs::path single = path / "model.safetensors";
    DSV4_CHECK(fs::exists(fs::symlink_status(single, ec)), kOp, where,
               ": no model.safetensors.index.json or model.safetensors");
    add_shard(single);
    return c;
  }

  const std::string iwhere = printable(index.string(), 400);
  const std::string text = read_text_file(index, kMaxIndexBytes, kOp);
  c.index_bytes_ = text.size();
  json_text::check_json_text(text, kOp, iwhere, 8);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    DSV4_FAIL(kOp, iwhere, ": not valid JSON (", e.what(), ")");
  }
  DSV4_CHECK(j.is_object() && j.contains("weight_map") && j.at("weight_map").is_object(), kOp, iwhere,
             ": expected an object with a \"weight_map\" object");
  std::map<std::string, std::string> wanted;  // tensor -> shard file name
  std::set<std::string> files;                // distinct shard names, sorted
  for (auto it = j.at("weight_map").begin(); it != j.at("weight_map").end(); ++it) {
    DSV4_CHECK(it.value().is_string(), kOp, iwhere, ": weight_map[\"", printable(it.key()), "\"] is not a string");
    const std::string file = it.value().get<std::string>();
    DSV4_CHECK(!file.empty() && file.find('/') == std::string::npos && file.find('\\') == std::string::npos &&
                   file != "." && file != "..",
               kOp, iwhere, ": shard name \"", printable(file), "\" for \"", printable(it.key()),
               "\" must be a plain file name inside the checkpoint directory");
    files.insert(file);
    wanted.emplace(it.key(), file);
  }
  for (const auto& file : files) {
    DSV4_CHECK(fs::exists(fs::symlink_status(path / file, ec)), kOp, iwhere, ": shard ", printable(file),
               " is missing");
    add_shard(path / file);
  }
  for (const auto& [name, file] : wanted) {
    const auto it = c.index_.find(name);
    DSV4_CHECK(it != c.index_.end(), kOp, iwhere, ": maps \"", printable(name), "\" to ", printable(file),
               ", which does not contain it");
    DSV4_CHECK(c.shards_[it->second.first]->path().filename() == file, kOp, iwhere, ": maps \"", printable(name),
               "\" to ", printable(file), " but it is in ",
               printable(c.shards_[it->second.first]->path().filename().string()));
  }
  return c;
}

bool checkpoint::contains(std::string_view name) const { return index_.find(name) != index_.end(); }

const tensor_record* checkpoint::find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second.second;
}

const safetensors_file& checkpoint::shard_of(std::string_view name) const {
  const auto it = index_.find(name);
  DSV4_CHECK(it != index_.end(), kOp, dsv4::detail::printable(root_.string(), 400), ": no tensor \"",
             dsv4::detail::printable(name), "\"");
  return *shards_[it->second.first];
}

tensor_view checkpoint::view(std::string_view name) const { return shard_of(name).view(*find(name)); }

std::span<const std::byte> checkpoint::bytes(std::string_view name) const {
  return shard_of(name).bytes(*find(name));
}

std::vector<std::string> checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& kv : index_) out.push_back(kv.first);
  return out;
}

std::uint64_t checkpoint::header_bytes_read() const {
  std::uint64_t n = index_bytes_;
  for (const auto& s : shards_) n += s->header_bytes_read();
  return n;
}

std::size_t checkpoint::copied_tensors() const {
  std::size_t n = 0;
  for (const auto& s : shards_) n += s->copied_tensors();
  return n;
}

std::uint64_t checkpoint::copied_bytes() const {
  std::uint64_t n = 0;
  for (const auto& s : shards_) n += s->copied_bytes();
  return n;
}

std::size_t checkpoint::mapped_shards() const {
  return static_cast<std::size_t>(
      std::count_if(shards_.begin(), shards_.end(), [](const auto& s) { return s->mapped(); }));
}

// ---- writing -------------------------------------------------------------------------------------------------------

void write_safetensors(const std::filesystem::path& file, std::span<const tensor_data> tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Data in order of decreasing element size (as the reference writer does), so with the header padded to a multiple
  // of 8 every tensor starts aligned to its element size without gaps; the header lists tensors in that order.
  std::vector<const tensor_data*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::stable_sort(order.begin(), order.end(), [](const tensor_data* a, const tensor_data* b) {
    return st_dtype_size(a->dt) > st_dtype_size(b->dt);
  });
  std::string text = "{";
  bool first = true;
  if (!metadata.empty()) {
    text += "\"__metadata__\":" + json(metadata).dump();
    first = false;
  }
  std::uint64_t off = 0;
  for (const tensor_data* tp : order) {
    const tensor_data& t = *tp;
    DSV4_CHECK(t.data.empty() || t.data.size() == t.nbytes(), kOp, file.string(), ": tensor \"", t.name,
               "\" has ", t.data.size(), " bytes of data, its shape needs ", t.nbytes());
    json shape = json::array();
    for (auto d : t.shape) shape.push_back(d);
    if (!first) text += ',';
    text += json(t.name).dump();
    text += ":{\"dtype\":\"";
    text += st_dtype_name(t.dt);
    text += "\",\"shape\":";
    text += shape.dump();
    text += ",\"data_offsets\":[";
    text += std::to_string(off);
    text += ',';
    text += std::to_string(off + t.nbytes());
    text += "]}";
    first = false;
    off += t.nbytes();
  }
  text += "}";
  while ((8 + text.size()) % 8) text += ' ';

  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  DSV4_CHECK(fd >= 0, kOp, sys_error("create", file));
  struct closer {
    int fd;
    ~closer() { ::close(fd); }
  } guard{fd};
  auto write_all = [&](const void* p, std::size_t n, std::uint64_t at) {
    const char* c = static_cast<const char*>(p);
    while (n) {
      const ssize_t w = ::pwrite(fd, c, n, static_cast<off_t>(at));
      DSV4_CHECK(w > 0, kOp, sys_error("write", file));
      c += w;
      at += static_cast<std::uint64_t>(w);
      n -= static_cast<std::size_t>(w);
    }
  };
  unsigned char len[8];
  const std::uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  write_all(len, 8, 0);
  write_all(text.data(), text.size(), 8);
  std::uint64_t at = 8 + n;
  for (const tensor_data* t : order) {
    if (!t->data.empty()) write_all(t->data.data(), t->data.size(), at);  // empty: a hole, read back as zeros
    at += t->nbytes();
  }
  DSV4_CHECK(::ftruncate(fd, static_cast<off_t>(at)) == 0, kOp, sys_error("truncate", file));
}

std::vector<std::pair<std::size_t, std::size_t>> plan_shards(std::span<const tensor_data> tensors,
                                                             std::uint64_t shard_bytes) {
  std::vector<std::pair<std::size_t, std::size_t>> ranges;
  std::size_t start = 0;
  std::uint64_t acc = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (i > start && acc + tensors[i].nbytes() > shard_bytes) {
      ranges.emplace_back(start, i);
      start = i;
      acc = 0;
    }
    acc += tensors[i].nbytes();
  }
  if (start < tensors.size() || ranges.empty()) ranges.emplace_back(start, tensors.size());
  return ranges;
}

std::size_t write_sharded(const std::filesystem::path& dir, std::span<const tensor_data> tensors,
                          std::uint64_t shard_bytes) {
  std::filesystem::create_directories(dir);
  const auto ranges = plan_shards(tensors, shard_bytes);
  const std::size_t n = ranges.size();
  json weight_map = json::object();  // sorted by name (an ordered map would cost O(n^2) for 145k names)
  std::uint64_t total = 0;
  for (std::size_t s = 0; s < n; ++s) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", s + 1, n);
    const auto [a, b] = ranges[s];
    write_safetensors(dir / name, tensors.subspan(a, b - a));
    for (std::size_t i = a; i < b; ++i) {
      weight_map[tensors[i].name] = name;
      total += tensors[i].nbytes();
    }
  }
  nlohmann::ordered_json index;  // "metadata" first, as in the official files
  index["metadata"] = {{"total_size", total}};
  index["weight_map"] = std::move(weight_map);
  std::ofstream f(dir / "model.safetensors.index.json", std::ios::binary);
  f << index.dump(2) << "\n";
  DSV4_CHECK(f.good(), kOp, (dir / "model.safetensors.index.json").string(), ": write failed");
  return n;
}

}  // namespace dsv4::io
