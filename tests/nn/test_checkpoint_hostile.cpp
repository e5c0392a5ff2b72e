// Hostile .pt files and pickles, built on the fly: deep nesting (lists, MARKs, the 10^6-deep file that used
// to crash `sonar info`), recursive structures, a storage record whose zip entry lies about its inflated
// size (the 1 GiB "bomb" that used to be inflated before it was refused), element counts that overflow, and
// views past their storage. Each must give one sonar::Error naming the file, and where it is measurable the
// peak resident memory must stay within a few MB. Not here: well-formed checkpoints
// (test_torch_checkpoint.cpp) and the fuzz harnesses (fuzz/).
#include <gtest/gtest.h>

#include <string>

#include "nn/pickle.h"
#include "nn/torch_checkpoint.h"
#include "tensor/io.h"
#include "tests/hostile_util.h"
#include "tests/test_util.h"

using namespace sonar;
using testutil::expect_error;
using testutil::TempDir;

// Refusing a hostile file may use this much more memory than the process had (the stack cap of
// kMaxPickleStack values is the largest allowance; everything else stays under 1 MB).
constexpr double kHostileMaxGrowthMb = 16.0;

namespace {

std::string pickle_header() { return "\x80\x02"; }
// A literal with embedded zero bytes, whole.
template <size_t N>
std::string raw(const char (&s)[N]) {
  return std::string(s, N - 1);
}
std::string repeat(const std::string& s, size_t n) {
  std::string out;
  out.reserve(s.size() * n);
  for (size_t i = 0; i < n; ++i) out += s;
  return out;
}
// Lists nested n deep as Python's pickler writes them: n EMPTY_LISTs, then n-1 APPENDs.
std::string nested_lists(size_t n) { return pickle_header() + repeat("]", n) + repeat("a", n - 1) + "."; }

std::string str(const std::string& v) { return "X" + testutil::le_bytes(v.size(), 4) + v; }
std::string global(const std::string& m, const std::string& n) { return "c" + m + "\n" + n + "\n"; }
std::string long8(int64_t v) { return "\x8a\x08" + testutil::le_bytes(static_cast<uint64_t>(v), 8); }

// torch._utils._rebuild_tensor_v2(storage '0' (FloatStorage of `numel`), 0, (size,), (1,), False, OrderedDict())
std::string tensor_pickle(int64_t numel, int64_t size) {
  const std::string storage = "(" + str("storage") + global("torch", "FloatStorage") + str("0") + str("cpu") +
                              long8(numel) + "tQ";
  return pickle_header() + global("torch._utils", "_rebuild_tensor_v2") + "(" + storage + long8(0) + "(" + long8(size) +
         "t(" + long8(1) + "t\x89" + global("collections", "OrderedDict") + ")R" + "tR.";
}


}  // namespace

TEST(HostilePickle, NestingTooDeepIsRefusedByDepth) {
  // 1001 lists: within the stack cap, one level past kMaxPickleDepth.
  const std::string p = nested_lists(kMaxPickleDepth + 1);
  expect_error([&] { unpickle_torch(p, nullptr, "deep.pkl"); },
               {"deep.pkl", "0x61 (APPEND)", "more than 1000 deep", "kMaxPickleDepth"});
  // Exactly kMaxPickleDepth levels still load, and walk and free without trouble.
  const PyValue ok = unpickle_torch(nested_lists(kMaxPickleDepth), nullptr, "ok.pkl");
  EXPECT_EQ(ok.depth(), kMaxPickleDepth);
  EXPECT_EQ(ok.repr(20), std::string(20, '[') + "...");
}

TEST(HostilePickle, MillionDeepListsAndMarksStayBounded) {
  // The file that crashed `sonar info`: stopped by the stack cap long before any nesting happens.
  const std::string lists = nested_lists(1000000);
  testutil::expect_peak_growth_below(kHostileMaxGrowthMb, "10^6 nested lists", [&] {
    expect_error([&] { unpickle_torch(lists, nullptr, "million.pkl"); },
                 {"million.pkl", "0x5d (EMPTY_LIST)", "kMaxPickleStack"});
  });
  // 10^5 MARKs then LISTs: MARKs open at once are capped too.
  const std::string marks = pickle_header() + repeat("(", 100000) + repeat("l", 100000) + ".";
  testutil::expect_peak_growth_below(kHostileMaxGrowthMb, "10^5 MARKs", [&] {
    expect_error([&] { unpickle_torch(marks, nullptr, "marks.pkl"); },
                 {"marks.pkl", "0x28 (MARK)", "MARKs open at once", "kMaxPickleDepth"});
  });
}

TEST(HostilePickle, RecursiveStructuresAreRefused) {
  // l = []; l.append(l)
  expect_error([&] { unpickle_torch(pickle_header() + raw("]q\x00h\x00" "a."), nullptr, "self.pkl"); },
               {"self.pkl", "0x61 (APPEND)", "inside itself"});
  // a = []; b = [a]; a.append(b): a is modified after it was placed inside b.
  expect_error([&] { unpickle_torch(pickle_header() + raw("]q\x00]q\x01h\x00" "a0h\x01" "a."), nullptr, "cycle.pkl"); },
               {"cycle.pkl", "already sits inside another container"});
  // Sharing without a cycle is fine: b = [a, a].
  const PyValue v = unpickle_torch(pickle_header() + raw("]q\x00(K\x01" "e]q\x01(h\x00h\x00" "e."), nullptr, "shared.pkl");
  EXPECT_EQ(v.size(), 2u);
  EXPECT_EQ(v.at(size_t{1}).at(size_t{0}).as_int(), 1);
}

