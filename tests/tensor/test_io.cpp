// Tests of tensor file I/O: .npy (numpy-written fixtures, hand-made headers, round trips), .npz, safetensors
// and the atomic writer. Not tested here: PyTorch .pt checkpoints (tests/nn/test_torch_checkpoint.cpp).
#include <gtest/gtest.h>
#include <unistd.h>
#include <zip.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "tensor/io.h"
#include "tests/test_util.h"

using namespace sonar;
namespace fs = std::filesystem;
using testutil::expect_error;
using testutil::TempDir;

static const std::string kFix = std::string(SONAR_FIXTURES_DIR) + "/beats_tiny/";

// A .npy file made by hand: magic, version, header length of 2 or 4 bytes, header dict, raw data.
static std::string make_npy(int major, const std::string& dict, const std::string& data) {
  std::string h = dict;
  const size_t len_bytes = major == 1 ? 2 : 4;
  const size_t base = 6 + 2 + len_bytes;
  while ((base + h.size() + 1) % 64 != 0) h += ' ';
  h += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  for (size_t k = 0; k < len_bytes; ++k) out += static_cast<char>((h.size() >> (8 * k)) & 0xff);
  return out + h + data;
}

template <class T>
static std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

static Tensor iota(const Shape& s) {
  std::vector<float> v(shape_numel(s));
  for (size_t i = 0; i < v.size(); ++i) v[i] = 0.5f * static_cast<float>(i) - 3.f;
  return from_vector(v, s);
}

static void expect_same(const Tensor& a, const Tensor& b) {
  ASSERT_EQ(a.dtype(), b.dtype());
  ASSERT_EQ(a.shape(), b.shape());
  if (a.dtype() == DType::Int64) EXPECT_EQ(a.to_vector<int64_t>(), b.to_vector<int64_t>());
  else EXPECT_EQ(a.to_vector<double>(), b.to_vector<double>());
}

// ------------------------------------------------------------------------------------------------------
// .npy files written by numpy (tests/fixtures/beats_tiny)

TEST(NpyFixtures, WaveIsFloat32WithKnownSamples) {
  Tensor w = load_npy(kFix + "wave.npy");
  ASSERT_EQ(w.dtype(), DType::Float32);
  ASSERT_EQ(w.shape(), (Shape{2, 16000}));
  // Exact values printed by numpy: repr(w[0, i].item()) (float32 widened to double, so exact).
  EXPECT_EQ(w.at({0, 0}), -0.005585928447544575);
  EXPECT_EQ(w.at({0, 1}), -0.001280762255191803);
  EXPECT_EQ(w.at({0, 2}), 0.055127665400505066);
  // Clip 1 is 11680 samples long and zero-padded after that (fixtures README).
  EXPECT_EQ(w.at({1, 11679}), 0.2865712344646454);
  for (int64_t i = 11680; i < 16000; ++i) ASSERT_EQ(w.at({1, i}), 0.0) << "sample " << i;
}

TEST(NpyFixtures, PaddingMaskIsOneExactlyFromSample11680OfClip1) {
  Tensor m = load_npy(kFix + "padding_mask.npy");
  ASSERT_EQ(m.dtype(), DType::UInt8);
  ASSERT_EQ(m.shape(), (Shape{2, 16000}));
  const uint8_t* b = m.bytes();
  for (int64_t i = 0; i < 16000; ++i) {
    ASSERT_EQ(b[i], 0) << "clip 0 sample " << i;
    ASSERT_EQ(b[16000 + i], i >= 11680 ? 1 : 0) << "clip 1 sample " << i;
  }
}

TEST(NpyFixtures, TokenizerLabelsAreInt64Codes) {
  Tensor l = load_npy(kFix + "tokenizer_labels_single.npy");
  ASSERT_EQ(l.dtype(), DType::Int64);
  ASSERT_EQ(l.shape(), (Shape{1, 48}));
  const auto v = l.to_vector<int64_t>();
  for (int64_t c : v) EXPECT_TRUE(c >= 0 && c < 64) << c;  // 64 codes (cases.json "quantizer")
  EXPECT_EQ(std::vector<int64_t>(v.begin(), v.begin() + 6), (std::vector<int64_t>{4, 5, 6, 27, 27, 27}));
}

