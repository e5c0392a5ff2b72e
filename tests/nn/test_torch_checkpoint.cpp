// Tests of the PyTorch .pt reader and the pickle machine under it: the three official-format BEATs
// fixtures (config, state dicts, values checked against sums computed by PyTorch), a torch-written file
// with views, every dtype and plain Python values, and error paths (truncated, not a zip, legacy format,
// unsupported globals and opcodes, views past their storage, wrong-type access). Not tested here: the
// npy/safetensors formats (tests/tensor/test_io.cpp).
#include <gtest/gtest.h>
#include <unistd.h>
#include <zip.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "nn/torch_checkpoint.h"
#include "tensor/io.h"
#include "tests/test_util.h"

using namespace sonar;
namespace fs = std::filesystem;
using testutil::expect_error;
using testutil::TempDir;

static const std::string kBeats = std::string(SONAR_FIXTURES_DIR) + "/beats_tiny/";
static const std::string kTorchIo = std::string(SONAR_FIXTURES_DIR) + "/torch_io/";

// Sums of float32 parameters accumulated in double: ours run in row order, PyTorch's in its own order,
// so they agree to rounding of ~1e-16 per term; 1e-9 relative leaves a wide margin and still catches
// any wrong element.
constexpr double kSumRelTol = 1e-9;

static double sum(const Tensor& t) {
  double s = 0;
  for (double v : t.to_vector<double>()) s += v;
  return s;
}
static double abs_sum(const Tensor& t) {
  double s = 0;
  for (double v : t.to_vector<double>()) s += std::fabs(v);
  return s;
}

static void expect_close(double got, double want, const std::string& what) {
  EXPECT_LE(std::fabs(got - want), kSumRelTol * std::max(1.0, std::fabs(want))) << what << ": got " << got
                                                                                 << " want " << want;
}

// ------------------------------------------------------------------------------------------------------
// The BEATs fixtures

TEST(TorchCheckpoint, BeatsConfigMatchesCasesJson) {
  const PyValue ck = load_torch_checkpoint(kBeats + "beats.pt");
  ASSERT_TRUE(ck.is_dict());
  EXPECT_EQ(ck.keys(), (std::vector<std::string>{"cfg", "model"}));
  const PyValue cfg = ck.at("cfg");
  const auto cases = nlohmann::json::parse(read_file(kBeats + "cases.json"));
  for (const auto& [key, want] : cases["config"].items()) {
    SCOPED_TRACE(key);
    ASSERT_TRUE(cfg.contains(key));
    const PyValue got = cfg.at(key);
    if (want.is_boolean()) EXPECT_EQ(got.as_bool(), want.get<bool>());
    else if (want.is_number_integer()) EXPECT_EQ(got.as_int(), want.get<int64_t>());
    else if (want.is_number_float()) EXPECT_EQ(got.as_float(), want.get<double>());
    else if (want.is_string()) EXPECT_EQ(got.as_string(), want.get<std::string>());
    else ADD_FAILURE() << "unexpected json type " << want.dump();
  }
  // Keys the official config has beyond cases.json (as printed by PyTorch).
  EXPECT_EQ(cfg.at("layer_wise_gradient_decay_ratio").as_float(), 1.0);
  EXPECT_FALSE(cfg.at("finetuned_model").as_bool());
  EXPECT_EQ(cfg.at("predictor_dropout").as_float(), 0.1);
  EXPECT_EQ(cfg.at("predictor_class").as_int(), 527);
}

