// Hostile checkpoints and configs at the library level: non-finite or NaN-coded weights are refused by tensor name
// (never NaN logits), buffers are sized by what a run uses rather than by the config, header sizes cannot overflow,
// NUL bytes and hostile nesting are refused, and a file truncated under its mapping gives a message, not a bare
// SIGBUS. (The command-line side of the same classes is tests/hostile_cli.sh.)
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <limits>

#include "dsv4/io/file.hpp"
#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/forward.hpp"
#include "dsv4/model/synth.hpp"
#include "harness.hpp"

using namespace dsv4;
using namespace dsv4::model;
using dsv4::test::check_error;
using dsv4::test::temp_dir;
namespace fs = std::filesystem;

namespace {

using test::load_all;
io::tensor_data& find(std::vector<io::tensor_data>& ts, const std::string& name) { return *test::find_tensor(ts, name); }

// The tiny model with one tensor's bytes changed by `edit`, written to dir.
template <class Edit>
void mutated(const fs::path& dir, const std::string& name, Edit edit) {
  temp_dir base("hostile_base");
  synthesize(preset("tiny"), base.path, {});
  std::vector<io::tensor_data> ts = load_all(io::checkpoint::open(base.path));
  edit(find(ts, name));
  fs::create_directories(dir);
  io::write_safetensors(dir / "model.safetensors", ts);
  std::ofstream(dir / "config.json") << to_hf_json(load_config(base.path));
}

void set_f32(io::tensor_data& t, std::size_t i, float v) {
  REQUIRE(4 * i + 4 <= t.data.size());
  std::memcpy(t.data.data() + 4 * i, &v, 4);
}
void set_bf16(io::tensor_data& t, std::size_t i, float v) {
  REQUIRE(2 * i + 2 <= t.data.size());
  const std::uint16_t b = bf16::from_float(v).bits;
  std::memcpy(t.data.data() + 2 * i, &b, 2);
}

std::vector<float> run(const fs::path& dir, const bind_options& opt, std::int64_t T = 12) {
  const io::checkpoint ck = io::checkpoint::open(dir);
  const model_config cfg = load_config(dir);
  const model_weights w = bind_weights(ck, cfg, opt);
  const transformer tf(cfg, w);
  sequence_state s = tf.new_sequence(64);
  std::vector<std::int64_t> ids;
  for (std::int64_t t = 0; t < T; ++t) ids.push_back((7 * t + 3) % cfg.vocab_size);
  std::vector<float> out(static_cast<std::size_t>(T * cfg.vocab_size));
  tf.forward(ids, s, tensor_view(out.data(), dtype::f32, {T, cfg.vocab_size}));
  return out;
}

bind_options no_verify() {
  bind_options o;
  o.verify_dense = false;
  return o;
}

}  // namespace

