// Subcommand registry and flag parsing for the `sonar` program. Each subcommand lives in its own file
// (apps/cmd_*.cpp) and registers itself with SONAR_COMMAND; main.cpp dispatches. Apps stay thin: they parse
// flags and call the libraries.
#pragma once
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace sonar::app {

// Parsed command line: `--key value` options, `--flag` switches, and positionals, checked against the
// flags a command declares so a typo is an error rather than silently ignored.
class Args {
 public:
  // `options` take a value, `switches` don't. Throws sonar::Error on an unknown or incomplete flag.
  Args(int argc, char** argv, const std::set<std::string>& options, const std::set<std::string>& switches);
  bool has(const std::string& name) const;  // option given or switch set
  std::string get(const std::string& name, const std::string& fallback = "") const;
  std::string require(const std::string& name) const;  // throws "missing --name"
  double get_double(const std::string& name, double fallback) const;
  long long get_int(const std::string& name, long long fallback) const;
  const std::vector<std::string>& positional() const { return positional_; }
  bool help() const { return help_; }

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
  bool help_ = false;
};

struct Command {
  std::string name;
  std::string summary;  // one line for `sonar --help`
  std::string usage;    // full help text for `sonar NAME --help`
  std::function<int(int argc, char** argv)> run;  // argv[0] is the subcommand name
};

std::map<std::string, Command>& registry();

struct Registrar {
  explicit Registrar(Command c) { registry()[c.name] = std::move(c); }
};

}  // namespace sonar::app

#define SONAR_CONCAT_INNER(a, b) a##b
#define SONAR_CONCAT(a, b) SONAR_CONCAT_INNER(a, b)
#define SONAR_COMMAND(...) \
  static ::sonar::app::Registrar SONAR_CONCAT(sonar_command_, __LINE__)(::sonar::app::Command{__VA_ARGS__})
