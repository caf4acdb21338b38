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
  return detail::concat(p.string(), ": ", what, " failed: ", std::strerror(errno));
}

// A read-only descriptor of a regular file, closed at scope exit, with the file's size.
struct open_file {
  int fd = -1;
  std::uint64_t size = 0;
  explicit open_file(const std::filesystem::path& p) {
    fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    DSV4_CHECK(fd >= 0, kOp, sys_error("open", p));
    struct stat st {};
    DSV4_CHECK(::fstat(fd, &st) == 0, kOp, sys_error("stat", p));
    DSV4_CHECK(S_ISREG(st.st_mode), kOp, p.string(), ": not a regular file");
    size = static_cast<std::uint64_t>(st.st_size);
  }
  ~open_file() { ::close(fd); }
  open_file(const open_file&) = delete;
  open_file& operator=(const open_file&) = delete;
};

int max_depth(std::string_view s) {
  int depth = 0, worst = 0;
  bool in_str = false, esc = false;
  for (char c : s) {
    if (in_str) {
      if (esc) esc = false;
      else if (c == '\\') esc = true;
      else if (c == '"') in_str = false;
      continue;
    }
    if (c == '"') in_str = true;
    else if (c == '{' || c == '[') worst = std::max(worst, ++depth);
    else if (c == '}' || c == ']') --depth;
  }
  return worst;
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

header parse_header(std::string_view text, std::uint64_t data_bytes, std::string_view where) {
  header h;
  h.header_len = text.size();
  DSV4_CHECK(!text.empty() && text.front() == '{', kOp, where, ": header does not start with '{' (not a ",
             "safetensors file, or a corrupt length prefix)");
  DSV4_CHECK(max_depth(text) <= kMaxDepth, kOp, where, ": header JSON nests deeper than ", kMaxDepth, " levels");

  // Duplicate top-level names are legal JSON but ambiguous: the parser callback sees every key before the object
  // keeps only one of them.
  std::set<std::string> seen;
  std::string duplicate;
  json j;
  try {
    j = json::parse(text.begin(), text.end(), [&](int depth, json::parse_event_t ev, json& parsed) {
      if (ev == json::parse_event_t::key && depth == 1 && parsed.is_string()) {
        auto k = parsed.get<std::string>();
        if (!seen.insert(k).second && duplicate.empty()) duplicate = std::move(k);
      }
      return true;
    });
  } catch (const json::exception& e) {
    DSV4_FAIL(kOp, where, ": header is not valid JSON (", e.what(), ")");
  }
  DSV4_CHECK(duplicate.empty(), kOp, where, ": tensor name \"", duplicate, "\" appears twice in the header");
  DSV4_CHECK(j.is_object(), kOp, where, ": header is not a JSON object");

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      DSV4_CHECK(v.is_object(), kOp, where, ": __metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        DSV4_CHECK(m.value().is_string(), kOp, where, ": __metadata__[\"", m.key(), "\"] is not a string");
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    DSV4_CHECK(v.is_object(), kOp, where, ": entry \"", name, "\" is not an object");
    DSV4_CHECK(v.contains("dtype") && v.at("dtype").is_string(), kOp, where, ": tensor \"", name,
               "\" has no dtype string");
    DSV4_CHECK(v.contains("shape") && v.at("shape").is_array(), kOp, where, ": tensor \"", name,
               "\" has no shape array");
    DSV4_CHECK(v.contains("data_offsets") && v.at("data_offsets").is_array() && v.at("data_offsets").size() == 2,
               kOp, where, ": tensor \"", name, "\" needs data_offsets [begin, end]");
    tensor_record t;
    t.name = name;
    const std::string ds = v.at("dtype").get<std::string>();
    const auto dt = parse_st_dtype(ds);
    DSV4_CHECK(dt.has_value(), kOp, where, ": tensor \"", name, "\" has unknown dtype \"", ds, "\"");
    t.dt = *dt;
    const json& shape = v.at("shape");
    DSV4_CHECK(shape.size() <= 64, kOp, where, ": tensor \"", name, "\" has rank ", shape.size());
    std::uint64_t bytes = static_cast<std::uint64_t>(st_dtype_size(t.dt));
    bool overflow = false;
    for (const json& d : shape) {
      DSV4_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<std::int64_t>() >= 0), kOp, where,
                 ": tensor \"", name, "\" has shape entry ", d.dump(), " (expected a non-negative integer)");
      const std::uint64_t e = d.get<std::uint64_t>();
      DSV4_CHECK(e <= static_cast<std::uint64_t>(INT64_MAX), kOp, where, ": tensor \"", name, "\" extent ", e,
                 " too large");
      t.shape.push_back(static_cast<std::int64_t>(e));
      overflow = overflow || __builtin_mul_overflow(bytes, e, &bytes);
    }
    const json& off = v.at("data_offsets");
    for (const json& o : off)
      DSV4_CHECK(o.is_number_unsigned() || (o.is_number_integer() && o.get<std::int64_t>() >= 0), kOp, where,
                 ": tensor \"", name, "\" has data offset ", o.dump(), " (expected a non-negative integer)");
    t.begin = off[0].get<std::uint64_t>();
    t.end = off[1].get<std::uint64_t>();
    DSV4_CHECK(t.begin <= t.end, kOp, where, ": tensor \"", name, "\" has data_offsets [", t.begin, ", ", t.end,
               "] with begin > end");
    DSV4_CHECK(t.end <= data_bytes, kOp, where, ": tensor \"", name, "\" data_offsets [", t.begin, ", ", t.end,
               "] run past the data section (", data_bytes, " bytes): offsets out of range or file truncated");
    DSV4_CHECK(!overflow && bytes == t.end - t.begin, kOp, where, ": tensor \"", name, "\" ", ds, " shape ",
               shape.dump(), " needs ", overflow ? std::string("more than 2^64") : std::to_string(bytes),
               " bytes but data_offsets span ", t.end - t.begin);
    h.tensors.push_back(std::move(t));
  }

  // Non-overlapping and gap-free: sorted by offset, each tensor starts where the previous ended, and the last one
  // ends at the end of the file.
  std::vector<const tensor_record*> order;
  for (const auto& t : h.tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const tensor_record* a, const tensor_record* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  std::uint64_t pos = 0;
  const tensor_record* prev = nullptr;
  for (const tensor_record* t : order) {
    DSV4_CHECK(t->begin >= pos, kOp, where, ": tensors \"", prev ? prev->name : "", "\" [", prev ? prev->begin : 0,
               ", ", pos, ") and \"", t->name, "\" [", t->begin, ", ", t->end, ") overlap");
    DSV4_CHECK(t->begin == pos, kOp, where, ": bytes [", pos, ", ", t->begin, ") of the data section before \"",
               t->name, "\" belong to no tensor");
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
};

safetensors_file::safetensors_file(std::filesystem::path path) : path_(std::move(path)), map_(new mapping) {
  const std::string where = path_.string();
  const open_file file(path_);
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
  for (std::size_t i = 0; i < hdr_.tensors.size(); ++i) by_name_.emplace(hdr_.tensors[i].name, i);
}

safetensors_file::~safetensors_file() {
  if (const std::byte* b = map_->base.load()) ::munmap(const_cast<std::byte*>(b), map_->len);
}

const tensor_record* safetensors_file::find(std::string_view name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &hdr_.tensors[it->second];
}

bool safetensors_file::mapped() const { return map_->base.load() != nullptr; }

const std::byte* safetensors_file::map() const {
  std::call_once(map_->once, [&] {
    const open_file file(path_);
    DSV4_CHECK(file.size == size_, kOp, path_.string(), ": file changed size since it was opened (", size_, " -> ",
               file.size, " bytes)");
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, file.fd, 0);
    DSV4_CHECK(p != MAP_FAILED, kOp, sys_error("mmap", path_));
    map_->len = size_;
    map_->base.store(static_cast<const std::byte*>(p));
  });
  return map_->base.load();
}