TEST_SUITE("hostile") {
  TEST_CASE("non-finite BF16 / F32 weights are refused at binding, by tensor name") {
    struct c {
      const char* tensor;
      bool f32;
    };
    for (const c& k : {c{"norm.weight", false}, c{"head.weight", false}, c{"hc_head_fn", true},
                       c{"layers.1.attn.attn_sink", true}, c{"layers.2.attn.compressor.ape", true},
                       c{"embed.weight", false}}) {
      const std::string tensor = k.tensor;
      CAPTURE(tensor);
      temp_dir d("hostile_nan");
      mutated(d.path, k.tensor, [&](io::tensor_data& t) {
        if (k.f32) set_f32(t, 1, std::numeric_limits<float>::quiet_NaN());
        else set_bf16(t, 1, std::numeric_limits<float>::infinity());
      });
      check_error([&] { (void)run(d.path, {}); }, {k.tensor, "non-finite value", "flat index 1"});
    }
  }

  TEST_CASE("without the binding check the forward pass still refuses them: never NaN logits") {
    temp_dir d1("hostile_head"), d2("hostile_norm"), d3("hostile_embed"), d4("hostile_big");
    mutated(d1.path, "head.weight", [](io::tensor_data& t) { set_bf16(t, 64 * 5 + 1, NAN); });  // row 5 of [512, 64]
    check_error([&] { (void)run(d1.path, no_verify()); }, {"head.weight row 5"});
    mutated(d2.path, "norm.weight", [](io::tensor_data& t) { set_bf16(t, 0, INFINITY); });
    check_error([&] { (void)run(d2.path, no_verify()); }, {"the final norm produced a non-finite value"});
    mutated(d3.path, "embed.weight", [](io::tensor_data& t) { set_bf16(t, 64 * 3 + 2, NAN); });  // token 3
    check_error([&] { (void)run(d3.path, no_verify()); }, {"embed.weight row 3", "column 2"});
    // Finite but absurd: an RMSNorm weight of 3e38 overflows the next projection (or the norm itself).
    mutated(d4.path, "layers.1.attn_norm.weight", [](io::tensor_data& t) {
      for (std::size_t i = 0; i < 64; ++i) set_bf16(t, i, 3e38f);
    });
    check_error([&] { (void)run(d4.path, {}); }, {"layer 1", "inf or NaN"});
  }

  TEST_CASE("NaN FP8 codes and 0xFF scales name their tensor: in ops::linear, and at binding with verify_quantized") {
    temp_dir d("hostile_fp8");
    mutated(d.path, "layers.0.attn.wq_a.weight", [](io::tensor_data& t) { t.data[17] = std::byte{0x7F}; });
    check_error([&] { (void)run(d.path, {}); }, {"layers.0.attn.wq_a", "decode to NaN"});
    bind_options v;
    v.verify_quantized = true;
    check_error([&] { (void)run(d.path, v); }, {"layers.0.attn.wq_a.weight", "1 NaN FP8 code", "flat index 17"});
    temp_dir e("hostile_scale");
    mutated(e.path, "layers.3.ffn.shared_experts.w2.scale", [](io::tensor_data& t) { t.data[0] = std::byte{0xFF}; });
    check_error([&] { (void)run(e.path, {}); }, {"layers.3.ffn.shared_experts.w2", "decode to NaN"});
    check_error([&] { (void)run(e.path, v); }, {"layers.3.ffn.shared_experts.w2.scale", "0xFF"});
  }

  TEST_CASE("buffers are sized by the run: window pages by the positions that exist; top-k by the entries") {
    // A window of 2^20 positions in a sequence of capacity 3 maps one page of window entries, not 2^20 / B.
    model_config c = preset("tiny");
    c.window_size = 1 << 20;
    c.max_position_embeddings = 1 << 21;
    page_pool pool(c);
    const std::int64_t id = pool.add_sequence(3);
    for (std::int64_t l = 0; l < c.n_layers; ++l) pool.prepare(id, l, 3);
    CHECK(pool.table(id, 1, page_pool::region::window).size() == 1);
    CHECK(pool.pages_in_use() <= 4 * 5);  // per layer at most: window, compressed, keys, two state pages

    // A window longer than the run, and an index_topk far above the entries that exist, give bitwise the logits of
    // a window as long as the run and a top-k equal to the most entries there can be (every entry is selected).
    temp_dir d1("hostile_k1"), d2("hostile_k2");
    model_config big = preset("tiny"), exact = preset("tiny");
    big.index_topk = 1 << 30;
    big.window_size = 1 << 20;
    exact.index_topk = 40;  // > the 40 / 4 = 10 entries of a 40-token run
    exact.window_size = 40;
    for (auto [dir, cfg] : {std::pair{&d1, &big}, std::pair{&d2, &exact}}) {
      synthesize(*cfg, dir->path, {});
    }
    CHECK(run(d1.path, {}, 40) == run(d2.path, {}, 40));
  }

  TEST_CASE("config limits: absurd sizes are refused by field; integers never wrap or truncate") {
    const std::string base = to_hf_json(preset("tiny"));
    auto with = [&](const std::string& field, const std::string& value) {
      const auto at = base.find("\"" + field + "\": ");
      REQUIRE(at != std::string::npos);
      const auto start = at + field.size() + 4;
      auto end = base.find_first_of(",\n", start);
      if (base[start] == '[' || base[start] == '{') {  // a nested value: up to its closing bracket
        int depth = 0;
        for (end = start; end < base.size(); ++end) {
          depth += base[end] == '[' || base[end] == '{';
          depth -= base[end] == ']' || base[end] == '}';
          if (depth == 0) break;
        }
        ++end;
      }
      return base.substr(0, start) + value + base.substr(end);
    };
    check_error([&] { (void)parse_config(with("sliding_window", "144115188075855872")); }, {"sliding_window"});
    check_error([&] { (void)parse_config(with("index_topk", "1e12")); }, {"index_topk"});
    check_error([&] { (void)parse_config(with("n_routed_experts", "100000000")); }, {"n_routed_experts"});
    check_error([&] { (void)parse_config(with("num_hidden_layers", "200000")); }, {"num_hidden_layers"});
    check_error([&] { (void)parse_config(with("hc_sinkhorn_iters", "4294967297")); }, {"hc_sinkhorn_iters"});
    check_error([&] { (void)parse_config(with("head_dim", "1024.5")); }, {"\"head_dim\" must be an integer"});
    check_error([&] { (void)parse_config(with("hidden_size", "18446744073709551615")); }, {"hidden_size"});
    check_error([&] { (void)parse_config(with("compress_rope_theta", "1")); }, {"compress_rope_theta"});
    check_error([&] { (void)parse_config(with("rope_theta", "1e400")); }, {"not valid JSON"});
    check_error([&] { (void)parse_config(with("beta_fast", "1e308")); }, {"beta_fast"});
    check_error([&] { (void)parse_config(with("tie_word_embeddings", "\"x\"")); }, {"tie_word_embeddings"});
    check_error([&] { (void)parse_config(with("scoring_func", "[1]")); }, {"\"scoring_func\" must be a string"});
    check_error([&] { (void)parse_config(with("rope_scaling", "7")); }, {"\"rope_scaling\" must be an object"});
    check_error([&] { (void)parse_config(with("compress_ratios", "[0, 4, \"x\"]")); }, {"compress_ratios[2]"});
    check_error([&] { (void)parse_config(base + std::string(1, '\0') + "garbage"); }, {"NUL byte"});
    check_error([&] { (void)parse_config(std::string(40, '[') + std::string(40, ']')); }, {"nests deeper"});
    // A long compress_ratios of wrong values: one short message, not one line per entry.
    std::string many = "[";
    for (int i = 0; i < 1000; ++i) many += (i ? ",7" : "7");
    many += "]";
    try {
      (void)parse_config(with("compress_ratios", many));
      FAIL("accepted");
    } catch (const error& e) {
      CHECK(std::strlen(e.what()) < 2000);
      CHECK(std::string(e.what()).find("more") != std::string::npos);
    }
    CHECK_NOTHROW((void)parse_config(base));
  }

  TEST_CASE("safetensors: element counts cannot overflow, NUL bytes are refused, nesting is bounded") {
    auto img = [](const std::string& h, std::size_t data) {
      std::vector<std::byte> out(8 + h.size() + data);
      for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = std::byte(static_cast<unsigned char>(h.size() >> (8 * i)));
      std::memcpy(out.data() + 8, h.data(), h.size());
      return out;
    };
    // 0 bytes, but the product of the extents before the 0 overflows: the reference reader refuses it too.
    check_error([&] {
      (void)io::parse_file_bytes(img(R"({"a":{"dtype":"F32","shape":[4294967295,4294967295,0],"data_offsets":[0,0]}})", 0),
                                 "m");
    }, {"more than 2^63 elements"});
    CHECK_NOTHROW((void)io::parse_file_bytes(img(R"({"a":{"dtype":"F32","shape":[0,4294967295],"data_offsets":[0,0]}})", 0), "m"));
    const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    check_error([&] { (void)io::parse_file_bytes(img(ok + std::string(1, '\0') + "xx", 8), "m"); }, {"NUL byte"});
    check_error([&] { (void)io::parse_file_bytes(img(ok + "xx", 8), "m"); }, {"not valid JSON"});
  }

  TEST_CASE("a file truncated while mapped: the SIGBUS handler names it and exits 1") {
    temp_dir d("hostile_sigbus");
    const fs::path p = d.path / "m.safetensors";
    io::write_safetensors(p, std::vector<io::tensor_data>{{"w", io::st_dtype::F32, {4096, 4}, std::vector<std::byte>(4096 * 16)}});
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      // The child maps the file, truncates it and reads the lost page: the handler must end it with status 1.
      const int err = ::open((d.path / "err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(err, 2);
      io::install_sigbus_handler();
      io::safetensors_file f(p);
      const auto b = f.bytes(*f.find("w"));
      if (::truncate(p.c_str(), 64) != 0) ::_exit(3);
      volatile std::byte x = b[b.size() - 1];
      (void)x;
      ::_exit(2);  // not reached
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 1);
    std::ifstream e(d.path / "err");
    const std::string msg((std::istreambuf_iterator<char>(e)), std::istreambuf_iterator<char>());
    CHECK(msg.find("m.safetensors") != std::string::npos);
    CHECK(msg.find("truncated or changed on disk while dsv4 had it mapped") != std::string::npos);
  }
}

TEST_SUITE("hostile") {
  TEST_CASE("every kept fuzz reproducer is refused with dsv4::error (tests/fuzz/regressions, also replayed by the fuzzers)") {
    const fs::path root = fs::path(DSV4_TEST_DATA_DIR).parent_path() / "fuzz" / "regressions";
    int n = 0;
    for (const auto& e : fs::directory_iterator(root / "safetensors")) {
      std::ifstream f(e.path(), std::ios::binary);
      const std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      const std::span<const std::byte> img(reinterpret_cast<const std::byte*>(s.data()), s.size());
      CAPTURE(e.path().filename().string());
      CHECK_THROWS_AS((void)io::parse_file_bytes(img, e.path().filename().string()), dsv4::error);
      ++n;
    }
    for (const auto& e : fs::directory_iterator(root / "config")) {
      CAPTURE(e.path().filename().string());
      CHECK_THROWS_AS((void)load_config(e.path()), dsv4::error);
      ++n;
    }
    CHECK(n >= 17);
  }
}
