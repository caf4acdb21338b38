// The dsv4 tool's option parsing: `--key value` pairs and `--flag` switches after the subcommand, `--help` for the
// subcommand's usage, integers read whole and range-checked (a value outside the range is an error, never ignored).
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "dsv4/error.hpp"

namespace dsv4::cli {

class args {
 public:
  // argv[first..] against the accepted options; `flags` take no value. Unknown options are an error naming the
  // accepted ones. `usage` is printed by --help (or -h), which wins over everything else on the line.
  args(int argc, char** argv, int first, const std::string& cmd, std::set<std::string> values,
       std::set<std::string> flags, std::string usage)
      : cmd_(cmd), usage_(std::move(usage)) {
    for (int i = first; i < argc; ++i)
      if (std::string(argv[i]) == "--help" || std::string(argv[i]) == "-h") help_ = true;
    if (help_) return;
    for (int i = first; i < argc; ++i) {
      const std::string a = argv[i];
      DSV4_CHECK(a.rfind("--", 0) == 0, cmd_, "unexpected argument \"", detail::printable(a, 60), "\"",
                 accepted(values, flags));
      const std::string key = a.substr(2);
      if (flags.count(key)) {
        flags_.insert(key);
      } else if (values.count(key)) {
        DSV4_CHECK(i + 1 < argc, cmd_, "option --", key, " needs a value");
        values_[key] = argv[++i];
      } else {
        DSV4_FAIL(cmd_, "unknown option --", detail::printable(key, 60), accepted(values, flags));
      }
    }
  }

  // --help was asked for: print the usage on stdout; the command returns 0.
  bool help() const { return help_; }
  int print_usage() const {
    std::printf("%s", usage_.c_str());
    return 0;
  }

  bool has(const std::string& k) const { return values_.count(k) || flags_.count(k); }
  std::string str(const std::string& k) const {
    const auto it = values_.find(k);
    DSV4_CHECK(it != values_.end(), cmd_, "missing required option --", k, " (dsv4 ", cmd_, " --help)");
    return it->second;
  }
  std::string str(const std::string& k, const std::string& def) const { return has(k) ? str(k) : def; }
  // --k as an integer in [lo, hi]; `def` when absent.
  std::int64_t integer(const std::string& k, std::int64_t def, std::int64_t lo, std::int64_t hi) const {
    if (!values_.count(k)) return def;
    const std::string v = values_.at(k);
    std::size_t used = 0;
    long long out = 0;
    try {
      out = std::stoll(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    DSV4_CHECK(used == v.size() && !v.empty(), cmd_, "--", k, " expects an integer, got \"",
               detail::printable(v, 60), "\"");
    DSV4_CHECK(out >= lo && out <= hi, cmd_, "--", k, " ", out, " is outside [", lo, ", ", hi, "]");
    return out;
  }

 private:
  static std::string accepted(const std::set<std::string>& values, const std::set<std::string>& flags) {
    std::string s = " (accepted:";
    for (const auto& v : values) s += " --" + v + " X";
    for (const auto& f : flags) s += " --" + f;
    return s + " --help)";
  }
  std::string cmd_, usage_;
  bool help_ = false;
  std::map<std::string, std::string> values_;
  std::set<std::string> flags_;
};

}  // namespace dsv4::cli
