// bench_io: opening checkpoints must be linear in the header size (issue: V4-Pro written as one file took 576 s with
// the DOM-with-callback parser). Measures, for 10k .. 200k tensors in ONE safetensors header:
//   BM_parse_header      dsv4's validating one-pass parser (io::parse_header), with a fitted complexity (O(N));
//   BM_json_dom_baseline a bare nlohmann DOM parse of the same text, no validation (the baseline, same run);
//   BM_open_file         safetensors_file on a sparse file on disk (pread of the header + parse + index);
// and BM_open_v4_one_file: the full V4-Flash (69,187 tensors) and V4-Pro (145,116) inventories as one sparse file,
// opened through io::checkpoint (index included). Names are the official ones (layers.L.ffn.experts.E.w1.weight).
#include <benchmark/benchmark.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "dsv4/io/safetensors.hpp"
#include "dsv4/model/config.hpp"
#include "dsv4/model/synth.hpp"

namespace {

using namespace dsv4;
namespace fs = std::filesystem;

// A header of n FP4-expert-like tensors (I8 [16, 8]) and their scales, official names, reference layout.
std::vector<io::tensor_data> tensors(std::int64_t n) {
  std::vector<io::tensor_data> ts;
  ts.reserve(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t layer = i / 1536, e = (i / 6) % 256, kind = i % 6;
    const char* w[] = {"w1.weight", "w1.scale", "w2.weight", "w2.scale", "w3.weight", "w3.scale"};
    const bool scale = kind % 2 == 1;
    ts.push_back({"layers." + std::to_string(layer) + ".ffn.experts." + std::to_string(e) + "." + w[kind],
                  scale ? io::st_dtype::F8_E8M0 : io::st_dtype::I8, scale ? std::vector<std::int64_t>{16, 1}
                                                                          : std::vector<std::int64_t>{16, 8},
                  {}});
  }
  return ts;
}

struct file_case {
  fs::path path;
  std::string header;  // the JSON text
  std::uint64_t data = 0;
};

const file_case& one_file(std::int64_t n) {
  static std::map<std::int64_t, file_case> cache;
  auto it = cache.find(n);
  if (it != cache.end()) return it->second;
  file_case c;
  c.path = fs::temp_directory_path() / ("dsv4_bench_io_" + std::to_string(n) + ".safetensors");
  const auto ts = tensors(n);
  io::write_safetensors(c.path, ts);  // data left as holes: a sparse file
  const io::safetensors_file f(c.path);
  std::FILE* fp = std::fopen(c.path.c_str(), "rb");
  c.header.resize(f.hdr().header_len);
  std::fseek(fp, 8, SEEK_SET);
  if (std::fread(c.header.data(), 1, c.header.size(), fp) != c.header.size()) std::abort();
  std::fclose(fp);
  c.data = f.file_size() - 8 - f.hdr().header_len;
  return cache.emplace(n, std::move(c)).first->second;
}

void BM_parse_header(benchmark::State& st) {
  const file_case& c = one_file(st.range(0));
  for (auto _ : st) benchmark::DoNotOptimize(io::parse_header(c.header, c.data, "bench"));
  st.SetComplexityN(st.range(0));
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * static_cast<std::int64_t>(c.header.size()));
  st.counters["tensors/s"] = benchmark::Counter(double(st.range(0)), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_json_dom_baseline(benchmark::State& st) {
  const file_case& c = one_file(st.range(0));
  for (auto _ : st) benchmark::DoNotOptimize(nlohmann::json::parse(c.header));
  st.SetComplexityN(st.range(0));
  st.SetBytesProcessed(static_cast<std::int64_t>(st.iterations()) * static_cast<std::int64_t>(c.header.size()));
}

void BM_open_file(benchmark::State& st) {
  const file_case& c = one_file(st.range(0));
  for (auto _ : st) {
    io::safetensors_file f(c.path);
    benchmark::DoNotOptimize(f.find("layers.0.ffn.experts.0.w1.weight"));
  }
  st.SetComplexityN(st.range(0));
}

void BM_open_v4_one_file(benchmark::State& st, const char* preset) {
  const fs::path dir = fs::temp_directory_path() / (std::string("dsv4_bench_io_") + preset);
  model::synth_options opt;
  opt.sparse = true;
  opt.shards = 1;
  opt.overwrite = true;
  const auto r = model::synthesize(model::preset(preset), dir, opt);
  for (auto _ : st) {
    const io::checkpoint c = io::checkpoint::open(dir);
    benchmark::DoNotOptimize(c.shard_count());
  }
  st.counters["tensors"] = double(r.tensors);
  st.counters["header_MB"] = double(io::checkpoint::open(dir).header_bytes_read()) / 1e6;
  fs::remove_all(dir);
}

BENCHMARK(BM_parse_header)->Arg(10000)->Arg(50000)->Arg(100000)->Arg(200000)->Unit(benchmark::kMillisecond)
    ->Complexity(benchmark::oN);
BENCHMARK(BM_json_dom_baseline)->Arg(10000)->Arg(50000)->Arg(100000)->Arg(200000)->Unit(benchmark::kMillisecond)
    ->Complexity(benchmark::oN);
BENCHMARK(BM_open_file)->Arg(10000)->Arg(50000)->Arg(100000)->Arg(200000)->Unit(benchmark::kMillisecond)
    ->Complexity(benchmark::oN);
BENCHMARK_CAPTURE(BM_open_v4_one_file, v4_flash, "v4-flash")->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK_CAPTURE(BM_open_v4_one_file, v4_pro, "v4-pro")->Unit(benchmark::kMillisecond)->Iterations(3);

}  // namespace

BENCHMARK_MAIN();
