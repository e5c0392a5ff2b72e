// Helpers shared by the audio tests: a unique temporary folder removed on destruction, and signal makers.
// Not a test itself (the build turns only test_*.cpp into programs).
#pragma once
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace sonar::audio::test_util {

// mkdtemp under /tmp; everything in it is deleted when the object goes away.
class TempDir {
 public:
  TempDir() {
    std::string templ = "/tmp/sonar_audio_test_XXXXXX";
    char* p = ::mkdtemp(templ.data());
    if (!p) throw std::runtime_error("mkdtemp failed");
    path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::vector<float> make_sine(int64_t n, double freq, double amp, double sr, double phase = 0.0) {
  std::vector<float> w(n);
  for (int64_t i = 0; i < n; ++i) w[i] = static_cast<float>(amp * std::sin(2 * M_PI * freq * i / sr + phase));
  return w;
}

// Writes `bytes` to `path`, creating missing parent folders.
inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
  std::ofstream f(path, std::ios::binary);
  f << bytes;
}

}  // namespace sonar::audio::test_util