TEST(TorchCheckpoint, BeatsWeightsMatchGradientShapesAndPyTorchSums) {
  const PyValue ck = load_torch_checkpoint(kBeats + "beats.pt");
  const auto items = state_dict_items(ck);
  ASSERT_EQ(items.size(), 50u);
  EXPECT_EQ(items[0].first, "post_extract_proj.weight");  // file order kept
  EXPECT_EQ(items[2].first, "patch_embedding.weight");
  // The state dict is an OrderedDict whose _metadata came through BUILD.
  const PyValue* attrs = ck.at("model").attributes();
  ASSERT_NE(attrs, nullptr);
  EXPECT_EQ(attrs->at("_metadata").at("").at("version").as_int(), 1);

  const auto model = state_dict_from(ck);
  const auto grads = load_npz(kBeats + "grads.npz");
  EXPECT_EQ(grads.size(), 49u);
  for (const auto& [k, g] : grads) {
    ASSERT_TRUE(model.count(k)) << k;
    EXPECT_EQ(model.at(k).shape(), g.shape()) << k;
    EXPECT_EQ(model.at(k).dtype(), DType::Float32) << k;
  }
  // The one parameter without a gradient: layer 1's relative position table, unused because layer 0's is
  // shared by all layers (fixtures README).
  for (const auto& [k, t] : model) {
    if (!grads.count(k)) {
      EXPECT_EQ(k, "encoder.layers.1.self_attn.relative_attention_bias.weight");
    }
  }

  // Expected values printed by PyTorch 1.13 for this file (ad hoc, not part of the tests):
  //   m = torch.load("beats.pt")["model"]; v = m[k].double(); v.sum(), v.abs().sum(), m[k].flatten()[0], [-1]
  const Tensor& w = model.at("post_extract_proj.weight");
  EXPECT_EQ(w.shape(), (Shape{64, 32}));
  expect_close(sum(w), 8.853816614951938, "post_extract_proj.weight sum");
  expect_close(abs_sum(w), 193.02443615766242, "post_extract_proj.weight abs sum");
  EXPECT_EQ(w.at({0, 0}), -0.020639795809984207);
  EXPECT_EQ(w.at({63, 31}), -0.0026214150711894035);
  const Tensor& rel = model.at("encoder.layers.0.self_attn.relative_attention_bias.weight");
  EXPECT_EQ(rel.shape(), (Shape{32, 4}));
  expect_close(sum(rel), 0.21130357077345252, "relative_attention_bias sum");
  expect_close(abs_sum(rel), 5.359532217960805, "relative_attention_bias abs sum");
  EXPECT_EQ(rel.at({0, 0}), -0.041971974074840546);
  EXPECT_EQ(rel.at({31, 3}), 0.05714107304811478);
  const Tensor& g = model.at("encoder.pos_conv.0.weight_g");
  EXPECT_EQ(g.shape(), (Shape{1, 1, 16}));
  expect_close(sum(g), 32.119492530822754, "pos_conv weight_g sum");
  EXPECT_EQ(g.at({0, 0, 0}), 1.8915663957595825);
  EXPECT_EQ(g.at({0, 0, 15}), 2.0995028018951416);
  const Tensor& lb = model.at("encoder.layer_norm.bias");
  expect_close(sum(lb), -0.5551872227806598, "encoder.layer_norm.bias sum");
  expect_close(abs_sum(lb), 2.420607637381181, "encoder.layer_norm.bias abs sum");
}

TEST(TorchCheckpoint, FinetunedHasLabelDictAndPredictor) {
  const PyValue ck = load_torch_checkpoint(kBeats + "beats_finetuned.pt");
  EXPECT_EQ(ck.keys(), (std::vector<std::string>{"cfg", "model", "label_dict"}));
  EXPECT_TRUE(ck.at("cfg").at("finetuned_model").as_bool());
  const PyValue labels = ck.at("label_dict");
  ASSERT_EQ(labels.size(), 10u);
  for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(labels.at(i).as_string(), "class_" + std::to_string(i));
  const auto m = state_dict_from(ck);
  EXPECT_EQ(m.size(), 52u);
  EXPECT_EQ(m.at("predictor.weight").shape(), (Shape{10, 64}));
  EXPECT_EQ(m.at("predictor.bias").shape(), (Shape{10}));
}

