// The dsv4 tool's option parsing: `--key value` pairs and `--flag` switches after the subcommand.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "dsv4/error.hpp"

namespace dsv4::cli {

class args {
 public:
  // argv[first..] against the accepted options; `flags` take no value. Unknown options are an error naming the
  // accepted ones.
  args(int argc, char** argv, int first, const std::string& cmd, std::set<std::string> values,
       std::set<std::string> flags)
      : cmd_(cmd) {
    for (int i = first; i < argc; ++i) {
      const std::string a = argv[i];
      DSV4_CHECK(a.rfind("--", 0) == 0, cmd_, "unexpected argument \"", a, "\"", accepted(values, flags));
      const std::string key = a.substr(2);
      if (flags.count(key)) {
        flags_.insert(key);
      } else if (values.count(key)) {
        DSV4_CHECK(i + 1 < argc, cmd_, "option --", key, " needs a value");
        values_[key] = argv[++i];
      } else {
        DSV4_FAIL(cmd_, "unknown option --", key, accepted(values, flags));
      }
    }
  }

  bool has(const std::string& k) const { return values_.count(k) || flags_.count(k); }
  std::string str(const std::string& k) const {
    const auto it = values_.find(k);
    DSV4_CHECK(it != values_.end(), cmd_, "missing required option --", k);
    return it->second;
  }
  std::string str(const std::string& k, const std::string& def) const { return has(k) ? str(k) : def; }
  std::int64_t integer(const std::string& k, std::int64_t def) const {
    if (!values_.count(k)) return def;
    const std::string v = values_.at(k);
    std::size_t used = 0;
    std::int64_t out = 0;
    try {
      out = std::stoll(v, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    DSV4_CHECK(used == v.size() && !v.empty(), cmd_, "--", k, " expects an integer, got \"", v, "\"");
    return out;
  }

 private:
  static std::string accepted(const std::set<std::string>& values, const std::set<std::string>& flags) {
    std::string s = " (accepted:";
    for (const auto& v : values) s += " --" + v + " X";
    for (const auto& f : flags) s += " --" + f;
    return s + ")";
  }
  std::string cmd_;
  std::map<std::string, std::string> values_;
  std::set<std::string> flags_;
};

}  // namespace dsv4::cli
