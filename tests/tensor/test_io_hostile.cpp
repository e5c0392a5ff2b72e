// Hostile .npy, .npz and safetensors files, built on the fly: headers claiming 10^12 elements or shapes
// whose strides overflow, a safetensors header length of 1 GB in a file that really is that large (sparse),
// a header nested 10^5 deep, and .npz entries that lie about their inflated size. Each must give one
// sonar::Error naming the file without raising the peak resident memory by more than a few MB. Not here:
// well-formed files (test_io.cpp) and the .pt reader (tests/nn/test_checkpoint_hostile.cpp).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "tensor/io.h"
#include "tensor/zip_reader.h"
#include "tests/hostile_util.h"
#include "tests/test_util.h"

using namespace sonar;
using testutil::expect_error;
using testutil::TempDir;

// Refusing any of these files must not raise the peak resident memory by more than this.
constexpr double kHostileMaxGrowthMb = 8.0;

namespace {

std::string npy(const std::string& dict) {
  std::string header = dict;
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  return std::string("\x93NUMPY\x01\x00", 8) + testutil::le_bytes(header.size(), 2) + header;
}

// A file of `size` bytes whose first bytes are `head` and the rest a hole (no disk, no page cache).
void sparse_file(const std::string& path, const std::string& head, uint64_t size) {
  write_file_atomic(path, head);
  std::filesystem::resize_file(path, size);
}

}  // namespace

TEST(HostileNpy, HugeClaimsAreRefusedFromTheHeader) {
  TempDir dir;
  write_file_atomic(dir.file("tera.npy"), npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 1000000), }"));
  testutil::expect_peak_growth_below(kHostileMaxGrowthMb, "npy of 10^12 elements", [&] {
    expect_error([&] { load_npy(dir.file("tera.npy")); }, {"tera.npy", "truncated", "needs 4000000000000 data bytes"});
  });
  // Empty, but its row-major strides would overflow int64.
  write_file_atomic(dir.file("strides.npy"),
                    npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4611686018427387904, 8), }"));
  expect_error([&] { load_npy(dir.file("strides.npy")); }, {"strides.npy", "too large"});
  // A malformed header of 1 MB is quoted only in part.
  const std::string junk = npy("{'descr': '<f4', " + std::string(1 << 20, 'x') + "}");
  const std::string msg = testutil::error_of([&] { load_npy_bytes(junk, "junk.npy"); });
  EXPECT_NE(msg.find("junk.npy"), std::string::npos) << msg;
  EXPECT_LT(msg.size(), 1000u);
}

TEST(HostileSafetensors, GigabyteHeaderIsRefusedBeforeReading) {
  TempDir dir;
  // The header length says 1 GB and the file really is 1 GB + 8 (sparse): refused after 8 bytes.
  const uint64_t hlen = uint64_t{1} << 30;
  sparse_file(dir.file("big.safetensors"), testutil::le_bytes(hlen, 8) + "{", hlen + 8);
  testutil::expect_peak_growth_below(kHostileMaxGrowthMb, "safetensors header of 1 GB", [&] {
    expect_error([&] { load_safetensors(dir.file("big.safetensors")); },
                 {"big.safetensors", "declares a header of 1073741824 bytes", "limit 104857600"});
  });
  // A claim past the file's end.
  write_file_atomic(dir.file("short.safetensors"), testutil::le_bytes(4096, 8) + "{}");
  expect_error([&] { load_safetensors(dir.file("short.safetensors")); }, {"short.safetensors", "truncated"});
}

TEST(HostileSafetensors, DeepHeaderIsRefusedWhileParsing) {
  std::string json = std::string(100000, '[') + std::string(100000, ']');
  const std::string bytes = testutil::le_bytes(json.size(), 8) + json;
  testutil::expect_peak_growth_below(kHostileMaxGrowthMb, "safetensors header nested 10^5 deep", [&] {
    expect_error([&] { load_safetensors_bytes(bytes, "deep.safetensors"); },
                 {"deep.safetensors", "nests deeper than 8", "kSafetensorsMaxDepth"});
  });
}

TEST(HostileNpz, EntryThatLiesAboutItsSizeIsRefusedBeforeInflating) {
  const std::string small = npy("{'descr': '|u1', 'fortran_order': False, 'shape': (64,), }") + std::string(64, '\0');
  std::string z = testutil::zip_bytes({{"x.npy", small, true}});
  testutil::patch_declared_size(z, "x.npy", 1u << 30);
  testutil::expect_peak_growth_below(kHostileMaxGrowthMb, "npz entry claiming 1 GiB", [&] {
    expect_error([&] { load_npz_bytes(z, "bomb.npz"); }, {"bomb.npz", "x.npy", "kMaxDeflateRatio"});
  });
  // Declared shorter than the data: read, then refused (the data runs past its declared size).
  std::string shorter = testutil::zip_bytes({{"x.npy", small, true}});
  testutil::patch_declared_size(shorter, "x.npy", 100);
  expect_error([&] { load_npz_bytes(shorter, "short.npz"); }, {"short.npz", "x.npy", "cannot read"});
  // The honest archive loads.
  EXPECT_EQ(load_npz_bytes(testutil::zip_bytes({{"x.npy", small, true}}), "ok.npz").at("x").numel(), 64);
}