TEST(TorchCheckpoint, TokenizerHasQuantizerOfCasesJsonSize) {
  const PyValue ck = load_torch_checkpoint(kBeats + "tokenizer.pt");
  const auto cases = nlohmann::json::parse(read_file(kBeats + "cases.json"));
  const int64_t n = cases["quantizer"]["quant_n"], d = cases["quantizer"]["quant_dim"];
  EXPECT_EQ(ck.at("cfg").at("quant_n").as_int(), n);
  EXPECT_EQ(ck.at("cfg").at("quant_dim").as_int(), d);
  const auto m = state_dict_from(ck);
  EXPECT_EQ(m.size(), 59u);
  EXPECT_EQ(m.at("quantize.embedding.weight").shape(), (Shape{n, d}));
  EXPECT_EQ(m.at("quantize_layer.2.weight").shape(), (Shape{d, 64}));
  // PyTorch sums in double, as above.
  expect_close(sum(m.at("quantize.embedding.weight")), 4.795871494687162, "codebook sum");
  expect_close(sum(m.at("quantize.embedding.embed_avg")), 4.795871494687162, "embed_avg sum");
  expect_close(sum(m.at("quantize_layer.0.weight")), -3.0679080435074866, "quantize_layer.0.weight sum");
  expect_close(sum(m.at("quantize.embedding.cluster_size")), -0.41267049429006875, "cluster_size sum");
  EXPECT_EQ(m.at("quantize.embedding.initted").item<float>(), 1.f);
}

TEST(TorchCheckpoint, WrongTypeAccessNamesThePath) {
  const PyValue ck = load_torch_checkpoint(kBeats + "beats.pt");
  expect_error([&] { ck.at("cfg").at("encoder_layers").as_string(); }, {"cfg.encoder_layers: expected str, got int"});
  expect_error([&] { ck.at("cfg").at("activation_fn").as_int(); }, {"cfg.activation_fn: expected int, got str"});
  expect_error([&] { ck.at("cfg").at("deep_norm").as_int(); }, {"cfg.deep_norm: expected int, got bool"});
  expect_error([&] { ck.at("cfg").at("no_such_key"); }, {"cfg: no key 'no_such_key'"});
  expect_error([&] { ck.at("model").at("encoder.layer_norm.bias").as_float(); },
               {"model.encoder.layer_norm.bias: expected float, got Tensor"});
  expect_error([&] { state_dict_from(ck.at("cfg")); }, {"cfg", "not a state dict"});
}

// ------------------------------------------------------------------------------------------------------
// torch_io/misc.pt: views, dtypes, Python values (see tests/fixtures/torch_io/README.md for the script)

TEST(TorchCheckpoint, ViewsShareOneStorageWithOffsetsAndStrides) {
  const PyValue v = load_torch_checkpoint(kTorchIo + "misc.pt").at("views");
  const Tensor base = v.at("base").as_tensor();  // arange(24).reshape(4, 6)
  ASSERT_EQ(base.shape(), (Shape{4, 6}));
  for (int64_t i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 6; ++j) EXPECT_EQ(base.at({i, j}), double(i * 6 + j));
  const Tensor t = v.at("t").as_tensor(), row = v.at("row").as_tensor(), col = v.at("col").as_tensor();
  const Tensor strided = v.at("strided").as_tensor(), sc = v.at("scalar_view").as_tensor();
  for (const Tensor* x : {&t, &row, &col, &strided, &sc}) EXPECT_TRUE(x->shares_storage(base));
  EXPECT_EQ(t.shape(), (Shape{6, 4}));
  EXPECT_EQ(t.strides(), (Shape{1, 6}));
  EXPECT_EQ(t.at({5, 3}), 23.0);
  EXPECT_EQ(row.offset(), 12);
  EXPECT_EQ(row.to_vector<float>(), (std::vector<float>{12, 13, 14, 15, 16, 17}));
  EXPECT_EQ(col.offset(), 3);
  EXPECT_EQ(col.strides(), (Shape{6}));
  EXPECT_EQ(col.to_vector<float>(), (std::vector<float>{3, 9, 15, 21}));
  EXPECT_EQ(strided.shape(), (Shape{2, 2}));  // base[1::2, ::3]
  EXPECT_EQ(strided.to_vector<float>(), (std::vector<float>{6, 9, 18, 21}));
  EXPECT_EQ(sc.dim(), 0);
  EXPECT_EQ(sc.item<float>(), 23.f);
  // Writing through one view is seen by the others: they are views, not copies.
  base.data<float>()[15] = -1.f;
  EXPECT_EQ(col.at({2}), -1.0);
  EXPECT_EQ(row.at({3}), -1.0);
}