TEST(NpyFixtures, Float64FbankReadsExactlyOrRoundedToFloat32) {
  NpyF64 f = load_npy_f64(kFix + "fbank64_0.npy");
  ASSERT_EQ(f.shape, (Shape{98, 128}));
  ASSERT_EQ(f.values.size(), 98u * 128u);
  // Values printed by numpy with repr() (17 significant digits: exact for a double).
  EXPECT_EQ(f.values[0], 12.159768290122491);
  EXPECT_EQ(f.values[1], 10.076062693955745);
  EXPECT_EQ(f.values[2], 13.519463892269401);
  EXPECT_EQ(f.values[97 * 128 + 127], 22.6869321489806);
  Tensor t = load_npy(kFix + "fbank64_0.npy");
  ASSERT_EQ(t.dtype(), DType::Float32);
  ASSERT_EQ(t.shape(), (Shape{98, 128}));
  const auto tv = t.to_vector<float>();
  for (size_t i = 0; i < tv.size(); ++i) ASSERT_EQ(tv[i], static_cast<float>(f.values[i])) << i;
  // The float32 fbank is a different computation, so only its shape must agree.
  EXPECT_EQ(load_npy(kFix + "fbank_0.npy").shape(), (Shape{98, 128}));
  expect_error([] { load_npy_f64(kFix + "fbank_0.npy"); }, {"load_npy_f64", "fbank_0.npy", "float64"});
}

TEST(NpyFixtures, WriterReproducesNumpyBytes) {
  // numpy 1.x writes format 1.0 with a 64-byte aligned header; our writer must produce the same file.
  TempDir dir;
  for (const char* name : {"wave.npy", "padding_mask.npy", "tokenizer_labels_single.npy", "features_single.npy"}) {
    Tensor t = load_npy(kFix + name);
    save_npy(dir.file(name), t);
    EXPECT_EQ(read_file(dir.file(name)), read_file(kFix + name)) << name;
  }
}

// ------------------------------------------------------------------------------------------------------
// .npy headers and layouts made by hand

