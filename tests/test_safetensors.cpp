// safetensors: write/read round trip, every malformed-file class, sharded index errors, lazy opening of a full-size
// (sparse) V4-Flash checkpoint, and a seeded mutation fuzz loop over the header parser.
#include <sys/mman.h>
#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <random>

#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/config.hpp"
#include "dsv4/model/synth.hpp"
#include "dsv4/model/weights.hpp"
#include "harness.hpp"

using namespace dsv4;
using namespace dsv4::io;
using dsv4::test::check_error;
using dsv4::test::temp_dir;
namespace fs = std::filesystem;

namespace {

std::vector<std::byte> to_bytes(const std::string& s) {
  std::vector<std::byte> v(s.size());
  std::memcpy(v.data(), s.data(), s.size());
  return v;
}

// A file image: u64 little-endian header length (or `len_override`), the header, `data` zero bytes.
std::vector<std::byte> image(const std::string& header, std::size_t data, std::uint64_t len_override = ~0ull) {
  const std::uint64_t n = len_override == ~0ull ? header.size() : len_override;
  std::vector<std::byte> out(8);
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = std::byte(static_cast<unsigned char>(n >> (8 * i)));
  const auto h = to_bytes(header);
  out.insert(out.end(), h.begin(), h.end());
  out.resize(out.size() + data);
  return out;
}

void write_file(const fs::path& p, const std::vector<std::byte>& b) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// Both entry points (in memory and on disk) reject the image with every needle in the message.
void check_rejected(const temp_dir& d, const std::vector<std::byte>& img, std::initializer_list<const char*> needles) {
  check_error([&] { (void)parse_file_bytes(img, "mem.safetensors"); }, needles);
  const fs::path p = d.path / "bad.safetensors";
  write_file(p, img);
  check_error([&] { safetensors_file f(p); }, needles);
  check_error([&] { safetensors_file f(p); }, {"bad.safetensors"});
}

tensor_data make(const std::string& name, st_dtype dt, std::vector<std::int64_t> shape, std::uint64_t seed) {
  tensor_data t{name, dt, std::move(shape), {}};
  t.data.resize(t.nbytes());
  std::mt19937_64 r(seed);
  for (auto& b : t.data) b = std::byte(static_cast<unsigned char>(r()));
  return t;
}

}  // namespace