TEST(TorchCheckpoint, EveryDtype) {
  const PyValue ck = load_torch_checkpoint(kTorchIo + "misc.pt");
  const Tensor i64 = ck.at("i64").as_tensor();
  EXPECT_EQ(i64.dtype(), DType::Int64);
  EXPECT_EQ(i64.to_vector<int64_t>(), (std::vector<int64_t>{-3, 0, int64_t{1} << 40}));
  const Tensor u8 = ck.at("u8").as_tensor();
  EXPECT_EQ(u8.dtype(), DType::UInt8);
  EXPECT_EQ(u8.to_vector<int64_t>(), (std::vector<int64_t>{0, 7, 255}));
  const Tensor b = ck.at("b").as_tensor();
  EXPECT_EQ(b.dtype(), DType::Bool);
  EXPECT_EQ(b.shape(), (Shape{1, 3}));
  EXPECT_EQ(b.to_vector<int64_t>(), (std::vector<int64_t>{1, 0, 1}));
  const Tensor f64 = ck.at("f64").as_tensor();
  EXPECT_EQ(f64.dtype(), DType::Float32);
  EXPECT_EQ(f64.to_vector<float>(), (std::vector<float>{0.1f, -2.5f}));
  const Tensor f16 = ck.at("f16").as_tensor();
  EXPECT_EQ(f16.dtype(), DType::Float32);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(f16.to_vector<float>(), (std::vector<float>{1.5f, -std::ldexp(1.f, -14), 65504.f, std::ldexp(1.f, -24),
                                                        3 * std::ldexp(1.f, -20), inf}));
  EXPECT_EQ(ck.at("bf16").as_tensor().to_vector<float>(), (std::vector<float>{1.5f, -1.5f * std::ldexp(1.f, 100)}));
  const Tensor i32 = ck.at("i32").as_tensor();
  EXPECT_EQ(i32.dtype(), DType::Int64);
  EXPECT_EQ(i32.to_vector<int64_t>(), (std::vector<int64_t>{-7, 2147483647}));
  const Tensor s = ck.at("scalar").as_tensor();
  EXPECT_EQ(s.dim(), 0);
  EXPECT_EQ(s.item<float>(), 3.25f);
  EXPECT_EQ(ck.at("empty").as_tensor().shape(), (Shape{0, 3}));
  const Tensor p = ck.at("param").as_tensor();  // nn.Parameter -> its data
  EXPECT_EQ(p.to_vector<float>(), (std::vector<float>{0.5f, 0.5f, 0.5f, 0.5f}));
}

