// Error reporting for the whole framework: one exception type and a check macro whose message names the
// op, the shapes and the offending value. Nothing in the library aborts the process on bad input.
#pragma once
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace sonar {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Thrown when a long pass ends because the user asked the run to stop (Ctrl-C): nothing is wrong, and the
// command that catches it says so and exits as a stopped run, not as an error.
class Stopped : public Error {
 public:
  explicit Stopped(const std::string& what) : Error(what) {}
};

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

// "[2, 3, 4]"
std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace sonar

// SONAR_CHECK(cond, "op: message ", value, ...) throws sonar::Error with the concatenated message.
#define SONAR_CHECK(cond, ...)                                       \
  do {                                                               \
    if (!(cond)) throw ::sonar::Error(::sonar::detail::concat(__VA_ARGS__)); \
  } while (0)

#define SONAR_FAIL(...) throw ::sonar::Error(::sonar::detail::concat(__VA_ARGS__))