TEST_SUITE("safetensors") {
  TEST_CASE("write -> read round trip: bytes, dtypes, shapes, alignment, metadata") {
    temp_dir d("st_roundtrip");
    std::vector<tensor_data> ts = {make("a.scale", st_dtype::F8_E8M0, {3, 5}, 1),  // odd size first on purpose
                                   make("b", st_dtype::F32, {7}, 2),
                                   make("c.bf16", st_dtype::BF16, {3, 3}, 3),
                                   make("d.ids", st_dtype::I64, {2, 3}, 4),
                                   make("e.fp8", st_dtype::F8_E4M3, {4, 8}, 5),
                                   make("f.empty", st_dtype::F32, {0, 4}, 6),
                                   make("g.scalar", st_dtype::I32, {}, 7)};
    write_safetensors(d.path / "x.safetensors", ts, {{"format", "pt"}});
    safetensors_file f(d.path / "x.safetensors");
    CHECK_FALSE(f.mapped());
    CHECK(f.hdr().metadata.at("format") == "pt");
    REQUIRE(f.hdr().tensors.size() == ts.size());
    for (const auto& t : ts) {
      const tensor_record* r = f.find(t.name);
      REQUIRE(r != nullptr);
      CHECK(r->dt == t.dt);
      CHECK(r->shape == t.shape);
      const auto b = f.bytes(*r);
      REQUIRE(b.size() == t.data.size());
      if (!b.empty()) CHECK(std::memcmp(b.data(), t.data.data(), b.size()) == 0);
      const tensor_view v = f.view(*r);
      CHECK(v.dt() == *to_dtype(t.dt));
      CHECK(std::vector<std::int64_t>(v.shape().begin(), v.shape().end()) == t.shape);
      if (!b.empty())  // every tensor aligned to its element size (writer orders by element size)
        CHECK(reinterpret_cast<std::uintptr_t>(v.data()) % static_cast<std::uintptr_t>(st_dtype_size(t.dt)) == 0);
    }
    CHECK(f.mapped());
    CHECK(f.find("nope") == nullptr);
  }

  TEST_CASE("every malformed-file class is rejected, naming the file and the problem") {
    temp_dir d("st_bad");
    const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    write_file(d.path / "ok.safetensors", image(ok, 8));
    CHECK_NOTHROW(safetensors_file(d.path / "ok.safetensors"));

    check_rejected(d, std::vector<std::byte>(5), {"truncated file (5 bytes"});
    check_rejected(d, image(ok, 8, 1000), {"header length 1000 runs past the end of the file"});
    check_rejected(d, image(ok, 8, 200'000'000), {"exceeds the format's limit"});
    check_rejected(d, image(ok, 4), {"run past the data section (4 bytes)"});  // data cut short
    check_rejected(d, image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", 8), {"not valid JSON"});
    check_rejected(d, image(R"(["a"])", 0), {"does not start with '{'"});
    check_rejected(d, image(R"({"a":3})", 0), {"entry \"a\" is not an object"});
    check_rejected(d, image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
                   {"overlap", "\"a\"", "\"b\""});
    check_rejected(d, image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})", 20),
                   {"bytes [8, 12)", "belong to no tensor"});
    check_rejected(d, image(ok, 12), {"has 12 bytes but the tensors cover 8"});
    check_rejected(d, image(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
                   {"\"a\" F32 shape [3] needs 12 bytes but data_offsets span 8"});
    check_rejected(d, image(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", 8),
                   {"unknown dtype \"F33\""});
    check_rejected(d, image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 16),
                   {"\"a\" appears twice"});
    check_rejected(d, image(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
                   {"shape entry -2"});
    check_rejected(d, image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), {"begin > end"});
    check_rejected(d, image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0.5,8]}})", 8), {"data offset 0.5"});
    check_rejected(d, image(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],)"
                            R"("data_offsets":[0,8]}})", 8),
                   {"has more than 2^63 elements"});
    check_rejected(d, image(R"({"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8),
                   {"__metadata__[\"k\"] is not a string"});
    check_rejected(d, image("{\"a\":{\"x\":" + std::string(40, '[') + std::string(40, ']') + "}}", 0), {"nests deeper"});
    check_rejected(d, image("{\"a\":" + std::string(40, '[') + std::string(40, ']') + "}", 0),
                   {"entry \"a\" is not an object"});
  }

  TEST_CASE("views refuse types V4 never uses; misaligned data is copied once into aligned memory") {
    temp_dir d("st_views");
    // F8_E5M2 and F64 parse (sizes are validated) but cannot be viewed. The header is padded (JSON allows trailing
    // spaces) so the data section starts 8-aligned and "h" at offset 17 is misaligned for its F32 elements.
    const std::string body = R"({"e":{"dtype":"F8_E5M2","shape":[8],"data_offsets":[0,8]},)"
                             R"("f":{"dtype":"F64","shape":[1],"data_offsets":[8,16]},)"
                             R"("g":{"dtype":"U8","shape":[1],"data_offsets":[16,17]},)"
                             R"("h":{"dtype":"F32","shape":[2],"data_offsets":[17,25]}})";
    const std::size_t pad = (8 - (8 + body.size()) % 8) % 8;
    std::vector<std::byte> img = image(body + std::string(pad, ' '), 25);
    const std::size_t data0 = 8 + body.size() + pad;
    const float hv[2] = {1.5f, -3.25f};
    std::memcpy(img.data() + data0 + 17, hv, sizeof hv);
    write_file(d.path / "t.safetensors", img);
    safetensors_file f(d.path / "t.safetensors");
    check_error([&] { (void)f.view(*f.find("e")); }, {"F8_E5M2", "never use", "t.safetensors"});
    check_error([&] { (void)f.view(*f.find("f")); }, {"F64", "cannot view"});
    CHECK(f.aligned(*f.find("g")));  // 1-byte elements are always aligned
    CHECK_FALSE(f.aligned(*f.find("h")));
    CHECK(f.copied_tensors() == 0);
    const tensor_view h = f.view(*f.find("h"));
    CHECK(reinterpret_cast<std::uintptr_t>(h.data()) % 64 == 0);
    CHECK(static_cast<const float*>(h.data())[0] == 1.5f);
    CHECK(static_cast<const float*>(h.data())[1] == -3.25f);
    CHECK(f.view(*f.find("h")).data() == h.data());  // copied once, shared by every later view
    CHECK(f.copied_tensors() == 1);
    CHECK(f.copied_bytes() == 8);
    CHECK(f.view(*f.find("g")).data() != nullptr);
    CHECK(f.copied_tensors() == 1);
  }

  TEST_CASE("sharded checkpoints: index problems are named") {
    temp_dir d("st_shards");
    std::vector<tensor_data> ts;
    for (int i = 0; i < 6; ++i) ts.push_back(make("t" + std::to_string(i), st_dtype::F32, {16}, 10 + i));
    CHECK(write_sharded(d.path, ts, 128) == 3);
    {
      const checkpoint c = checkpoint::open(d.path);
      CHECK(c.shard_count() == 3);
      CHECK(c.names().size() == 6);
      CHECK(std::memcmp(c.bytes("t4").data(), ts[4].data.data(), 64) == 0);
      check_error([&] { (void)c.view("t9"); }, {"no tensor \"t9\""});
    }
    const fs::path idx = d.path / "model.safetensors.index.json";
    std::string text;
    {
      std::ifstream f(idx);
      std::ostringstream os;
      os << f.rdbuf();
      text = os.str();
    }
    auto with_index = [&](const std::string& t) {
      std::ofstream f(idx, std::ios::trunc);
      f << t;
    };
    auto replace = [](std::string s, const std::string& a, const std::string& b) {
      s.replace(s.find(a), a.size(), b);
      return s;
    };
    with_index(replace(text, "\"t0\": \"model-00001-of-00003", "\"t0\": \"model-00002-of-00003"));
    check_error([&] { (void)checkpoint::open(d.path); }, {"maps \"t0\" to model-00002-of-00003.safetensors"});
    with_index(replace(text, "\"t0\": \"model-00001-of-00003.safetensors", "\"t0\": \"../evil.safetensors"));
    check_error([&] { (void)checkpoint::open(d.path); }, {"plain file name"});
    with_index(replace(text, "\"t0\": \"model-00001-of-00003.safetensors", "\"t0\": \"model-00009.safetensors"));
    check_error([&] { (void)checkpoint::open(d.path); }, {"shard model-00009.safetensors is missing"});
    with_index(text.substr(0, text.size() / 2));
    check_error([&] { (void)checkpoint::open(d.path); }, {"model.safetensors.index.json", "not valid JSON"});
    with_index(text);
    // The same tensor in two shards.
    write_safetensors(d.path / "model-00003-of-00003.safetensors", std::vector<tensor_data>{ts[0], ts[5]});
    check_error([&] { (void)checkpoint::open(d.path); }, {"\"t0\" is in two shards"});
    check_error([&] { (void)checkpoint::open(d.path / "nothing"); }, {"no such file"});
  }

  TEST_CASE("opening the 46-shard V4-Flash layout reads only headers; binding maps but reads no weight pages") {
    // A full-size V4-Flash checkpoint (159.6 GB of tensors) as sparse files: headers written, data left as holes.
    temp_dir d("st_flash");
    model::synth_options opt;
    opt.sparse = true;
    opt.shards = 46;
    const auto r = model::synthesize(model::preset("v4-flash"), d.path, opt);
    CHECK(r.shards == 46);
    // The official V4-Flash index (spec §0 S1) lists 69,187 tensors with total_size 159,609,485,896 bytes: the
    // inventory of spec §1.2 reproduces both exactly.
    CHECK(r.tensors == 69187);
    CHECK(r.bytes == 159609485896ull);
    std::uint64_t disk = 0;
    for (const auto& e : fs::directory_iterator(d.path)) {
      struct stat st {};
      REQUIRE(::stat(e.path().c_str(), &st) == 0);
      disk += static_cast<std::uint64_t>(st.st_blocks) * 512;
    }
    CHECK(disk < (64ull << 20));  // sparse: the headers only

    const checkpoint c = checkpoint::open(d.path);
    CHECK(c.shard_count() == 46);
    CHECK(c.names().size() == 69187);
    CHECK(c.mapped_shards() == 0);
    std::uint64_t headers = fs::file_size(d.path / "model.safetensors.index.json");
    for (std::size_t i = 0; i < c.shard_count(); ++i) headers += c.shard(i).header_bytes_read();
    CHECK(c.header_bytes_read() == headers);
    CHECK(c.header_bytes_read() < (32ull << 20));  // ~13 MB of 160 GB

    const model::model_weights w = model::bind_weights(c, model::load_config(d.path));
    CHECK(w.layers.size() == 43);
    CHECK(w.mtp.size() == 1);
    CHECK(w.layers[2].attn.indexer.has_value());
    CHECK_FALSE(w.layers[3].attn.indexer.has_value());
    CHECK(w.layers[10].ffn.experts[5].w1.weight.dt() == dtype::fp4_e2m1);
    CHECK(w.layers[10].ffn.experts[5].w1.weight.shape(1) == 4096);
    // Binding validated shapes without touching weight pages: a large expert tensor has no page in memory.
    const auto span = c.bytes("layers.10.ffn.experts.5.w1.weight");
    const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    const auto first = reinterpret_cast<std::uintptr_t>(span.data()) / page * page;
    const std::size_t len = (reinterpret_cast<std::uintptr_t>(span.data()) + span.size() - first) / page * page;
    std::vector<unsigned char> resident(len / page);
    REQUIRE(::mincore(reinterpret_cast<void*>(first), len, resident.data()) == 0);
    std::size_t in_core = 0;
    for (unsigned char b : resident) in_core += b & 1;
    CHECK(in_core == 0);
  }

  TEST_CASE("the V4-Pro layout: the published 145,116 tensors, bound against the official config.json") {
    temp_dir d("st_pro");
    model::synth_options opt;
    opt.sparse = true;
    opt.shards = 64;  // the official V4-Pro checkpoint has 64 shards
    const auto r = model::synthesize(model::preset("v4-pro"), d.path, opt);
    CHECK(r.shards == 64);
    CHECK(r.tensors == 145116);  // the tensor count of the official V4-Pro files (spec §0 S6 listing)
    // Bind with the official Pro config.json (no expert_dtype): the binder finds FP4 experts.
    const model::model_config cfg = model::load_config(fs::path(DSV4_TEST_DATA_DIR) / "v4-pro.config.json");
    const model::model_weights w = model::bind_weights(checkpoint::open(d.path), cfg);
    CHECK(w.experts == model::expert_format::fp4);
    CHECK(w.layers.size() == 61);
    CHECK(w.layers[0].attn.compressor->ape.shape(0) == 128);  // HCA layer 0: ape [128, 512]
    CHECK(w.layers[2].attn.compressor->ape.shape(1) == 1024);  // CSA: [4, 2·512]
  }

  TEST_CASE("fuzz: seeded mutations of a valid file never crash the parser") {
    // Runs under ASan/UBSan in CI. Every mutated image must either parse, and then every tensor's byte range is read
    // (ASan checks the bounds), or be rejected with dsv4::error. Bounded: 20,000 mutations or 8 seconds.
    std::vector<tensor_data> ts = {make("w", st_dtype::F8_E4M3, {4, 6}, 1), make("s", st_dtype::F8_E8M0, {1, 1}, 2),
                                   make("n", st_dtype::BF16, {5}, 3), make("i", st_dtype::I64, {2, 2}, 4)};
    temp_dir d("st_fuzz");
    write_safetensors(d.path / "seed.safetensors", ts, {{"format", "pt"}});
    std::vector<std::byte> seed;
    {
      std::ifstream f(d.path / "seed.safetensors", std::ios::binary);
      std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      seed = to_bytes(s);
    }
    REQUIRE_NOTHROW(parse_file_bytes(seed, "seed"));
    const std::size_t hlen = static_cast<std::size_t>(parse_file_bytes(seed, "seed").header_len);

    std::mt19937_64 rng(20261124);
    const char tokens[] = "{}[]\",:0123456789-.eE \\";
    const char* words[] = {"\"dtype\"", "\"shape\"", "\"data_offsets\"", "\"F32\"", "\"I64\"", "\"F8_E5M2\"",
                           "\"__metadata__\"", "18446744073709551615", "-1", "1e308", "null", "[]", "{}", "\"w\""};
    int parsed = 0, rejected = 0, n = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (; n < 20000; ++n) {
      if (n % 256 == 0 && std::chrono::steady_clock::now() - t0 > std::chrono::seconds(8)) break;
      std::vector<std::byte> img = seed;
      const int edits = 1 + static_cast<int>(rng() % 4);
      for (int e = 0; e < edits; ++e) {
        const std::size_t at = 8 + rng() % (hlen + 8);  // mostly inside the header
        switch (rng() % 7) {
          case 0: if (at < img.size()) img[at] = std::byte(static_cast<unsigned char>(rng())); break;
          case 1: if (at < img.size()) img[at] = std::byte(tokens[rng() % (sizeof tokens - 1)]); break;
          case 2: img.resize(rng() % (img.size() + 1)); break;                       // truncate
          case 3: img[rng() % 8] = std::byte(static_cast<unsigned char>(rng())); break;  // length prefix
          case 4: if (at < img.size()) img.erase(img.begin() + static_cast<std::ptrdiff_t>(at)); break;
          case 5: {
            const std::string w = words[rng() % (sizeof words / sizeof *words)];
            if (at <= img.size()) {
              const auto b = to_bytes(w);
              img.insert(img.begin() + static_cast<std::ptrdiff_t>(at), b.begin(), b.end());
            }
            break;
          }
          case 6: img.resize(img.size() + rng() % 16); break;  // trailing bytes
        }
        if (img.size() < 8) break;
      }
      try {
        const header h = parse_file_bytes(img, "fuzz");
        const std::size_t base = 8 + static_cast<std::size_t>(h.header_len);
        unsigned sum = 0;
        for (const auto& t : h.tensors)
          for (std::uint64_t b = t.begin; b < t.end; ++b) sum += static_cast<unsigned>(img[base + b]);
        (void)sum;
        ++parsed;
      } catch (const dsv4::error&) {
        ++rejected;
      }
    }
    MESSAGE("fuzz: ", n, " mutations, ", parsed, " parsed, ", rejected, " rejected");
    CHECK(n >= 1000);
    CHECK(parsed > 0);
    CHECK(rejected > 0);
  }
}