TEST(TorchCheckpoint, PlainPythonValues) {
  const PyValue ck = load_torch_checkpoint(kTorchIo + "misc.pt");
  const PyValue m = ck.at("misc");
  ASSERT_TRUE(m.is_list());
  ASSERT_EQ(m.size(), 15u);
  EXPECT_TRUE(m.at(size_t{0}).is_none());
  EXPECT_TRUE(m.at(size_t{1}).as_bool());
  EXPECT_FALSE(m.at(size_t{2}).as_bool());
  const std::vector<int64_t> ints = {-1, 255, 65535, 65536, -2147483648LL, int64_t{1} << 62,
                                     std::numeric_limits<int64_t>::min()};
  for (size_t i = 0; i < ints.size(); ++i) EXPECT_EQ(m.at(3 + i).as_int(), ints[i]) << i;
  EXPECT_EQ(m.at(size_t{10}).as_float(), 1.5);
  EXPECT_EQ(m.at(size_t{11}).as_float(), 0.0);
  EXPECT_TRUE(std::signbit(m.at(size_t{11}).as_float()));
  EXPECT_EQ(m.at(size_t{12}).as_string(), "h\xc3\xa9llo \xe2\x98\x83");  // utf-8
  const PyValue tup = m.at(size_t{13});
  ASSERT_TRUE(tup.is_tuple());
  EXPECT_EQ(tup.at(size_t{0}).as_string(), "a");
  EXPECT_EQ(tup.at(size_t{1}).as_int(), 1);
  const PyValue d = m.at(size_t{14});
  EXPECT_EQ(d.at(int64_t{7}).as_string(), "seven");
  EXPECT_EQ(d.at(int64_t{8}).as_string(), "eight");
  EXPECT_FALSE(d.contains(int64_t{9}));
  expect_error([&] { m.at(size_t{13}).as_int(); }, {"misc[13]: expected int, got tuple"});
  expect_error([&] { m.at(size_t{15}); }, {"misc", "index 15 out of range"});
  // OrderedDict keeps insertion order, not sorted order.
  EXPECT_EQ(ck.at("od").keys(), (std::vector<std::string>{"z", "a", "m"}));
  EXPECT_EQ(ck.at("od").at("a").as_int(), 2);
  EXPECT_EQ(m.repr().substr(0, 40), "[None, True, False, -1, 255, 65535, 6553");
}

// ------------------------------------------------------------------------------------------------------
// Hand-made pickles: a few opcodes written out by hand, as the protocol defines them.

namespace pk {
static std::string le32(uint32_t v) {
  std::string s(4, '\0');
  for (int k = 0; k < 4; ++k) s[k] = static_cast<char>((v >> (8 * k)) & 0xff);
  return s;
}
static std::string proto2() { return "\x80\x02"; }
// (built with append: GCC 12 warns falsely about "literal" + std::string)
static std::string global(const std::string& m, const std::string& n) {
  std::string s = "c";
  s.append(m).append("\n").append(n).append("\n");
  return s;
}
static std::string str(const std::string& v) {
  std::string s = "X";
  s.append(le32(static_cast<uint32_t>(v.size()))).append(v);
  return s;
}
static std::string integer(int32_t i) {
  std::string s = "J";
  return s.append(le32(static_cast<uint32_t>(i)));
}
static std::string tuple(const std::vector<std::string>& items) {
  std::string s = "(";
  for (const auto& i : items) s += i;
  return s + "t";
}
static const std::string kFalse = "\x89";
static const std::string kReduce = "R";
static const std::string kPersid = "Q";
static const std::string kStop = ".";

// _rebuild_tensor_v2(storage '0' of `numel` floats, offset, size, stride, False, OrderedDict())
static std::string tensor(int numel, int offset, const std::vector<int32_t>& size, const std::vector<int32_t>& stride) {
  std::vector<std::string> sz, st;
  for (int32_t s : size) sz.push_back(integer(s));
  for (int32_t s : stride) st.push_back(integer(s));
  const std::string storage =
      tuple({str("storage"), global("torch", "FloatStorage"), str("0"), str("cpu"), integer(numel)}) + kPersid;
  return global("torch._utils", "_rebuild_tensor_v2") +
         tuple({storage, integer(offset), tuple(sz), tuple(st), kFalse,
                global("collections", "OrderedDict") + ")" + kReduce}) +
         kReduce;
}
}  // namespace pk

