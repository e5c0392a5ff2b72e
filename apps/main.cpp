// The `sonar` program: dispatches to a registered subcommand; every error becomes one line on stderr and a
// non-zero exit code.
#include <cstdio>
#include <exception>
#include <string>

#include "apps/command.h"
#include "tensor/error.h"

namespace sonar::app {

std::map<std::string, Command>& registry() {
  static std::map<std::string, Command> r;
  return r;
}

Args::Args(int argc, char** argv, const std::set<std::string>& options, const std::set<std::string>& switches) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      help_ = true;
      continue;
    }
    if (a.rfind("--", 0) == 0 && a.size() > 2) {
      std::string key = a.substr(2), value;
      auto eq = key.find('=');
      bool inline_value = eq != std::string::npos;
      if (inline_value) {
        value = key.substr(eq + 1);
        key = key.substr(0, eq);
      }
      if (switches.count(key)) {
        SONAR_CHECK(!inline_value, "--", key, " takes no value");
        values_.insert_or_assign(key, std::string(1, '1'));  // (a literal here trips GCC 12's -Wrestrict false positive)
      } else if (options.count(key)) {
        if (!inline_value) {
          SONAR_CHECK(i + 1 < argc, "--", key, " needs a value");
          value = argv[++i];
        }
        values_[key] = value;
      } else {
        SONAR_FAIL("unknown flag --", key, " (see --help)");
      }
      continue;
    }
    positional_.push_back(a);
  }
}

bool Args::has(const std::string& name) const { return values_.count(name) > 0; }

std::string Args::get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

std::string Args::require(const std::string& name) const {
  auto it = values_.find(name);
  SONAR_CHECK(it != values_.end(), "missing required flag --", name, " (see --help)");
  return it->second;
}

double Args::get_double(const std::string& name, double fallback) const {
  if (!has(name)) return fallback;
  std::string v = get(name);
  try {
    size_t used = 0;
    double d = std::stod(v, &used);
    SONAR_CHECK(used == v.size(), "");
    return d;
  } catch (...) {
    SONAR_FAIL("--", name, ": expected a number, got '", v, "'");
  }
}

long long Args::get_int(const std::string& name, long long fallback) const {
  if (!has(name)) return fallback;
  std::string v = get(name);
  try {
    size_t used = 0;
    long long d = std::stoll(v, &used);
    SONAR_CHECK(used == v.size(), "");
    return d;
  } catch (...) {
    SONAR_FAIL("--", name, ": expected an integer, got '", v, "'");
  }
}

}  // namespace sonar::app

static void print_overview() {
  std::printf("sonar: continual self-supervised pre-training of BEATs audio models on the CPU\n\n"
              "usage: sonar COMMAND [flags]   (sonar COMMAND --help for a command's flags)\n\ncommands:\n");
  for (auto& [name, c] : sonar::app::registry()) std::printf("  %-12s %s\n", name.c_str(), c.summary.c_str());
}

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    print_overview();
    return argc < 2 ? 2 : 0;
  }
  auto& reg = sonar::app::registry();
  auto it = reg.find(argv[1]);
  if (it == reg.end()) {
    std::fprintf(stderr, "sonar: unknown command '%s' (sonar --help lists them)\n", argv[1]);
    return 2;
  }
  try {
    return it->second.run(argc - 1, argv + 1);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sonar %s: error: %s\n", argv[1], e.what());
    return 1;
  }
}