std::span<const std::byte> safetensors_file::bytes(const tensor_record& t) const {
  if (t.nbytes() == 0) return {};
  const std::byte* base = map();
  return {base + 8 + hdr_.header_len + t.begin, t.nbytes()};
}

tensor_view safetensors_file::view(const tensor_record& t) const {
  const auto dt = to_dtype(t.dt);
  DSV4_CHECK(dt.has_value(), kOp, path_.string(), ": tensor \"", t.name, "\" has dtype ", st_dtype_name(t.dt),
             t.dt == st_dtype::F8_E5M2 ? ", which DeepSeek-V4 checkpoints never use; dsv4 does not decode it"
                                       : ", which dsv4 cannot view");
  DSV4_CHECK(t.shape.size() <= static_cast<std::size_t>(kMaxRank), kOp, path_.string(), ": tensor \"", t.name,
             "\" has rank ", t.shape.size(), " > ", kMaxRank);
  const std::uint64_t abs = 8 + hdr_.header_len + t.begin;
  const int esize = st_dtype_size(t.dt);
  DSV4_CHECK(abs % static_cast<std::uint64_t>(esize) == 0, kOp, path_.string(), ": tensor \"", t.name,
             "\" starts at byte ", abs, ", not aligned to its ", esize, "-byte elements");
  auto b = bytes(t);
  return tensor_view(const_cast<std::byte*>(b.data()), *dt,
                     std::span<const std::int64_t>(t.shape.data(), t.shape.size()));
}