TEST(NpyHeaders, Versions2And3AndFortranOrder) {
  TempDir dir;
  // [2, 3] array 0..5 in C order; Fortran order stores columns: 0 3 1 4 2 5.
  const std::vector<float> c = {0, 1, 2, 3, 4, 5};
  const std::vector<float> f = {0, 3, 1, 4, 2, 5};
  for (int major : {1, 2, 3}) {
    write_file_atomic(dir.file("c.npy"), make_npy(major, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", raw(c)));
    write_file_atomic(dir.file("f.npy"), make_npy(major, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", raw(f)));
    Tensor a = load_npy(dir.file("c.npy")), b = load_npy(dir.file("f.npy"));
    EXPECT_EQ(a.to_vector<float>(), c) << "version " << major;
    EXPECT_EQ(b.to_vector<float>(), c) << "version " << major;
    EXPECT_EQ(b.shape(), (Shape{2, 3}));
  }
  // Fortran order for a 3-d int64 array and for a float64 one read exactly.
  std::vector<int64_t> i3(24), i3f(24);
  for (int64_t x = 0; x < 2; ++x)
    for (int64_t y = 0; y < 3; ++y)
      for (int64_t z = 0; z < 4; ++z) {
        const int64_t v = 100 * x + 10 * y + z;
        i3[x * 12 + y * 4 + z] = v;
        i3f[x + 2 * y + 6 * z] = v;
      }
  write_file_atomic(dir.file("i.npy"), make_npy(1, "{'descr': '<i8', 'fortran_order': True, 'shape': (2, 3, 4), }", raw(i3f)));
  EXPECT_EQ(load_npy(dir.file("i.npy")).to_vector<int64_t>(), i3);
  const std::vector<double> d = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6};
  const std::vector<double> df = {0.1, 0.4, 0.2, 0.5, 0.3, 0.6};
  write_file_atomic(dir.file("d.npy"), make_npy(1, "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }", raw(df)));
  EXPECT_EQ(load_npy_f64(dir.file("d.npy")).values, d);
  // Key order is free and double quotes are legal Python.
  write_file_atomic(dir.file("k.npy"), make_npy(1, "{\"shape\": (3,), \"fortran_order\": False, \"descr\": \"|u1\"}", "\x01\x02\x03"));
  EXPECT_EQ(load_npy(dir.file("k.npy")).to_vector<int64_t>(), (std::vector<int64_t>{1, 2, 3}));
}

TEST(NpyHeaders, Errors) {
  TempDir dir;
  const std::string good = make_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", raw(std::vector<float>{1, 2, 3, 4}));
  auto write = [&](const std::string& b) { write_file_atomic(dir.file("x.npy"), b); return dir.file("x.npy"); };
  const std::string p = write(good);
  EXPECT_EQ(load_npy(p).to_vector<float>(), (std::vector<float>{1, 2, 3, 4}));

  expect_error([&] { load_npy(write(good.substr(0, good.size() - 1))); }, {"truncated", "x.npy", "[4]"});
  expect_error([&] { load_npy(write(good.substr(0, 40))); }, {"truncated", "x.npy"});
  expect_error([&] { load_npy(write("PK\x03\x04 not numpy")); }, {"bad magic", "x.npy"});
  expect_error([&] { load_npy(write(make_npy(1, "{'descr': '<i4', 'fortran_order': False, 'shape': (1,), }", "abcd"))); },
               {"'<i4'", "x.npy"});
  expect_error([&] { load_npy(write(make_npy(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", "abcd"))); },
               {"'>f4'", "x.npy"});
  expect_error([&] { load_npy(write(make_npy(1, "{'descr': '<f4', 'shape': (1,), }", "abcd"))); }, {"fortran_order", "x.npy"});
  expect_error([&] { load_npy(write(make_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,", "abcd"))); },
               {"malformed", "x.npy"});
  std::string v4 = good;
  v4[6] = 4;
  expect_error([&] { load_npy(write(v4)); }, {"version 4", "x.npy"});
  expect_error([&] { load_npy(write(make_npy(1, "{'descr': '|b1', 'fortran_order': False, 'shape': (2,), }", "\x01\x07"))); },
               {"bool", "byte value 7", "x.npy"});
  expect_error([&] { load_npy(dir.file("missing.npy")); }, {"cannot open", "missing.npy"});
}

// ------------------------------------------------------------------------------------------------------
// Round trips

static std::vector<Tensor> sample_tensors() {
  std::vector<Tensor> ts;
  ts.push_back(iota({2, 3, 4}));
  ts.push_back(from_vector(std::vector<int64_t>{-5, 0, 7, INT64_MAX, INT64_MIN, 42}, {3, 2}));
  ts.push_back(from_bytes({0, 1, 255, 128}, {4}, DType::UInt8));
  ts.push_back(from_bytes({1, 0, 0, 1, 1, 0}, {2, 1, 3}, DType::Bool));
  ts.push_back(scalar_tensor(2.5f));                     // 0-d
  ts.push_back(Tensor::empty({0, 5}, DType::Float32));   // empty
  ts.push_back(Tensor::empty({3, 0}, DType::Int64));     // empty
  ts.push_back(iota({4, 5}).t());                        // non-contiguous: transposed
  ts.push_back(iota({6, 8}).slice(0, 1, 6, 2).slice(1, 0, 8, 3));  // non-contiguous: strided
  ts.push_back(iota({3}).unsqueeze(0).expand({4, 3}));   // stride 0
  return ts;
}

TEST(RoundTrip, NpyEveryDtypeAndLayout) {
  TempDir dir;
  for (const Tensor& t : sample_tensors()) {
    save_npy(dir.file("t.npy"), t);
    Tensor r = load_npy(dir.file("t.npy"));
    SCOPED_TRACE(t.str());
    expect_same(r, t);
    if (t.numel() > 0) {
      EXPECT_TRUE(r.is_contiguous());
    }
  }
}

TEST(RoundTrip, SafetensorsEveryDtypeLayoutAndMetadata) {
  TempDir dir;
  std::map<std::string, Tensor> m;
  const auto ts = sample_tensors();
  for (size_t i = 0; i < ts.size(); ++i) {
    std::string name = "t";  // (not "t" + to_string(i): GCC 12 warns falsely about that)
    name += std::to_string(i);
    m[name] = ts[i];
  }
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"step", "1200"}, {"note", "a \"quoted\" word"}};
  save_safetensors(dir.file("m.safetensors"), m, meta);
  SafeTensorsFile f = load_safetensors(dir.file("m.safetensors"));
  EXPECT_EQ(f.metadata, meta);
  ASSERT_EQ(f.tensors.size(), m.size());
  for (const auto& [k, t] : m) {
    SCOPED_TRACE(k);
    ASSERT_TRUE(f.tensors.count(k));
    expect_same(f.tensors.at(k), t);
  }
  // No metadata written means none read back.
  save_safetensors(dir.file("n.safetensors"), {{"a", iota({2})}});
  EXPECT_TRUE(load_safetensors(dir.file("n.safetensors")).metadata.empty());
}

TEST(Safetensors, LayoutFollowsTheFormat) {
  std::map<std::string, Tensor> m = {{"b", from_bytes({1, 2, 3}, {3})}, {"a", iota({2})}, {"c", from_vector(std::vector<int64_t>{9}, {1})}};
  const std::string bytes = safetensors_bytes(m, {{"k", "v"}});
  uint64_t hlen = 0;
  std::memcpy(&hlen, bytes.data(), 8);
  EXPECT_EQ(hlen % 8, 0u);
  EXPECT_EQ((8 + hlen) % 8, 0u);
  const std::string header = bytes.substr(8, hlen);
  EXPECT_EQ(header.find_first_not_of(' ', header.find_last_of('}') + 1), std::string::npos);  // space padding
  const auto j = nlohmann::json::parse(header);
  EXPECT_EQ(j["a"]["dtype"], "F32");
  EXPECT_EQ(j["b"]["dtype"], "U8");
  EXPECT_EQ(j["c"]["dtype"], "I64");
  // Sorted by name, packed: a = 8 bytes, b = 3 bytes, c = 8 bytes.
  EXPECT_EQ(j["a"]["data_offsets"], nlohmann::json({0, 8}));
  EXPECT_EQ(j["b"]["data_offsets"], nlohmann::json({8, 11}));
  EXPECT_EQ(j["c"]["data_offsets"], nlohmann::json({11, 19}));
  EXPECT_EQ(j["b"]["shape"], nlohmann::json({3}));
  EXPECT_EQ(j["__metadata__"]["k"], "v");
  EXPECT_EQ(bytes.size(), 8 + hlen + 19);
  EXPECT_EQ(bytes.substr(8 + hlen + 8, 3), std::string("\x01\x02\x03"));
}

// A safetensors file from a header written by hand and a data section.
static std::string make_st(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

TEST(Safetensors, ReadsForeignFilesAndRejectsBadOnes) {
  TempDir dir;
  const std::string p = dir.file("x.safetensors");
  // Unpadded header, out-of-name-order data, F64 converted to float32, BOOL, a 0-d tensor.
  const std::string data = raw(std::vector<double>{1.5, -2.25}) + std::string("\x01\x00", 2) + raw(std::vector<float>{7.f});
  write_file_atomic(p, make_st(R"({"z":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},)"
                               R"("m":{"dtype":"BOOL","shape":[2],"data_offsets":[16,18]},)"
                               R"("a":{"dtype":"F32","shape":[],"data_offsets":[18,22]}})",
                               data));
  SafeTensorsFile f = load_safetensors(p);
  EXPECT_EQ(f.tensors.at("z").dtype(), DType::Float32);
  EXPECT_EQ(f.tensors.at("z").to_vector<float>(), (std::vector<float>{1.5f, -2.25f}));
  EXPECT_EQ(f.tensors.at("m").dtype(), DType::Bool);
  EXPECT_EQ(f.tensors.at("m").to_vector<int64_t>(), (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(f.tensors.at("a").dim(), 0);
  EXPECT_EQ(f.tensors.at("a").item<float>(), 7.f);

  const std::string four(4, '\0');
  auto bad = [&](const std::string& header, const std::string& d, std::vector<std::string> parts) {
    write_file_atomic(p, make_st(header, d));
    expect_error([&] { load_safetensors(p); }, parts);
  };
  bad(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", four, {"'w'", "x.safetensors", "[2]", "needs 8"});
  bad(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})", four, {"'w'", "x.safetensors", "outside"});
  bad(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"v":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
      std::string(6, '\0'), {"x.safetensors", "overlaps"});
  bad(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, '\0'), {"'w'", "hole"});
  bad(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", std::string(8, '\0'), {"x.safetensors", "cover 4"});
  bad(R"({"w":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})", four, {"'w'", "'F16'"});
  bad(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", four, {"'w'", "shape"});
  bad(R"({"w":{"dtype":"F32","shape":[1]}})", four, {"'w'", "data_offsets"});
  bad(R"({"w": )", four, {"x.safetensors", "JSON"});
  bad(R"({"__metadata__":{"k":3}})", "", {"metadata", "'k'"});
  write_file_atomic(p, "abc");
  expect_error([&] { load_safetensors(p); }, {"truncated", "x.safetensors"});
  write_file_atomic(p, make_st(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", four).substr(0, 20));
  expect_error([&] { load_safetensors(p); }, {"truncated", "x.safetensors"});
}

// ------------------------------------------------------------------------------------------------------
// .npz

TEST(Npz, GradsFixtureHasOneFloat32ArrayPerParameter) {
  auto g = load_npz(kFix + "grads.npz");
  EXPECT_EQ(g.size(), 49u);
  ASSERT_TRUE(g.count("post_extract_proj.weight"));
  EXPECT_EQ(g.at("post_extract_proj.weight").shape(), (Shape{64, 32}));  // encoder 64 wide, patch embedding 32
  EXPECT_EQ(g.at("post_extract_proj.bias").shape(), (Shape{64}));
  for (const auto& [k, t] : g) {
    EXPECT_EQ(t.dtype(), DType::Float32) << k;
    EXPECT_EQ(k.find(".npy"), std::string::npos) << k;
  }
}

// Writes a zip with the given (name, bytes) entries, each stored or deflated.
static void write_zip(const std::string& path, const std::vector<std::pair<std::string, std::string>>& entries,
                      bool deflate) {
  int err = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  ASSERT_NE(z, nullptr);
  for (const auto& [name, bytes] : entries) {
    zip_source_t* s = zip_source_buffer(z, bytes.data(), bytes.size(), 0);
    ASSERT_NE(s, nullptr);
    const zip_int64_t idx = zip_file_add(z, name.c_str(), s, ZIP_FL_OVERWRITE);
    ASSERT_GE(idx, 0);
    zip_set_file_compression(z, static_cast<zip_uint64_t>(idx), deflate ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 0);
  }
  ASSERT_EQ(zip_close(z), 0);
}

TEST(Npz, StoredAndDeflatedArchives) {
  TempDir dir;
  Tensor a = iota({50, 20});  // compressible enough that deflate actually shrinks it
  Tensor b = from_vector(std::vector<int64_t>{3, 1, 4}, {3});
  save_npy(dir.file("a.npy"), a);
  save_npy(dir.file("b.npy"), b);
  const std::vector<std::pair<std::string, std::string>> entries = {{"a.npy", read_file(dir.file("a.npy"))},
                                                                     {"sub.b.npy", read_file(dir.file("b.npy"))}};
  for (bool deflate : {false, true}) {
    write_zip(dir.file("z.npz"), entries, deflate);
    if (deflate) {
      EXPECT_LT(fs::file_size(dir.file("z.npz")), entries[0].second.size());
    }
    auto m = load_npz(dir.file("z.npz"));
    ASSERT_EQ(m.size(), 2u);
    expect_same(m.at("a"), a);
    expect_same(m.at("sub.b"), b);
  }
  write_zip(dir.file("bad.npz"), {{"a.txt", "hello"}}, false);
  expect_error([&] { load_npz(dir.file("bad.npz")); }, {"'a.txt'", "bad.npz"});
  write_zip(dir.file("bad2.npz"), {{"a.npy", "\x93NUMPY junk"}}, true);
  expect_error([&] { load_npz(dir.file("bad2.npz")); }, {"bad2.npz", "a.npy"});
  write_file_atomic(dir.file("notzip.npz"), "this is not a zip archive at all");
  expect_error([&] { load_npz(dir.file("notzip.npz")); }, {"notzip.npz", "zip"});
}

// ------------------------------------------------------------------------------------------------------
// Atomic writes

TEST(AtomicWrite, ReplacesWholeFileAndLeavesNoTemporary) {
  TempDir dir;
  write_file_atomic(dir.file("f.bin"), "first version, longer");
  write_file_atomic(dir.file("f.bin"), "second");
  EXPECT_EQ(read_file(dir.file("f.bin")), "second");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"f.bin"});
  write_file_atomic(dir.file("empty.bin"), "");
  EXPECT_EQ(read_file(dir.file("empty.bin")), "");
}

TEST(AtomicWrite, FailedWriteLeavesNoFile) {
  TempDir dir;
  // Missing folder: the temporary cannot be created.
  expect_error([&] { save_npy(dir.file("no/such/folder/t.npy"), iota({2})); }, {"write_file_atomic", "t.npy"});
  // The target is a folder: the rename fails, and the temporary must be cleaned up.
  fs::create_directories(dir.file("target.safetensors"));
  fs::create_directories(dir.file("target.safetensors/inside"));
  expect_error([&] { save_safetensors(dir.file("target.safetensors"), {{"a", iota({2})}}); },
               {"write_file_atomic", "target.safetensors"});
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"target.safetensors"});
  // A bad tensor fails before anything is written.
  expect_error([&] { save_safetensors(dir.file("u.safetensors"), {{"a", Tensor()}}); }, {"'a'", "undefined"});
  expect_error([&] { save_npy(dir.file("u.npy"), Tensor()); }, {"save_npy", "undefined"});
  EXPECT_FALSE(fs::exists(dir.file("u.safetensors")));
  EXPECT_FALSE(fs::exists(dir.file("u.npy")));
}
