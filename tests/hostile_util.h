// Helpers for the hostile-file tests of several layers: the growth of the process's peak resident memory
// while a function runs (Linux: /proc/self/clear_refs resets the peak, /proc/self/status reports it), and
// zip archives whose central directory and local headers lie about an entry's sizes. Header-only and
// test-only; not a test itself and not the fuzz harnesses (fuzz/).
#pragma once
#include <gtest/gtest.h>
#include <zip.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace sonar::testutil {

// A field of /proc/self/status in kB ("VmHWM", "VmRSS"), or -1.
inline long proc_status_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string key = std::string(field) + ":";
  while (std::getline(in, line))
    if (line.rfind(key, 0) == 0) return std::stol(line.substr(key.size()));
  return -1;
}

// How far the peak resident set rose above the resident set at the start while `fn` ran, in MB; -1 when the
// kernel does not let this process reset its peak (then the caller cannot measure and says so).
inline double peak_rss_growth_mb(const std::function<void()>& fn) {
  {
    std::ofstream clear("/proc/self/clear_refs");
    if (!clear.good()) return -1;
    clear << "5";  // resets VmHWM to the current VmRSS (Linux >= 4.0)
    clear.flush();
    if (!clear.good()) return -1;
  }
  const long before = proc_status_kb("VmRSS");
  fn();
  const long peak = proc_status_kb("VmHWM");
  if (before < 0 || peak < 0) return -1;
  return static_cast<double>(peak - before) / 1024.0;
}

// Runs `fn` and expects the peak resident memory to rise by at most `limit_mb`; prints the rise (or that it
// cannot be measured here, in which case only `fn`'s own checks apply).
inline void expect_peak_growth_below(double limit_mb, const char* what, const std::function<void()>& fn) {
  const double mb = peak_rss_growth_mb(fn);
  if (mb < 0) {
    std::printf("note: %s: peak memory not measurable here (/proc/self/clear_refs)\n", what);
    return;
  }
  std::printf("%s: peak resident memory +%.1f MB (limit %.0f MB)\n", what, mb, limit_mb);
  EXPECT_LE(mb, limit_mb) << what;
}

inline std::string le_bytes(uint64_t v, int n) {
  std::string s(static_cast<size_t>(n), '\0');
  for (int k = 0; k < n; ++k) s[k] = static_cast<char>((v >> (8 * k)) & 0xff);
  return s;
}

// A zip (libzip, in memory) of `entries` (name, bytes, deflate?).
inline std::string zip_bytes(const std::vector<std::tuple<std::string, std::string, bool>>& entries) {
  zip_error_t ze;
  zip_error_init(&ze);
  zip_source_t* mem = zip_source_buffer_create(nullptr, 0, 0, &ze);
  zip_source_keep(mem);
  zip_t* z = zip_open_from_source(mem, ZIP_TRUNCATE, &ze);
  EXPECT_NE(z, nullptr);
  for (const auto& [name, bytes, deflate] : entries) {
    zip_source_t* s = zip_source_buffer(z, bytes.data(), bytes.size(), 0);
    const zip_int64_t idx = zip_file_add(z, name.c_str(), s, ZIP_FL_OVERWRITE);
    EXPECT_GE(idx, 0);
    zip_set_file_compression(z, static_cast<zip_uint64_t>(idx), deflate ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 0);
  }
  EXPECT_EQ(zip_close(z), 0);
  zip_source_open(mem);
  zip_source_seek(mem, 0, SEEK_END);
  const zip_int64_t size = zip_source_tell(mem);
  zip_source_seek(mem, 0, SEEK_SET);
  std::string out(static_cast<size_t>(size), '\0');
  EXPECT_EQ(zip_source_read(mem, out.data(), out.size()), size);
  zip_source_close(mem);
  zip_source_free(mem);
  zip_error_fini(&ze);
  return out;
}

// Rewrites the uncompressed size that the local header and the central directory record of entry `name`
// declare (a 32-bit field each), leaving the data alone: a zip that lies about what an entry inflates to.
inline void patch_declared_size(std::string& zip, const std::string& name, uint32_t size) {
  int patched = 0;
  for (size_t pos = 0; (pos = zip.find("PK", pos)) != std::string::npos; ++pos) {
    if (zip.compare(pos, 4, "PK\x03\x04") == 0 && zip.compare(pos + 30, name.size(), name) == 0 &&
        static_cast<uint8_t>(zip[pos + 26]) + 256 * static_cast<uint8_t>(zip[pos + 27]) == name.size()) {
      zip.replace(pos + 22, 4, le_bytes(size, 4));
      ++patched;
    } else if (zip.compare(pos, 4, "PK\x01\x02") == 0 && zip.compare(pos + 46, name.size(), name) == 0 &&
               static_cast<uint8_t>(zip[pos + 28]) + 256 * static_cast<uint8_t>(zip[pos + 29]) == name.size()) {
      zip.replace(pos + 24, 4, le_bytes(size, 4));
      ++patched;
    }
  }
  EXPECT_EQ(patched, 2) << "entry '" << name << "' not found in both headers";
}

}  // namespace sonar::testutil
