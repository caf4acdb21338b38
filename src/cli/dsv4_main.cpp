// dsv4 — the command-line tool. `dsv4 demo` walks through V4's number formats and quantizers on every backend this
// machine has; `synth` writes a random checkpoint in the official format, `info` describes a model directory
// (src/cli/cmd_model.cpp), `run` is the forward pass (cmd_run.cpp), `report` the FLOPs/KV calculator (cmd_report.cpp).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <tuple>
#include <random>
#include <string>
#include <vector>

#include "cmd_model.hpp"
#include "cmd_report.hpp"
#include "args.hpp"
#include "cmd_run.hpp"
#include "dsv4/cpu/quant.hpp"
#include "dsv4/io/file.hpp"
#include "dsv4/dsv4.hpp"

namespace {

using namespace dsv4;

const char* const kUsage =
    "usage: dsv4 <command> [options]        (dsv4 <command> --help for a command's options)\n"
    "  demo       the V4 number formats, block quantizers and Hadamard transform on each backend\n"
    "  synth      --preset NAME|--config FILE --out DIR [--seed S] [--sparse] [--shards N] [--no-mtp] [--force]\n"
    "             write a random checkpoint in the official format (HF config.json + safetensors)\n"
    "  info       --model DIR | --preset NAME [--verify]: config, layer schedule, bytes per dtype, weight check\n"
    "  run        --model DIR --prompt 5,17,301 [--decode 9,44] [--chunk N] [--backend ref|cpu]\n"
    "             [--threads N] [--logits OUT.npy] [--top K]: the forward pass, logits of every position\n"
    "  report     [--context N] [--json] [--plot DIR] [--layout deployed|bf16] [--fp4 W ...]\n"
    "             FLOPs per token and KV cache of V4-Pro / V4-Flash vs V3.2, next to the paper's figures\n"
    "  backends   which backends this build and machine offer\n"
    "  version    print the library version\n";

// Commands without options still answer --help; anything else after them is an error.
bool plain_command(int argc, char** argv, const char* usage) {
  cli::args a(argc, argv, 2, argv[1], {}, {}, usage);
  if (a.help()) a.print_usage();
  return a.help();
}

int backends() {
  const char* isa = cpu::simd_isa();
  std::printf("ref   scalar reference: always\n");
  std::printf("cpu   xsimd + oneTBB: %s\n", isa ? isa : "unavailable (falls back to ref)");
  std::printf("cuda  %s, %d device(s) visible\n", ops::cuda_built() ? "built" : "not built", ops::cuda_device_count());
  return 0;
}

void print_row(const char* label, const float* v, int n) {
  std::printf("  %-22s", label);
  for (int i = 0; i < n; ++i) std::printf(" %8.4g", v[i]);
  std::printf("\n");
}

int demo() {
  std::printf("dsv4 %s — DeepSeek-V4 number formats (spec §6)\n\n", kVersion);
  std::printf("FP4 E2M1 codes 0..7 decode to:");
  for (int c = 0; c < 8; ++c) std::printf(" %g", fp4_e2m1{static_cast<std::uint8_t>(c)}.to_float());
  std::printf("   (code 8 = -0)\n");
  std::printf("FP4 round-to-nearest-even ties:");
  for (float t : {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.f, 7.f})
    std::printf(" %g->%g", t, fp4_e2m1::from_float(t).to_float());
  std::printf("\nFP8 E4M3FN: max %g, min normal %g, min subnormal %g, 0x7F = %g\n",
              fp8_e4m3{0x7E}.to_float(), fp8_e4m3{0x08}.to_float(), fp8_e4m3{0x01}.to_float(),
              fp8_e4m3{0x7F}.to_float());
  std::printf("UE8M0: byte u means 2^(u-127): 127 -> %g, 120 -> %g\n\n", ue8m0{127}.to_float(),
              ue8m0{120}.to_float());

  // One KV-like row of 128 values, seeded: quantize to FP8 (block 64, the KV round trip) and FP4 (block 32, the
  // indexer), and show what the round trip does to the first values, on each backend.
  constexpr int K = 128;
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.f, 1.f);
  buffer x(dtype::f32, {1, K});
  auto xs = x.host_span<float>();
  for (int i = 0; i < K; ++i) xs[i] = nd(rng) * (i < 64 ? 0.05f : 3.f);
  print_row("x[0:6]", xs.data(), 6);