static std::string floats_record(int n) {
  std::vector<float> v(n);
  for (int i = 0; i < n; ++i) v[i] = static_cast<float>(i) + 0.5f;
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

TEST(Pickle, HandMadeTensorPickle) {
  auto rec = [](const std::string& key, uint64_t) {
    EXPECT_EQ(key, "0");
    return floats_record(6);
  };
  const PyValue v = unpickle_torch(pk::proto2() + pk::tensor(6, 1, {2, 2}, {3, 1}) + pk::kStop, rec, "hand");
  EXPECT_EQ(v.as_tensor().to_vector<float>(), (std::vector<float>{1.5f, 2.5f, 4.5f, 5.5f}));
  // The view reaches element 1 + 3 + 2 = 6 of a storage of 6: past the end.
  expect_error([&] { unpickle_torch(pk::proto2() + pk::tensor(6, 1, {2, 3}, {3, 1}) + pk::kStop, rec, "hand"); },
               {"hand", "0x52 (REDUCE)", "past the storage's end", "size [2, 3]"});
  // The record is shorter than the storage it claims to be.
  expect_error([&] { unpickle_torch(pk::proto2() + pk::tensor(8, 0, {2}, {1}) + pk::kStop, rec, "hand"); },
               {"storage '0'", "needs 32 bytes", "has 24"});
}

TEST(Pickle, UnsupportedGlobalsAndOpcodesAreNamed) {
  auto rec = [](const std::string&, uint64_t) -> std::string { ADD_FAILURE() << "no record expected"; return ""; };
  expect_error([&] { unpickle_torch(pk::proto2() + pk::global("os", "system") + pk::kStop, rec, "evil.pkl"); },
               {"evil.pkl", "unsupported global 'os.system'", "0x63 (GLOBAL)", "at byte 2"});
  // STACK_GLOBAL (protocol 4) goes through the same allow-list.
  expect_error([&] { unpickle_torch("\x80\x04" + pk::str("builtins") + pk::str("eval") + "\x93" + pk::kStop, rec, "p4"); },
               {"unsupported global 'builtins.eval'", "0x93 (STACK_GLOBAL)"});
  expect_error([&] { unpickle_torch("\x80\x04\x8f.", rec, "set"); }, {"set", "0x8f (EMPTY_SET)", "unsupported opcode"});
  expect_error([&] { unpickle_torch(std::string("\x80\x02\xff."), rec, "junk"); }, {"0xff (unknown)"});
  expect_error([&] { unpickle_torch(pk::proto2() + "X" + pk::le32(16) + "ab", rec, "short"); },
               {"short", "0x58 (BINUNICODE)", "truncated"});
  expect_error([&] { unpickle_torch(pk::proto2() + pk::integer(3), rec, "nostop"); }, {"nostop", "without STOP"});
  expect_error([&] { unpickle_torch(pk::proto2() + "h\x05.", rec, "memo"); }, {"0x68 (BINGET)", "memo key 5"});
  expect_error([&] { unpickle_torch(pk::proto2() + "\x85.", rec, "under"); }, {"0x85 (TUPLE1)", "underflow"});
  expect_error([&] { unpickle_torch("\x80\x06N.", rec, "p6"); }, {"unsupported protocol 6"});
  // A supported class called the wrong way.
  expect_error([&] { unpickle_torch(pk::proto2() + pk::global("torch", "FloatStorage") + ")" + pk::kReduce + pk::kStop, rec, "c"); },
               {"cannot call 'torch.FloatStorage'", "0x52 (REDUCE)"});
  expect_error([&] { unpickle_torch(pk::proto2() + "]" + pk::tuple({"N"}) + "b.", rec, "b"); },
               {"0x62 (BUILD)", "cannot set the state of a list"});
}

TEST(Pickle, PlainContainersAndMemo) {
  // {'a': [1, 2, 1 << 40], 'b': memo copy of the same list} built with MARK/APPENDS/SETITEMS/BINPUT/BINGET
  // and LONG1 (1 << 40 = 6 bytes, little-endian two's complement).
  const std::string long1 = std::string("\x8a\x06") + std::string("\x00\x00\x00\x00\x00\x01", 6);
  const std::string p = pk::proto2() + std::string("}q\x00(", 4) + pk::str("a") + "]q\x01(K\x01K\x02" + long1 + "e" + pk::str("b") +
                        "h\x01u.";
  const PyValue v = unpickle_torch(p, nullptr, "containers");
  EXPECT_EQ(v.keys(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(v.at("a").size(), 3u);
  EXPECT_EQ(v.at("a").at(size_t{2}).as_int(), int64_t{1} << 40);
  EXPECT_EQ(v.at("b").at(size_t{1}).as_int(), 2);
  // LONG1 negative: -129 = 0x7f 0xff.
  EXPECT_EQ(unpickle_torch(pk::proto2() + std::string("\x8a\x02\x7f\xff."), nullptr, "neg").as_int(), -129);
}

// ------------------------------------------------------------------------------------------------------
// Container errors

static void write_zip(const std::string& path, const std::vector<std::pair<std::string, std::string>>& entries) {
  int err = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  ASSERT_NE(z, nullptr);
  for (const auto& [name, bytes] : entries) {
    zip_source_t* s = zip_source_buffer(z, bytes.data(), bytes.size(), 0);
    ASSERT_NE(s, nullptr);
    ASSERT_GE(zip_file_add(z, name.c_str(), s, ZIP_FL_OVERWRITE), 0);
  }
  ASSERT_EQ(zip_close(z), 0);
}

TEST(TorchCheckpoint, ContainerErrors) {
  TempDir dir;
  const std::string good = read_file(kBeats + "beats.pt");
  write_file_atomic(dir.file("trunc.pt"), good.substr(0, good.size() / 2));
  expect_error([&] { load_torch_checkpoint(dir.file("trunc.pt")); }, {"trunc.pt", "not a PyTorch zip"});
  write_file_atomic(dir.file("text.pt"), "hello, I am not a checkpoint\n");
  expect_error([&] { load_torch_checkpoint(dir.file("text.pt")); }, {"text.pt", "not a PyTorch zip"});
  expect_error([&] { load_torch_checkpoint(kTorchIo + "legacy.pt"); }, {"legacy.pt", "legacy (pre-1.6)"});
  expect_error([&] { load_torch_checkpoint(dir.file("missing.pt")); }, {"cannot open", "missing.pt"});

  // A zip with the right layout but an evil pickle: the prefix folder name is free.
  write_zip(dir.file("evil.pt"), {{"whatever/data.pkl", pk::proto2() + pk::global("os", "system") + pk::kStop},
                                  {"whatever/version", "3\n"}});
  expect_error([&] { load_torch_checkpoint(dir.file("evil.pt")); },
               {"evil.pt:whatever/data.pkl", "unsupported global 'os.system'"});
  // A storage record that is missing from the zip.
  write_zip(dir.file("norec.pt"), {{"a/data.pkl", pk::proto2() + pk::tensor(2, 0, {2}, {1}) + pk::kStop}});
  expect_error([&] { load_torch_checkpoint(dir.file("norec.pt")); }, {"norec.pt", "no entry 'a/data/0'"});
  // With the record, the same file loads; from memory too.
  write_zip(dir.file("ok.pt"), {{"a/data.pkl", pk::proto2() + pk::tensor(2, 0, {2}, {1}) + pk::kStop},
                                {"a/data/0", floats_record(2)}});
  EXPECT_EQ(load_torch_checkpoint(dir.file("ok.pt")).as_tensor().to_vector<float>(), (std::vector<float>{0.5f, 1.5f}));
  EXPECT_EQ(load_torch_checkpoint_bytes(read_file(dir.file("ok.pt")), "mem").as_tensor().numel(), 2);
  // Big-endian archives are refused.
  write_zip(dir.file("be.pt"), {{"a/data.pkl", pk::proto2() + "N."}, {"a/byteorder", "big"}});
  expect_error([&] { load_torch_checkpoint(dir.file("be.pt")); }, {"be.pt", "'big' byte order"});
  // No data.pkl at all.
  write_zip(dir.file("empty.pt"), {{"readme.txt", "hi"}});
  expect_error([&] { load_torch_checkpoint(dir.file("empty.pt")); }, {"empty.pt", "0 '<folder>/data.pkl'"});
}