TEST(HostilePickle, DupOfAHugeStringSharesIt) {
  // A 4 MB string duplicated 30000 times: copies would need 120 GB; shared handles need nothing.
  const std::string p = pickle_header() + str(std::string(4 << 20, 'x')) + repeat("2", 30000) + "0.";
  testutil::expect_peak_growth_below(kHostileMaxGrowthMb, "DUP of a 4 MB string", [&] {
    const PyValue v = unpickle_torch(p, nullptr, "dup.pkl");
    EXPECT_EQ(v.as_string().size(), size_t{4} << 20);
  });
}

TEST(HostileCheckpoint, StorageSizesThatOverflowAreRefused) {
  auto no_record = [](const std::string&, uint64_t) -> std::string {
    ADD_FAILURE() << "a record was read";
    return "";
  };
  // 2^62 floats: numel * 4 wraps to 0 in 64 bits; refused from the claim alone.
  expect_error([&] { unpickle_torch(tensor_pickle(int64_t{1} << 62, 1), no_record, "wrap.pkl"); },
               {"wrap.pkl", "storage '0'", "kMaxStorageBytes"});
  // A view of 2^62 elements with stride 1 over 4 elements.
  auto four = [](const std::string&, uint64_t need) { return std::string(need, '\0'); };
  expect_error([&] { unpickle_torch(tensor_pickle(4, int64_t{1} << 62), four, "view.pkl"); },
               {"view.pkl", "past the storage's end"});
}

TEST(HostileCheckpoint, InflationBombIsRefusedBeforeInflating) {
  TempDir dir;
  // The issue's file: a 64-byte deflated record whose headers claim 1 GiB, for a storage of 2^28 floats.
  std::string bomb = testutil::zip_bytes({{"archive/data.pkl", tensor_pickle(int64_t{1} << 28, 4), false},
                                          {"archive/data/0", std::string(64, '\0'), true}});
  testutil::patch_declared_size(bomb, "archive/data/0", 1u << 30);
  write_file_atomic(dir.file("bomb.pt"), bomb);
  testutil::expect_peak_growth_below(kHostileMaxGrowthMb, "1 GiB inflation claim", [&] {
    expect_error([&] { load_torch_checkpoint(dir.file("bomb.pt")); },
                 {"bomb.pt", "archive/data/0", "declares 1073741824 inflated bytes", "kMaxDeflateRatio"});
  });
  // The same claim for a storage of 16 floats: refused because the record does not match its storage.
  std::string liar = testutil::zip_bytes({{"archive/data.pkl", tensor_pickle(16, 4), false},
                                          {"archive/data/0", std::string(64, '\0'), true}});
  testutil::patch_declared_size(liar, "archive/data/0", 1u << 30);
  write_file_atomic(dir.file("liar.pt"), liar);
  expect_error([&] { load_torch_checkpoint(dir.file("liar.pt")); },
               {"liar.pt", "storage '0' needs 64 bytes", "declares 1073741824"});
  // A stored (uncompressed) record cannot be larger than its bytes in the file.
  std::string stored = testutil::zip_bytes({{"archive/data.pkl", tensor_pickle(int64_t{1} << 28, 4), false},
                                            {"archive/data/0", std::string(64, '\0'), false}});
  testutil::patch_declared_size(stored, "archive/data/0", 1u << 30);
  expect_error([&] { load_torch_checkpoint_bytes(stored, "stored.pt"); },
               {"stored.pt", "stored uncompressed but declares 1073741824 bytes for 64"});
  // A data.pkl claiming more than a deflate stream of its size can give.
  std::string pkl = testutil::zip_bytes({{"archive/data.pkl", nested_lists(10), true}});
  testutil::patch_declared_size(pkl, "archive/data.pkl", 1u << 30);
  expect_error([&] { load_torch_checkpoint_bytes(pkl, "pkl.pt"); }, {"pkl.pt", "archive/data.pkl", "kMaxDeflateRatio"});
  // The honest version of the bomb's layout loads (16 floats, deflated record).
  const std::string honest = testutil::zip_bytes({{"archive/data.pkl", tensor_pickle(16, 4), false},
                                                  {"archive/data/0", std::string(64, '\0'), true}});
  EXPECT_EQ(load_torch_checkpoint_bytes(honest, "honest.pt").as_tensor().numel(), 4);
}

TEST(HostileCheckpoint, OtherCompressionMethodsAreRefused) {
  std::string z = testutil::zip_bytes({{"archive/data.pkl", nested_lists(3), false}});
  // Method field: local header offset 8, central directory offset 10. 12 = bzip2.
  const size_t local = z.find("PK\x03\x04"), central = z.find("PK\x01\x02");
  z[local + 8] = 12;
  z[central + 10] = 12;
  expect_error([&] { load_torch_checkpoint_bytes(z, "bz.pt"); }, {"bz.pt", "compression method 12"});
}