// ---- checkpoint --------------------------------------------------------------------------------------------------

checkpoint checkpoint::open(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  checkpoint c;
  c.root_ = path;
  DSV4_CHECK(fs::exists(path), kOp, path.string(), ": no such file or directory");
  auto add_shard = [&](const fs::path& file) {
    c.shards_.push_back(std::make_unique<safetensors_file>(file));
    const std::size_t s = c.shards_.size() - 1;
    for (const auto& t : c.shards_[s]->hdr().tensors) {
      auto [it, fresh] = c.index_.try_emplace(t.name, s, &t);
      DSV4_CHECK(fresh, kOp, path.string(), ": tensor \"", t.name, "\" is in two shards (",
                 c.shards_[it->second.first]->path().filename().string(), " and ", file.filename().string(), ")");
    }
  };

  if (fs::is_regular_file(path)) {
    add_shard(path);
    return c;
  }
  DSV4_CHECK(fs::is_directory(path), kOp, path.string(), ": not a file or directory");
  const fs::path index = path / "model.safetensors.index.json";
  if (!fs::exists(index)) {
    const fs::path single = path / "model.safetensors";
    DSV4_CHECK(fs::exists(single), kOp, path.string(), ": no model.safetensors.index.json or model.safetensors");
    add_shard(single);
    return c;
  }

  std::ifstream f(index, std::ios::binary);
  DSV4_CHECK(f.good(), kOp, index.string(), ": cannot open");
  std::ostringstream os;
  os << f.rdbuf();
  const std::string text = os.str();
  c.index_bytes_ = text.size();
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    DSV4_FAIL(kOp, index.string(), ": not valid JSON (", e.what(), ")");
  }
  DSV4_CHECK(j.is_object() && j.contains("weight_map") && j.at("weight_map").is_object(), kOp, index.string(),
             ": expected an object with a \"weight_map\" object");
  std::map<std::string, std::string> wanted;  // tensor -> shard file name
  std::vector<std::string> files;             // distinct shard names, first-seen order
  for (auto it = j.at("weight_map").begin(); it != j.at("weight_map").end(); ++it) {
    DSV4_CHECK(it.value().is_string(), kOp, index.string(), ": weight_map[\"", it.key(), "\"] is not a string");
    const std::string file = it.value().get<std::string>();
    DSV4_CHECK(!file.empty() && file.find('/') == std::string::npos && file.find('\\') == std::string::npos &&
                   file != "." && file != "..",
               kOp, index.string(), ": shard name \"", file, "\" for \"", it.key(),
               "\" must be a plain file name inside the checkpoint directory");
    if (std::find(files.begin(), files.end(), file) == files.end()) files.push_back(file);
    wanted.emplace(it.key(), file);
  }
  std::sort(files.begin(), files.end());
  for (const auto& file : files) {
    DSV4_CHECK(fs::exists(path / file), kOp, index.string(), ": shard ", file, " is missing");
    add_shard(path / file);
  }
  for (const auto& [name, file] : wanted) {
    const auto it = c.index_.find(name);
    DSV4_CHECK(it != c.index_.end(), kOp, index.string(), ": maps \"", name, "\" to ", file,
               ", which does not contain it");
    DSV4_CHECK(c.shards_[it->second.first]->path().filename() == file, kOp, index.string(), ": maps \"", name,
               "\" to ", file, " but it is in ", c.shards_[it->second.first]->path().filename().string());
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
  DSV4_CHECK(it != index_.end(), kOp, root_.string(), ": no tensor \"", name, "\"");
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
