// `dsv4 run`: load a model directory, prefill a prompt (whole or in chunks), teacher-force decode tokens one step at a
// time, write the logits of every processed position as a NumPy .npy file, print the top next tokens.
#include "cmd_run.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

#include "args.hpp"
#include "dsv4/buffer.hpp"
#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/config.hpp"
#include "dsv4/model/forward.hpp"
#include "dsv4/model/weights.hpp"

namespace dsv4::cli {

namespace {

std::vector<std::int64_t> parse_ids(const std::string& opt, const std::string& s) {
  DSV4_CHECK(!s.empty(), "run", "--", opt, " is empty (expected comma-separated token ids, e.g. 5,17,301)");
  std::vector<std::int64_t> out;
  std::size_t i = 0;
  while (i <= s.size()) {
    const std::size_t j = std::min(s.find(',', i), s.size());
    const std::string tok = s.substr(i, j - i);
    std::size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(tok, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    DSV4_CHECK(!tok.empty() && used == tok.size(), "run", "--", opt, ": \"", tok,
               "\" is not a token id (expected comma-separated integers, e.g. 5,17,301)");
    out.push_back(v);
    i = j + 1;
  }
  return out;
}

// NumPy format 1.0: magic, version, little-endian u16 header length, a Python dict literal padded with spaces to a
// multiple of 64 bytes (header included) and ended by a newline, then the raw little-endian float32 data.
void write_npy(const std::string& path, const std::vector<float>& data, std::int64_t rows, std::int64_t cols) {
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                     std::to_string(cols) + "), }";
  const std::size_t pre = 10;  // magic (6) + version (2) + length (2)
  std::size_t total = pre + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  dict += '\n';
  std::ofstream f(path, std::ios::binary);
  DSV4_CHECK(f.good(), "run", "cannot write ", path);
  const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  f.write(reinterpret_cast<const char*>(magic), 8);
  const std::uint16_t len = static_cast<std::uint16_t>(dict.size());
  const unsigned char lb[2] = {static_cast<unsigned char>(len & 0xFF), static_cast<unsigned char>(len >> 8)};
  f.write(reinterpret_cast<const char*>(lb), 2);
  f.write(dict.data(), static_cast<std::streamsize>(dict.size()));
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
  DSV4_CHECK(f.good(), "run", "write failed: ", path);
}

}  // namespace

int cmd_run(int argc, char** argv) {
  const args a(argc, argv, 2, "run", {"model", "prompt", "decode", "chunk", "backend", "threads", "logits", "top"},
               {});
  const std::string dir = a.str("model");
  const std::vector<std::int64_t> prompt = parse_ids("prompt", a.str("prompt"));
  const std::vector<std::int64_t> decode = a.has("decode") ? parse_ids("decode", a.str("decode"))
                                                           : std::vector<std::int64_t>{};
  const std::int64_t chunk = a.integer("chunk", 0);
  DSV4_CHECK(chunk >= 0, "run", "--chunk must be >= 1 (or absent for one prefill)");
  const std::string be = a.str("backend", "cpu");
  DSV4_CHECK(be == "cpu" || be == "ref", "run", "--backend ", be, " (expected ref or cpu)");
  exec ex;
  ex.prefer = be == "ref" ? backend::ref : backend::cpu;
  ex.threads = static_cast<int>(a.integer("threads", 0));
  const std::int64_t top = a.integer("top", 0);

  const model::model_config cfg = model::load_config(dir);
  for (const auto* list : {&prompt, &decode})
    for (std::size_t i = 0; i < list->size(); ++i)
      DSV4_CHECK((*list)[i] >= 0 && (*list)[i] < cfg.vocab_size, "run", list == &prompt ? "--prompt" : "--decode",
                 " token ", (*list)[i], " at index ", i, " is outside the vocabulary [0, ", cfg.vocab_size, ")");
  const std::int64_t total = static_cast<std::int64_t>(prompt.size() + decode.size());
  DSV4_CHECK(total <= cfg.max_position_embeddings, "run", total, " tokens exceed the model's context of ",
             cfg.max_position_embeddings, " positions");
  const io::checkpoint ck = io::checkpoint::open(dir);
  const model::model_weights w = model::bind_weights(ck, cfg);
  const model::transformer tf(cfg, w, ex);
  model::sequence_state seq = tf.new_sequence(total);

  const std::int64_t V = cfg.vocab_size;
  std::vector<float> all(static_cast<std::size_t>(total * V));
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  std::int64_t done = 0;
  double last_report = 0;
  auto step = [&](const std::int64_t* ids, std::int64_t n) {
    const tensor_view lg(all.data() + done * V, dtype::f32, {n, V});
    tf.forward(std::span<const std::int64_t>(ids, static_cast<std::size_t>(n)), seq, lg, nullptr,
               [&](std::int64_t layer) {
                 if (elapsed() > 1.0 && elapsed() - last_report > 0.5) {
                   last_report = elapsed();
                   std::fprintf(stderr, "\r[dsv4 run] tokens %lld/%lld, layer %lld/%lld, %.1f tokens/s   ",
                                (long long)done, (long long)total, (long long)layer + 1, (long long)cfg.n_layers,
                                double(done) / elapsed());
                 }
               });
    done += n;
  };
  const std::int64_t np = static_cast<std::int64_t>(prompt.size());
  for (std::int64_t s = 0; s < np;) {
    const std::int64_t n = chunk > 0 ? std::min(chunk, np - s) : np;
    step(prompt.data() + s, n);
    s += n;
  }
  for (const std::int64_t id : decode) step(&id, 1);
  if (last_report > 0)
    std::fprintf(stderr, "\r[dsv4 run] %lld tokens in %.2f s, %.1f tokens/s%30s\n", (long long)total, elapsed(),
                 double(total) / elapsed(), "");

  std::printf("model %s: %lld prompt + %lld decode tokens on %s%s, cache %.1f KB\n", dir.c_str(), (long long)np,
              (long long)decode.size(), be.c_str(), chunk > 0 ? (" in chunks of " + std::to_string(chunk)).c_str() : "",
              double(seq.cache_bytes()) / 1e3);
  if (a.has("logits")) {
    write_npy(a.str("logits"), all, total, V);
    std::printf("wrote %s: float32 [%lld, %lld]\n", a.str("logits").c_str(), (long long)total, (long long)V);
  }
  if (top > 0) {
    const float* last = all.data() + (total - 1) * V;
    std::vector<std::int64_t> order(static_cast<std::size_t>(V));
    std::iota(order.begin(), order.end(), 0);
    const std::int64_t kk = std::min(top, V);
    std::partial_sort(order.begin(), order.begin() + kk, order.end(), [&](std::int64_t x, std::int64_t y) {
      return last[x] > last[y] || (last[x] == last[y] && x < y);
    });
    const float mx = last[order[0]];
    double z = 0;
    for (std::int64_t i = 0; i < V; ++i) z += std::exp(double(last[i]) - mx);
    std::printf("top %lld next tokens after position %lld:\n", (long long)kk, (long long)total - 1);
    for (std::int64_t i = 0; i < kk; ++i)
      std::printf("  %8lld  logit %9.4f  p %.4f\n", (long long)order[static_cast<std::size_t>(i)],
                  last[order[static_cast<std::size_t>(i)]],
                  std::exp(double(last[order[static_cast<std::size_t>(i)]]) - mx) / z);
  }
  return 0;
}

}  // namespace dsv4::cli
