// `dsv4 report`: the paper's efficiency comparison (V4-Pro / V4-Flash vs V3.2 at 1M tokens) from the calculator,
// as text, JSON (--json) or Figure-1-style SVG charts (--plot DIR, plus PNG when gnuplot is installed).
#include "cmd_report.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "args.hpp"
#include "dsv4/model/config.hpp"
#include "dsv4/model/costs.hpp"

namespace dsv4::cli {

namespace {

using namespace dsv4::model;
using ojson = nlohmann::ordered_json;

// The report's headline numbers (spec §8.1: abstract, §1 and §2.3.4 of the technical report).
struct paper_row {
  const char* model;
  double flops_ratio, kv_ratio, kv_vs_gqa8;
  double total_params, active_params;  // published, in parameters
};
constexpr paper_row kPaper[] = {{"v4-pro", 0.27, 0.10, 0.02, 1.6e12, 49e9},
                                {"v4-flash", 0.10, 0.07, 0.02, 284e9, 13e9}};
constexpr double kV32Total = 671e9, kV32Active = 37e9;  // DeepSeek-V3 / V3.2 model cards

const std::int64_t kContexts[] = {4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288, 1048576};

struct model_costs {
  std::string name;
  model_config cfg;
  cost_report at;
  double fp8 = 0, kv = 0;
};

model_costs evaluate(const std::string& name, std::int64_t L, const cost_assumptions& a) {
  model_costs m{name, preset(name), {}, 0, 0};
  m.at = decode_costs(m.cfg, L, a);
  m.fp8 = m.at.flops_fp8(a.weights);
  m.kv = m.at.kv_total();
  return m;
}

std::string ctx_name(std::int64_t L) {
  char b[32];
  if (L >= 1048576 && L % 1048576 == 0) std::snprintf(b, sizeof b, "%lldM", (long long)(L / 1048576));
  else if (L >= 1024 && L % 1024 == 0) std::snprintf(b, sizeof b, "%lldK", (long long)(L / 1024));
  else std::snprintf(b, sizeof b, "%lld", (long long)L);
  return b;
}

// ---- SVG charts ----------------------------------------------------------------------------------------------------

struct series {
  std::string name, color;
  std::vector<double> y;
};

std::string svg_chart(const std::string& title, const std::string& ylabel, const std::vector<std::int64_t>& xs,
                      const std::vector<series>& ss) {
  const double W = 560, Hh = 380, l = 80, r = 20, t = 40, b = 60;
  double ymax = 0;
  for (const auto& s : ss)
    for (double v : s.y) ymax = std::max(ymax, v);
  // A round upper bound: the first of 1, 1.5, 2, 3, 4, 5, 6, 8, 10 times a power of ten that holds ymax.
  const double p = std::pow(10.0, std::floor(std::log10(ymax)));
  double top = 10 * p;
  for (double m : {1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0})
    if (ymax <= m * p) {
      top = m * p;
      break;
    }
  const double lx0 = std::log2(double(xs.front())), lx1 = std::log2(double(xs.back()));
  auto X = [&](std::int64_t x) { return l + (std::log2(double(x)) - lx0) / (lx1 - lx0) * (W - l - r); };
  auto Y = [&](double y) { return Hh - b - y / top * (Hh - t - b); };
  std::ostringstream o;
  o << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << Hh
    << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
  o << "<text x='" << W / 2 << "' y='22' text-anchor='middle' font-size='15'>" << title << "</text>\n";
  for (int i = 0; i <= 5; ++i) {
    const double v = top * i / 5, y = Y(v);
    o << "<line x1='" << l << "' x2='" << W - r << "' y1='" << y << "' y2='" << y << "' stroke='#ddd'/>\n";
    o << "<text x='" << l - 6 << "' y='" << y + 4 << "' text-anchor='end'>" << v << "</text>\n";
  }
  for (std::int64_t x : xs)
    o << "<text x='" << X(x) << "' y='" << Hh - b + 18 << "' text-anchor='middle'>" << ctx_name(x) << "</text>\n";
  o << "<text x='" << (l + W - r) / 2 << "' y='" << Hh - 18 << "' text-anchor='middle'>context length (tokens)</text>\n";
  o << "<text transform='translate(18," << (t + Hh - b) / 2 << ") rotate(-90)' text-anchor='middle'>" << ylabel
    << "</text>\n";
  o << "<line x1='" << l << "' x2='" << l << "' y1='" << t << "' y2='" << Hh - b << "' stroke='black'/>\n";
  o << "<line x1='" << l << "' x2='" << W - r << "' y1='" << Hh - b << "' y2='" << Hh - b << "' stroke='black'/>\n";
  for (std::size_t k = 0; k < ss.size(); ++k) {
    const auto& s = ss[k];
    o << "<polyline fill='none' stroke='" << s.color << "' stroke-width='2.5' points='";
    for (std::size_t i = 0; i < xs.size(); ++i) o << X(xs[i]) << ',' << Y(s.y[i]) << ' ';
    o << "'/>\n";
    for (std::size_t i = 0; i < xs.size(); ++i)
      o << "<circle cx='" << X(xs[i]) << "' cy='" << Y(s.y[i]) << "' r='3' fill='" << s.color << "'/>\n";
    const double ly = t + 14 + 18 * double(k);
    o << "<line x1='" << l + 14 << "' x2='" << l + 38 << "' y1='" << ly - 4 << "' y2='" << ly - 4 << "' stroke='"
      << s.color << "' stroke-width='2.5'/><text x='" << l + 44 << "' y='" << ly << "'>" << s.name << "</text>\n";
  }
  o << "</svg>\n";
  return o.str();
}

// A file written whole, checked: an error names the file when it cannot be created or written.
void write_file(const std::filesystem::path& p, const std::string& text) {
  std::ofstream f(p, std::ios::binary);
  DSV4_CHECK(f.good(), "report", "cannot create ", detail::printable(p.string(), 400));
  f << text;
  f.close();
  DSV4_CHECK(!f.fail(), "report", "write failed: ", detail::printable(p.string(), 400));
}

// gnuplot run on a script in `dir` with `dir` as its working directory, through fork + exec with an argument
// vector: no shell ever sees the directory name, and the script names only relative files. Returns false when
// gnuplot is not installed or fails.
bool run_gnuplot(const std::filesystem::path& dir) {
  const pid_t pid = ::fork();
  if (pid < 0) return false;
  if (pid == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    if (null >= 0) {
      ::dup2(null, 1);
      ::dup2(null, 2);
    }
    if (::chdir(dir.c_str()) != 0) ::_exit(127);
    char* const argv[] = {const_cast<char*>("gnuplot"), const_cast<char*>("report.gp"), nullptr};
    ::execvp("gnuplot", argv);
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

void write_plots(const std::string& dir_name, const cost_assumptions& a) {
  const std::filesystem::path dir(dir_name);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  DSV4_CHECK(!ec && std::filesystem::is_directory(dir, ec), "report", "cannot create the directory ",
             detail::printable(dir_name, 400), ec ? ": " + ec.message() : std::string());
  const std::vector<std::int64_t> xs(std::begin(kContexts), std::end(kContexts));
  const char* names[] = {"v3.2", "v4-pro", "v4-flash"};
  const char* colors[] = {"#888888", "#1f5fbf", "#e0801f"};
  const char* labels[] = {"DeepSeek-V3.2", "DeepSeek-V4-Pro", "DeepSeek-V4-Flash"};
  std::vector<series> flops, kv;
  std::ostringstream dat;
  dat << "# context  flops_fp8eq_T[v3.2 v4-pro v4-flash]  kv_GB[v3.2 v4-pro v4-flash]\n";
  for (int m = 0; m < 3; ++m) {
    flops.push_back({labels[m], colors[m], {}});
    kv.push_back({labels[m], colors[m], {}});
  }
  for (std::int64_t L : xs) {
    dat << L;
    std::vector<double> row;
    for (int m = 0; m < 3; ++m) {
      const model_costs c = evaluate(names[m], L, a);
      flops[static_cast<std::size_t>(m)].y.push_back(c.fp8 / 1e12);
      kv[static_cast<std::size_t>(m)].y.push_back(c.kv / 1e9);
      dat << ' ' << c.fp8 / 1e12;
      row.push_back(c.kv / 1e9);
    }
    for (double v : row) dat << ' ' << v;
    dat << '\n';
  }
  write_file(dir / "report.dat", dat.str());
  write_file(dir / "flops_per_token.svg",
             svg_chart("Single-token inference FLOPs (equivalent FP8)", "TFLOPs per token", xs, flops));
  write_file(dir / "kv_cache.svg", svg_chart("Accumulated KV cache (one sequence)", "KV cache (GB)", xs, kv));
  const std::string shown = detail::printable(dir_name, 400);
  std::printf("wrote %s/flops_per_token.svg, %s/kv_cache.svg, %s/report.dat\n", shown.c_str(), shown.c_str(),
              shown.c_str());
  std::ostringstream gp;
  gp << "set terminal pngcairo size 1100,420\nset output 'report.png'\nset multiplot layout 1,2\n"
     << "set logscale x 2\nset xlabel 'context length'\nset key top left\nset grid\n"
     << "set ylabel 'TFLOPs per token (eq. FP8)'\nplot for [i=2:4] 'report.dat' using 1:i with linespoints lw 2 "
     << "title word('V3.2 V4-Pro V4-Flash', i-1)\n"
     << "set ylabel 'KV cache (GB)'\nplot for [i=5:7] 'report.dat' using 1:i with linespoints lw 2 "
     << "title word('V3.2 V4-Pro V4-Flash', i-4)\n";
  write_file(dir / "report.gp", gp.str());
  if (run_gnuplot(dir)) std::printf("wrote %s/report.png (gnuplot)\n", shown.c_str());
  else std::printf("(gnuplot not installed or failed: SVG only)\n");
}

}  // namespace

const char* const kReportUsage =
    "usage: dsv4 report [--context N] [--json] [--plot DIR] [--layout deployed|bf16] [--fp4 W] [--fp8 W]\n"
    "                   [--bf16 W] [--fp32 W] [--no-elementwise] [--no-head] [--mtp]\n"
    "  FLOPs per decoded token and KV cache of V4-Pro / V4-Flash against V3.2 (and BF16 GQA8), next to the V4\n"
    "  paper's figures; the counting rules are in the README and include/dsv4/model/costs.hpp.\n"
    "  --context N     context length in [1, 2^30] (default 1048576)\n"
    "  --json          the figures as JSON\n"
    "  --plot DIR      flops_per_token.svg, kv_cache.svg and report.dat over context lengths (and report.png\n"
    "                  when gnuplot is installed)\n"
    "  --layout        KV layout: deployed (FP8 / FP4 caches, default) or bf16\n"
    "  --fp4 .. --fp32 weight of each precision in the FP8-equivalent sum (default 0.5, 1, 2, 4)\n"
    "  --no-elementwise, --no-head, --mtp   leave out elementwise ops / the head, count the MTP block\n";

int cmd_report(int argc, char** argv) {
  const args a(argc, argv, 2, "report", {"context", "plot", "layout", "fp4", "fp8", "bf16", "fp32"},
               {"json", "no-elementwise", "mtp", "no-head"}, kReportUsage);
  if (a.help()) return a.print_usage();
  cost_assumptions as;
  const std::string layout = a.str("layout", "deployed");
  DSV4_CHECK(layout == "deployed" || layout == "bf16", "report", "--layout ", detail::printable(layout, 40),
             " (expected deployed or bf16)");
  as.layout = layout == "bf16" ? kv_layout::bf16 : kv_layout::deployed;
  auto weight = [&](const char* k, double def) {
    if (!a.has(k)) return def;
    const std::string v = a.str(k);
    char* end = nullptr;
    const double w = std::strtod(v.c_str(), &end);
    DSV4_CHECK(!v.empty() && end && *end == 0 && w >= 0 && std::isfinite(w), "report", "--", k,
               " expects a finite weight >= 0, got \"", detail::printable(v, 40), "\"");
    return w;
  };
  as.weights = {weight("fp4", 0.5), weight("fp8", 1.0), weight("bf16", 2.0), weight("fp32", 4.0)};
  as.count_elementwise = !a.has("no-elementwise");
  as.count_mtp = a.has("mtp");
  as.count_head = !a.has("no-head");
  const std::int64_t L = a.integer("context", 1048576, 1, std::int64_t{1} << 30);

  if (a.has("plot")) {
    write_plots(a.str("plot"), as);
    return 0;
  }

  const model_costs base = evaluate("v3.2", L, as);
  std::vector<model_costs> v4 = {evaluate("v4-pro", L, as), evaluate("v4-flash", L, as)};

  if (a.has("json")) {
    ojson j;
    j["context"] = L;
    j["assumptions"] = {{"weights", {{"fp4", as.weights.fp4}, {"fp8", as.weights.fp8}, {"bf16", as.weights.bf16},
                                     {"fp32", as.weights.fp32}}},
                        {"kv_layout", layout}, {"count_elementwise", as.count_elementwise},
                        {"count_head", as.count_head}, {"count_mtp", as.count_mtp}};
    auto one = [&](const model_costs& m) {
      ojson o;
      if (m.name != "v3.2") {
        o["flops_ratio_vs_v3.2"] = m.fp8 / base.fp8;
        o["kv_ratio_vs_v3.2"] = m.kv / base.kv;
        o["kv_ratio_vs_gqa8_bf16"] = m.kv / gqa_kv_bytes(m.cfg.n_layers, L);
        for (const auto& p : kPaper)
          if (m.name == p.model)
            o["paper"] = {{"flops_ratio_vs_v3.2", p.flops_ratio}, {"kv_ratio_vs_v3.2", p.kv_ratio},
                          {"kv_ratio_vs_gqa8_bf16", p.kv_vs_gqa8}};
      }
      o["flops_per_token"] = m.at.flops_total();
      o["flops_per_token_fp8_equiv"] = m.fp8;
      o["kv_bytes"] = m.kv;
      ojson terms = ojson::array();
      for (const auto& t : m.at.flops)
        terms.push_back({{"term", t.name}, {"precision", precision_name(t.prec)}, {"flops", t.flops}});
      o["flops_terms"] = terms;
      ojson kvs = ojson::array();
      for (const auto& t : m.at.kv) kvs.push_back({{"term", t.name}, {"bytes", t.bytes}});
      o["kv_terms"] = kvs;
      const param_counts pc = count_params(m.cfg);
      o["params"] = {{"total", pc.total}, {"active", pc.active}, {"embedding", pc.embedding}, {"mtp", pc.mtp}};
      return o;
    };
    j["models"]["v4-pro"] = one(v4[0]);
    j["models"]["v4-flash"] = one(v4[1]);
    j["models"]["v3.2"] = one(base);
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }

  std::printf("DeepSeek-V4 vs DeepSeek-V3.2, one decoded token at a %lld-token context (%s)\n", (long long)L,
              ctx_name(L).c_str());
  std::printf("FLOPs in equivalent FP8 (FP4 x%g, FP8 x%g, BF16 x%g, FP32 x%g); KV cache in the %s layout.\n"
              "Counting rules: README \"FLOPs and KV-cache calculator\" and include/dsv4/model/costs.hpp.\n\n",
              as.weights.fp4, as.weights.fp8, as.weights.bf16, as.weights.fp32, kv_layout_name(as.layout));
  std::printf("%-9s %12s %8s %6s   %10s %8s %6s   %9s %6s\n", "model", "FLOPs/token", "vs V3.2", "paper", "KV cache",
              "vs V3.2", "paper", "vs GQA8", "paper");
  std::printf("%-9s %10.1f G %8s %6s   %7.2f GB %8s %6s\n", "v3.2", base.fp8 / 1e9, "100%", "", base.kv / 1e9, "100%",
              "");
  for (std::size_t i = 0; i < v4.size(); ++i) {
    const auto& m = v4[i];
    const auto& p = kPaper[i];
    std::printf("%-9s %10.1f G %7.1f%% %5.0f%%   %7.2f GB %7.1f%% %5.0f%%   %8.2f%% %5s\n", m.name.c_str(),
                m.fp8 / 1e9, 100 * m.fp8 / base.fp8, 100 * p.flops_ratio, m.kv / 1e9, 100 * m.kv / base.kv,
                100 * p.kv_ratio, 100 * m.kv / gqa_kv_bytes(m.cfg.n_layers, L), "~2%");
  }

  {
    // How much the headline depends on the weighting and the layout (spec §8.2 quotes 26.2% / 12.1% at 1x).
    const flops_weights flat{1, 1, 1, 1};
    cost_assumptions bf = as;
    bf.layout = kv_layout::bf16;
    const double b16 = decode_costs(base.cfg, L, bf).kv_total();
    const double pro16 = decode_costs(v4[0].cfg, L, bf).kv_total(), flash16 = decode_costs(v4[1].cfg, L, bf).kv_total();
    std::printf("\nSensitivity: every precision at x1 -> FLOPs %.1f%% (Pro) / %.1f%% (Flash) of V3.2; all-BF16 caches "
                "-> KV %.1f%% / %.1f%% of V3.2 (BF16 too), %.2f%% / %.2f%% of GQA8.\n",
                100 * v4[0].at.flops_fp8(flat) / base.at.flops_fp8(flat),
                100 * v4[1].at.flops_fp8(flat) / base.at.flops_fp8(flat), 100 * pro16 / b16, 100 * flash16 / b16,
                100 * pro16 / gqa_kv_bytes(v4[0].cfg.n_layers, L), 100 * flash16 / gqa_kv_bytes(v4[1].cfg.n_layers, L));
  }

  std::printf("\nBreakdown (raw GFLOPs per token, by precision; KV in MB):\n");
  for (const model_costs* m : std::initializer_list<const model_costs*>{&v4[0], &v4[1], &base}) {
    std::printf("  %s:", m->name.c_str());
    for (const auto& t : m->at.flops) std::printf("  %s %s %.2f", t.name.c_str(), precision_name(t.prec), t.flops / 1e9);
    std::printf("\n    KV:");
    for (const auto& t : m->at.kv) std::printf("  %s %.1f", t.name.c_str(), t.bytes / 1e6);
    std::printf("\n");
  }

  std::printf("\nOver context length (FLOPs per token in G eq. FP8 / KV cache in GB; ratios vs V3.2):\n");
  std::printf("%8s %22s %28s %28s\n", "context", "v3.2", "v4-pro", "v4-flash");
  for (std::int64_t c : kContexts) {
    const model_costs b = evaluate("v3.2", c, as), p = evaluate("v4-pro", c, as), f = evaluate("v4-flash", c, as);
    std::printf("%8s %9.1f G %7.2f GB   %7.1f G %6.2f GB (%3.0f%%/%3.0f%%)   %7.1f G %6.2f GB (%3.0f%%/%3.0f%%)\n",
                ctx_name(c).c_str(), b.fp8 / 1e9, b.kv / 1e9, p.fp8 / 1e9, p.kv / 1e9, 100 * p.fp8 / b.fp8,
                100 * p.kv / b.kv, f.fp8 / 1e9, f.kv / 1e9, 100 * f.fp8 / b.fp8, 100 * f.kv / b.kv);
  }

  std::printf("\nParameters from the config shapes (MTP excluded; active = what one token multiplies, embedding "
              "lookup excluded, head included):\n");
  for (std::size_t i = 0; i < v4.size(); ++i) {
    const param_counts pc = count_params(v4[i].cfg);
    std::printf("  %-8s total %7.1f B (published %.0f B, %+.1f%%)   active %5.2f B (published %.0f B, %+.1f%%)\n",
                v4[i].name.c_str(), pc.total / 1e9, kPaper[i].total_params / 1e9,
                100 * (pc.total / kPaper[i].total_params - 1), pc.active / 1e9, kPaper[i].active_params / 1e9,
                100 * (pc.active / kPaper[i].active_params - 1));
  }
  const param_counts pb = count_params(base.cfg);
  std::printf("  %-8s total %7.1f B (published %.0f B, %+.1f%%)   active %5.2f B (published %.0f B, %+.1f%%; "
              "with the embedding %.2f B)\n",
              "v3.2", pb.total / 1e9, kV32Total / 1e9, 100 * (pb.total / kV32Total - 1), pb.active / 1e9,
              kV32Active / 1e9, 100 * (pb.active / kV32Active - 1), (pb.active + pb.embedding) / 1e9);
  std::printf("  The published active counts are rounded to whole billions; no single rule (with or without the\n"
              "  embedding and head) puts both V4 models within 2%% of them (README, \"Parameter counts\").\n");
  return 0;
}

}  // namespace dsv4::cli