  const char* isa = cpu::simd_isa();
  for (backend be : {backend::ref, backend::cpu}) {
    if (be == backend::cpu && !isa) continue;
    exec ex;
    ex.prefer = be;
    for (auto [fmt, block, name] : {std::tuple{ops::quant_format::fp8_e4m3, 64, "fp8 e4m3 / block 64"},
                                    std::tuple{ops::quant_format::fp4_e2m1, 32, "fp4 e2m1 / block 32"}}) {
      buffer y(dtype::f32, {1, K});
      ops::block_round_trip(x, y, fmt, block, ex);
      auto ys = y.host_span<float>();
      double err = 0, ref = 0;
      for (int i = 0; i < K; ++i) {
        err += double(ys[i] - xs[i]) * (ys[i] - xs[i]);
        ref += double(xs[i]) * xs[i];
      }
      char label[64];
      std::snprintf(label, sizeof label, "%s %s", backend_name(be), name);
      print_row(label, ys.data(), 6);
      std::printf("  %-22s relative L2 error %.3g\n", "", std::sqrt(err / ref));
    }
  }

  buffer q(dtype::fp8_e4m3, {1, K}), s(dtype::ue8m0, {1, K / 64});
  ops::block_quantize(x, q, s, 64);
  std::printf("\nFP8 block scales (UE8M0 bytes) of the two 64-blocks: %u %u  (2^%d and 2^%d)\n",
              s.host_span<ue8m0>()[0].bits, s.host_span<ue8m0>()[1].bits, s.host_span<ue8m0>()[0].bits - 127,
              s.host_span<ue8m0>()[1].bits - 127);

  buffer h(dtype::f32, {1, K});
  ops::hadamard(x, h);
  ops::hadamard(h, h);
  double back = 0;
  for (int i = 0; i < K; ++i) back = std::fmax(back, std::fabs(h.host_span<float>()[i] - xs[i]));
  std::printf("Hadamard (n=128, scale 128^-1/2) applied twice returns x within %.2g (it is its own inverse)\n\n",
              back);
  return backends();
}

// One line on stderr: multi-line messages (lists of problems) are joined with "; ".
void print_error(const char* what) {
  std::string m = what;
  std::string out;
  out.reserve(m.size());
  for (std::size_t i = 0; i < m.size(); ++i) {
    if (m[i] != '\n') {
      out += m[i];
      continue;
    }
    while (i + 1 < m.size() && m[i + 1] == ' ') ++i;
    if (i + 1 < m.size() && m[i + 1] == '-') ++i;
    while (i + 1 < m.size() && m[i + 1] == ' ') ++i;
    out += !out.empty() && out.back() == ':' ? " " : "; ";
  }
  std::fprintf(stderr, "dsv4: %s\n", out.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "%s", kUsage);
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") return std::printf("%s", kUsage) < 0;
  // A checkpoint truncated while mapped raises SIGBUS: say which file instead of dying silently.
  io::install_sigbus_handler();
  try {
    if (cmd == "demo")
      return plain_command(argc, argv,
                           "usage: dsv4 demo\n  the V4 number formats, block quantizers and Hadamard transform on "
                           "each backend\n")
                 ? 0
                 : demo();
    if (cmd == "backends")
      return plain_command(argc, argv, "usage: dsv4 backends\n  which backends this build and machine offer\n")
                 ? 0
                 : backends();
    if (cmd == "synth") return cli::cmd_synth(argc, argv);
    if (cmd == "info") return cli::cmd_info(argc, argv);
    if (cmd == "report") return cli::cmd_report(argc, argv);
    if (cmd == "run") return cli::cmd_run(argc, argv);
    if (cmd == "version") {
      if (plain_command(argc, argv, "usage: dsv4 version\n  print the library version\n")) return 0;
      return std::printf("dsv4 %s\n", kVersion) < 0;
    }
    std::fprintf(stderr, "dsv4: unknown command \"%s\"\n%s", detail::printable(cmd, 60).c_str(), kUsage);
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "dsv4: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    print_error(e.what());
    return 1;
  }
}
