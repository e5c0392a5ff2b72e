// Tests of tensor/elementwise.h: every kernel against a plain reference loop (double precision, indices
// through Tensor::at) on contiguous, transposed, step-sliced, expanded, 0-d and empty inputs; dtype rules;
// error messages; sum_to_shape on the broadcast patterns autograd produces.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>

#include "tensor/creation.h"
#include "tensor/elementwise.h"
#include "tensor/elementwise_math.h"
#include "tests/test_util.h"

using namespace sonar;

namespace {

using testutil::expect_error;

// Tolerances, named: float32 ops against a double reference.
constexpr double kExactTol = 0.0;     // add/sub/mul/neg/...: the same float32 arithmetic, bit for bit
constexpr double kMathRelTol = 2e-6;  // exp/log/tanh/erf-based ops: a few ulp
constexpr double kMathAbsTol = 1e-7;  // near zero crossings
constexpr double kSumRelTol = 1e-5;   // float32 sums of up to ~1e6 terms of mixed sign, relative to sum |x|

// Deterministic pseudo-random values in [lo, hi).
Tensor values(const Shape& s, uint32_t seed = 1, float lo = -2.f, float hi = 2.f) {
  std::vector<float> v(shape_numel(s));
  uint32_t x = seed * 2654435761u + 12345u;
  for (auto& e : v) {
    x = x * 1664525u + 1013904223u;
    e = lo + (hi - lo) * static_cast<float>(x >> 8) / 16777216.f;
  }
  return from_vector(v, s);
}

Tensor ivalues(const Shape& s, int64_t lo, int64_t hi, uint32_t seed = 3) {
  std::vector<int64_t> v(shape_numel(s));
  uint32_t x = seed;
  for (auto& e : v) {
    x = x * 1664525u + 1013904223u;
    e = lo + static_cast<int64_t>((x >> 8) % static_cast<uint32_t>(hi - lo));
  }
  return from_vector(v, s);
}

// All multi-indices of a shape in row-major order.
std::vector<std::vector<int64_t>> indices(const Shape& s) {
  std::vector<std::vector<int64_t>> out;
  const int64_t n = shape_numel(s);
  std::vector<int64_t> idx(s.size(), 0);
  for (int64_t i = 0; i < n; ++i) {
    out.push_back(idx);
    for (int d = static_cast<int>(s.size()) - 1; d >= 0; --d) {
      if (++idx[d] < s[d]) break;
      idx[d] = 0;
    }
  }
  return out;
}

// Element of `t` at `idx` of a (larger) broadcast shape.
double at_bcast(const Tensor& t, const std::vector<int64_t>& idx) {
  std::vector<int64_t> ti(t.dim());
  const size_t lead = idx.size() - t.dim();
  for (int64_t d = 0; d < t.dim(); ++d) ti[d] = t.shape()[d] == 1 ? 0 : idx[lead + d];
  return t.at(ti);
}

Shape bshape(const Shape& a, const Shape& b) {
  const size_t n = std::max(a.size(), b.size());
  Shape o(n);
  for (size_t i = 0; i < n; ++i) {
    int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    o[i] = da == 1 ? db : da;
  }
  return o;
}

// Compares `got` elementwise to ref(index) with |got - ref| <= abs + rel * |ref| (NaN matches NaN).
void expect_close(const Tensor& got, const Shape& shape, const std::function<double(const std::vector<int64_t>&)>& ref,
                  double rel, double abs, const std::string& what) {
  ASSERT_EQ(got.shape(), shape) << what;
  int bad = 0;
  double max_abs = 0;
  for (const auto& idx : indices(shape)) {
    const double g = got.at(idx), r = ref(idx);
    if (std::isnan(r) && std::isnan(g)) continue;
    const double err = std::fabs(g - r);
    if (!(err <= abs + rel * std::fabs(r)) && !(std::isinf(r) && g == r)) {
      if (bad++ < 5) ADD_FAILURE() << what << " at " << shape_str(idx) << ": got " << g << " want " << r;
    }
    if (std::isfinite(err)) max_abs = std::max(max_abs, err);
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " mismatches, max abs err " << max_abs;
}

// Pairs of (a, b) inputs covering the layouts every binary kernel must accept.
struct Case {
  std::string name;
  Tensor a, b;
};
std::vector<Case> binary_cases() {
  std::vector<Case> cs;
  cs.push_back({"same shape contiguous", values({3, 4, 5}, 1), values({3, 4, 5}, 2)});
  cs.push_back({"[B,T,C] + [C]", values({2, 3, 7}, 3), values({7}, 4)});
  cs.push_back({"[B,T,1] * [B,1,C]", values({2, 3, 1}, 5), values({2, 1, 7}, 6)});
  cs.push_back({"[C] + [B,T,C]", values({5}, 7), values({4, 3, 5}, 8)});
  cs.push_back({"transposed a", values({5, 6}, 9).t(), values({6, 5}, 10)});
  cs.push_back({"transposed both", values({4, 3}, 11).t(), values({4, 3}, 12).t()});
  cs.push_back({"step slice", values({4, 10}, 13).slice(1, 1, 10, 3), values({4, 3}, 14)});
  cs.push_back({"step slice x broadcast row", values({6, 9}, 15).slice(0, 0, 6, 2), values({1, 9}, 16)});
  cs.push_back({"permuted 3d + expanded", values({3, 4, 5}, 17).permute({2, 0, 1}), values({1, 4}, 18).expand({3, 4})});
  cs.push_back({"0-d scalar + tensor", scalar_tensor(1.5f), values({2, 3}, 19)});
  cs.push_back({"tensor + 0-d scalar", values({2, 3}, 20), scalar_tensor(-0.75f)});
  cs.push_back({"0-d + 0-d", scalar_tensor(2.f), scalar_tensor(3.f)});
  cs.push_back({"empty", values({0, 3}, 21), values({3}, 22)});
  cs.push_back({"empty broadcast", values({2, 0, 3}, 23), values({2, 1, 3}, 24)});
  cs.push_back({"large transposed (parallel path)", values({300, 500}, 25).t(), values({500, 1}, 26)});
  cs.push_back({"large contiguous + row", values({200, 4, 384}, 27), values({384}, 28)});
  return cs;
}

void check_binary(const std::function<Tensor(const Tensor&, const Tensor&)>& op,
                  const std::function<double(float, float)>& ref, double rel, double abs, const std::string& name) {
  for (const auto& c : binary_cases()) {
    const Tensor out = op(c.a, c.b);
    EXPECT_EQ(out.dtype(), DType::Float32);
    EXPECT_TRUE(out.is_contiguous());
    expect_close(
        out, bshape(c.a.shape(), c.b.shape()),
        [&](const std::vector<int64_t>& i) {
          return ref(static_cast<float>(at_bcast(c.a, i)), static_cast<float>(at_bcast(c.b, i)));
        },
        rel, abs, name + " / " + c.name);
  }
}

}  // namespace

TEST(Elementwise, BroadcastShapes) {
  EXPECT_EQ(broadcast_shapes({2, 1, 4}, {3, 1}, "t"), (Shape{2, 3, 4}));
  EXPECT_EQ(broadcast_shapes({}, {3}, "t"), (Shape{3}));
  EXPECT_EQ(broadcast_shapes({0, 1}, {1, 5}, "t"), (Shape{0, 5}));
  expect_error([] { broadcast_shapes({2, 3}, {4}, "myop"); }, {"myop", "[2, 3]", "[4]"});
}

TEST(Elementwise, BinaryArithmeticMatchesReference) {
  // float32 arithmetic is exact against the same float32 operation computed in the reference.
  check_binary([](auto& a, auto& b) { return add(a, b); }, [](float x, float y) { return float(x + y); }, 0, kExactTol, "add");
  check_binary([](auto& a, auto& b) { return sub(a, b); }, [](float x, float y) { return float(x - y); }, 0, kExactTol, "sub");
  check_binary([](auto& a, auto& b) { return mul(a, b); }, [](float x, float y) { return float(x * y); }, 0, kExactTol, "mul");
  check_binary([](auto& a, auto& b) { return div(a, b); }, [](float x, float y) { return float(x / y); }, 0, kExactTol, "div");
  check_binary([](auto& a, auto& b) { return maximum(a, b); }, [](float x, float y) { return std::max(x, y); }, 0, 0, "maximum");
  check_binary([](auto& a, auto& b) { return minimum(a, b); }, [](float x, float y) { return std::min(x, y); }, 0, 0, "minimum");
  check_binary([](auto& a, auto& b) { return pow(abs(a), b); }, [](float x, float y) { return std::pow(std::fabs(double(x)), double(y)); },
               kMathRelTol, kMathAbsTol, "pow");
}

TEST(Elementwise, BinaryShapeMismatchNamesOpAndShapes) {
  Tensor a = values({2, 3}), b = values({4, 3});
  expect_error([&] { add(a, b); }, {"add", "[2, 3]", "[4, 3]"});
  expect_error([&] { mul(a, values({2})); }, {"mul", "[2, 3]", "[2]"});
  expect_error([&] { div(a, b); }, {"div"});
  expect_error([&] { maximum(a, b); }, {"maximum"});
  expect_error([&] { add(Tensor(), a); }, {"add", "undefined"});
}

TEST(Elementwise, ScalarVariants) {
  for (const auto& c : binary_cases()) {
    const Tensor& a = c.a;
    auto ref = [&](std::function<double(float)> f) {
      return [&a, f](const std::vector<int64_t>& i) { return f(static_cast<float>(a.at(i))); };
    };
    expect_close(add(a, 0.25f), a.shape(), ref([](float x) { return float(x + 0.25f); }), 0, 0, "add s " + c.name);
    expect_close(sub(a, 3.f), a.shape(), ref([](float x) { return float(x - 3.f); }), 0, 0, "sub s " + c.name);
    expect_close(mul(a, -1.5f), a.shape(), ref([](float x) { return float(x * -1.5f); }), 0, 0, "mul s " + c.name);
    expect_close(div(a, 7.f), a.shape(), ref([](float x) { return float(x / 7.f); }), 0, 0, "div s " + c.name);
    expect_close(pow(a, 2.f), a.shape(), ref([](float x) { return float(x * x); }), 0, 0, "pow 2 " + c.name);
    expect_close(pow(a, 3.f), a.shape(), ref([](float x) { return double(x) * x * x; }), kMathRelTol, 0, "pow 3 " + c.name);
    expect_close(pow(a, 0.f), a.shape(), ref([](float) { return 1.0; }), 0, 0, "pow 0 " + c.name);
    expect_close(pow(abs(a), 0.5f), a.shape(), ref([](float x) { return std::sqrt(std::fabs(double(x))); }), kMathRelTol,
                 kMathAbsTol, "pow 0.5 " + c.name);
    expect_close(pow(abs(a), -1.f), a.shape(), ref([](float x) { return 1.0 / std::fabs(double(x)); }), kMathRelTol, 0,
                 "pow -1 " + c.name);
    expect_close(pow(abs(a), 1.7f), a.shape(), ref([](float x) { return std::pow(std::fabs(double(x)), 1.7); }),
                 kMathRelTol, kMathAbsTol, "pow 1.7 " + c.name);
  }
}

TEST(Elementwise, IntegerArithmeticKeepsInt64) {
  Tensor a = ivalues({3, 4}, -50, 50, 1), b = ivalues({4}, -9, 9, 2);
  for (auto [name, out, f] : std::vector<std::tuple<std::string, Tensor, std::function<int64_t(int64_t, int64_t)>>>{
           {"add", add(a, b), [](int64_t x, int64_t y) { return x + y; }},
           {"sub", sub(a, b), [](int64_t x, int64_t y) { return x - y; }},
           {"mul", mul(a, b), [](int64_t x, int64_t y) { return x * y; }},
           {"maximum", maximum(a, b), [](int64_t x, int64_t y) { return std::max(x, y); }},
           {"minimum", minimum(a, b), [](int64_t x, int64_t y) { return std::min(x, y); }}}) {
    EXPECT_EQ(out.dtype(), DType::Int64) << name;
    expect_close(out, {3, 4}, [&](auto& i) { return double(f(int64_t(a.at(i)), int64_t(at_bcast(b, i)))); }, 0, 0, name);
  }
  // Large values survive (no float round trip).
  Tensor big = from_vector(std::vector<int64_t>{(int64_t{1} << 53) + 1}, {1});
  EXPECT_EQ(add(big, big).to_vector<int64_t>()[0], (int64_t{1} << 54) + 2);
  // Whole scalars keep int64, fractional ones promote to float32.
  EXPECT_EQ(add(a, 2.f).dtype(), DType::Int64);
  EXPECT_EQ(mul(a, 3.f).at({1, 1}), a.at({1, 1}) * 3);
  Tensor h = mul(a, 0.5f);
  EXPECT_EQ(h.dtype(), DType::Float32);
  EXPECT_FLOAT_EQ(h.at({2, 3}), a.at({2, 3}) * 0.5);
  // Mixed int64 / float32 promotes to float32.
  Tensor m = add(a, values({4}));
  EXPECT_EQ(m.dtype(), DType::Float32);
  EXPECT_FLOAT_EQ(m.at({1, 2}), float(a.at({1, 2})) + float(values({4}).at({2})));
  // Bool + bool counts as integers.
  Tensor bb = from_bytes({1, 0, 1}, {3}, DType::Bool);
  EXPECT_EQ(add(bb, bb).to_vector<int64_t>(), (std::vector<int64_t>{2, 0, 2}));
  // Float-only ops refuse integers, naming the op and the dtype.
  expect_error([&] { div(a, a); }, {"div", "int64"});
  expect_error([&] { pow(a, a); }, {"pow", "int64"});
  expect_error([&] { div(a, 2.f); }, {"div", "int64"});
  expect_error([&] { exp(a); }, {"exp", "int64"});
  expect_error([&] { gelu(bb); }, {"gelu", "bool"});
  // div with one float input promotes the other.
  EXPECT_FLOAT_EQ(div(a, values({4})).at({0, 0}), float(a.at({0, 0})) / float(values({4}).at({0})));
}

TEST(Elementwise, AddInPlace) {
  // Contiguous same shape (the gradient accumulation fast path), with and without alpha.
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{17}, int64_t{1} << 18}) {
    Tensor a = values({n}, 1), b = values({n}, 2), a0 = a.clone();
    add_(a, b);
    expect_close(a, {n}, [&](auto& i) { return float(a0.at(i) + b.at(i)); }, 0, 0, "add_ n=" + std::to_string(n));
    Tensor c = a0.clone();
    add_(c, b, -0.5f);
    expect_close(c, {n}, [&](auto& i) { return float(float(a0.at(i)) + float(-0.5f * float(b.at(i)))); }, 1e-7, 1e-7,
                 "add_ alpha");
  }
  // Broadcast b into a; non-contiguous b.
  Tensor a = values({4, 3, 5}, 3), a0 = a.clone();
  Tensor b = values({5, 3}, 4).t();  // [3, 5] transposed view
  add_(a, b, 2.f);
  expect_close(a, {4, 3, 5}, [&](auto& i) { return float(float(a0.at(i)) + 2.f * float(at_bcast(b, i))); }, 0, 0,
               "add_ broadcast");
  // Non-contiguous destination: writes go through the view into the base tensor.
  Tensor base = values({6, 8}, 5), base0 = base.clone();
  Tensor view = base.slice(1, 0, 8, 2).t();  // [4, 6], strides (2, 8)
  add_(view, ones({1, 6}));
  for (auto& i : indices({6, 8}))
    EXPECT_EQ(base.at(i), i[1] % 2 == 0 ? float(base0.at(i) + 1.f) : base0.at(i)) << shape_str(i);
  // 0-d.
  Tensor s = scalar_tensor(1.f);
  add_(s, scalar_tensor(2.f), 3.f);
  EXPECT_EQ(s.item<float>(), 7.f);
  // Source overlapping the destination with a different layout (a shifted window of the same storage).
  Tensor r = from_vector(std::vector<float>{1, 2, 3, 4, 5}, {5});
  Tensor dst = r.narrow(0, 1, 4);
  add_(dst, r.narrow(0, 0, 4));
  EXPECT_EQ(r.to_vector<float>(), (std::vector<float>{1, 3, 5, 7, 9}));
  // Self accumulation.
  Tensor q = values({100}, 6), q0 = q.clone();
  add_(q, q);
  expect_close(q, {100}, [&](auto& i) { return 2 * q0.at(i); }, 0, 0, "add_ self");
  // int64 destination.
  Tensor ia = ivalues({4}, 0, 10);
  Tensor ia0 = ia.clone();
  add_(ia, from_vector(std::vector<int64_t>{2}, {1}), 3.f);
  expect_close(ia, {4}, [&](auto& i) { return ia0.at(i) + 6; }, 0, 0, "add_ int64");
  // b must broadcast *into* a.
  Tensor small = values({3});
  expect_error([&] { add_(small, values({2, 3})); }, {"add_", "[2, 3]", "[3]"});
  expect_error([&] { add_(a, values({2})); }, {"add_"});
  Tensor expanded = values({1, 3}).expand({4, 3});
  expect_error([&] { add_(expanded, values({4, 3})); }, {"add_", "expanded"});
}

TEST(Elementwise, MulInPlace) {
  Tensor a = values({5, 7}, 2), a0 = a.clone();
  Tensor v = a.slice(1, 1, 7, 3);  // strided view
  mul_(v, -2.f);
  for (auto& i : indices({5, 7}))
    EXPECT_EQ(a.at(i), (i[1] % 3 == 1) ? float(a0.at(i) * -2.f) : a0.at(i));
  Tensor ia = from_vector(std::vector<int64_t>{1, -2, 3}, {3});
  mul_(ia, 4.f);
  EXPECT_EQ(ia.to_vector<int64_t>(), (std::vector<int64_t>{4, -8, 12}));
  Tensor s = scalar_tensor(3.f);
  mul_(s, 0.5f);
  EXPECT_EQ(s.item<float>(), 1.5f);
  Tensor e = Tensor::empty({0, 4});
  mul_(e, 2.f);  // no elements: nothing to do
  Tensor expanded = values({3, 1}).expand({3, 5});
  expect_error([&] { mul_(expanded, 2.f); }, {"mul_", "expanded"});
  expect_error([&] { mul_(ia, 0.5f); }, {"mul_", "whole"});
}

namespace {
struct UnaryCase {
  std::string name;
  std::function<Tensor(const Tensor&)> op;
  std::function<double(double)> ref;
  double rel, abs;
};
std::vector<Tensor> unary_inputs() {
  return {values({3, 4, 5}, 31, -6.f, 6.f),
          values({9, 7}, 32, -6.f, 6.f).t(),
          values({5, 12}, 33, -6.f, 6.f).slice(1, 2, 12, 4),
          values({4, 1}, 34, -3.f, 3.f).expand({4, 6}),
          scalar_tensor(0.7f),
          values({0, 4}, 35),
          values({300, 700}, 36, -8.f, 8.f).t()};  // large, strided: parallel generic path
}
}  // namespace

TEST(Elementwise, UnaryMatchesReference) {
  const double inv_sqrt2 = 1.0 / std::sqrt(2.0);
  std::vector<UnaryCase> cases = {
      {"neg", [](auto& x) { return neg(x); }, [](double x) { return -x; }, 0, 0},
      {"abs", [](auto& x) { return abs(x); }, [](double x) { return std::fabs(x); }, 0, 0},
      {"exp", [](auto& x) { return exp(x); }, [](double x) { return std::exp(x); }, kMathRelTol, 0},
      {"log", [](auto& x) { return log(abs(x)); }, [](double x) { return std::log(std::fabs(x)); }, kMathRelTol, kMathAbsTol},
      {"sqrt", [](auto& x) { return sqrt(abs(x)); }, [](double x) { return std::sqrt(std::fabs(x)); }, kMathRelTol, 0},
      {"rsqrt", [](auto& x) { return rsqrt(abs(x)); }, [](double x) { return 1 / std::sqrt(std::fabs(x)); }, kMathRelTol, 0},
      {"tanh", [](auto& x) { return tanh(x); }, [](double x) { return std::tanh(x); }, kMathRelTol, kMathAbsTol},
      {"sigmoid", [](auto& x) { return sigmoid(x); }, [](double x) { return 1 / (1 + std::exp(-x)); }, kMathRelTol, kMathAbsTol},
      {"relu", [](auto& x) { return relu(x); }, [](double x) { return x > 0 ? x : 0; }, 0, 0},
      {"gelu", [](auto& x) { return gelu(x); }, [&](double x) { return 0.5 * x * (1 + std::erf(x * inv_sqrt2)); }, kMathRelTol,
       kMathAbsTol},
      {"clamp", [](auto& x) { return clamp(x, -1.f, 0.5f); }, [](double x) { return std::min(0.5, std::max(-1.0, x)); }, 0, 0},
      {"sign", [](auto& x) { return sign(x); }, [](double x) { return double((x > 0) - (x < 0)); }, 0, 0},
  };
  for (const auto& c : cases) {
    for (const auto& x : unary_inputs()) {
      const Tensor out = c.op(x);
      EXPECT_EQ(out.dtype(), DType::Float32);
      expect_close(out, x.shape(), [&](auto& i) { return c.ref(double(static_cast<float>(x.at(i)))); }, c.rel, c.abs,
                   c.name + " " + shape_str(x.shape()) + " strides " + shape_str(x.strides()));
    }
  }
}

TEST(Elementwise, UnarySpecialValues) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  Tensor x = from_vector(std::vector<float>{-1e4f, -100.f, -88.f, -20.f, 0.f, 20.f, 100.f, 1e4f, inf, -inf}, {10});
  std::vector<float> s = sigmoid(x).to_vector<float>();
  for (size_t i = 0; i < s.size(); ++i) {
    const double xv = x.at({int64_t(i)});
    const double ref = xv >= 0 ? 1 / (1 + std::exp(-xv)) : std::exp(xv) / (1 + std::exp(xv));
    EXPECT_TRUE(std::isfinite(s[i])) << "sigmoid(" << xv << ")";
    // Tiny results are float32 denormals or zero: compare absolutely there, relatively elsewhere.
    EXPECT_NEAR(s[i], ref, std::max(1e-44, kMathRelTol * ref)) << "sigmoid(" << xv << ")";
  }
  EXPECT_GT(s[3], 0.f);  // sigmoid(-20) ~ 2e-9 must not round to 0 (the 1 - s form would)
  EXPECT_NEAR(s[3] / 2.0611536e-9, 1.0, 1e-5);
  EXPECT_EQ(s[6], 1.f);
  // gelu tails: exactly 0 and x.
  std::vector<float> g = gelu(x.narrow(0, 0, 8)).to_vector<float>();
  EXPECT_EQ(g[0], 0.f);
  EXPECT_EQ(g[7], 1e4f);
  // NaN propagation.
  Tensor n = from_vector(std::vector<float>{nan}, {1});
  EXPECT_TRUE(std::isnan(relu(n).item<float>()));
  EXPECT_TRUE(std::isnan(clamp(n, 0, 1).item<float>()));
  EXPECT_TRUE(std::isnan(sign(n).item<float>()));
  EXPECT_TRUE(std::isnan(maximum(n, scalar_tensor(1)).item<float>()));
  EXPECT_TRUE(std::isnan(minimum(scalar_tensor(1), n).item<float>()));
  EXPECT_TRUE(std::isnan(sigmoid(n).item<float>()));
  EXPECT_EQ(exp(scalar_tensor(-inf)).item<float>(), 0.f);
  EXPECT_EQ(log(scalar_tensor(0.f)).item<float>(), -inf);
  expect_error([&] { clamp(x, 1.f, 0.f); }, {"clamp"});
}

TEST(Elementwise, IntegerUnary) {
  Tensor a = from_vector(std::vector<int64_t>{-5, 0, 3, -1, 9}, {5});
  EXPECT_EQ(neg(a).to_vector<int64_t>(), (std::vector<int64_t>{5, 0, -3, 1, -9}));
  EXPECT_EQ(abs(a).to_vector<int64_t>(), (std::vector<int64_t>{5, 0, 3, 1, 9}));
  EXPECT_EQ(sign(a).to_vector<int64_t>(), (std::vector<int64_t>{-1, 0, 1, -1, 1}));
  EXPECT_EQ(relu(a).to_vector<int64_t>(), (std::vector<int64_t>{0, 0, 3, 0, 9}));
  Tensor c = clamp(a, -1.5f, 4.f);
  EXPECT_EQ(c.dtype(), DType::Int64);
  EXPECT_EQ(c.to_vector<int64_t>(), (std::vector<int64_t>{-1, 0, 3, -1, 4}));
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(clamp(a, 0.f, inf).to_vector<int64_t>(), (std::vector<int64_t>{0, 0, 3, 0, 9}));
  EXPECT_EQ(clamp(a, -inf, 1e30f).to_vector<int64_t>(), a.to_vector<int64_t>());
  expect_error([&] { neg(from_bytes({1}, {1}, DType::Bool)); }, {"neg", "bool"});
}

TEST(Elementwise, GeluBackwardIsExactDerivative) {
  Tensor x = values({6, 50}, 41, -6.f, 6.f), g = values({6, 50}, 42);
  const Tensor dx = gelu_backward(g, x);
  const double c = 1.0 / std::sqrt(2.0), k = 1.0 / std::sqrt(2.0 * M_PI);
  expect_close(dx, {6, 50}, [&](auto& i) {
        const double v = float(x.at(i));
        return float(g.at(i)) * (0.5 * (1 + std::erf(v * c)) + v * k * std::exp(-0.5 * v * v));
      }, 1e-5, 1e-6, "gelu_backward analytic");
  // Central finite difference of the double-precision gelu at a few points agrees with the analytic form.
  auto gel = [&](double v) { return 0.5 * v * (1 + std::erf(v * c)); };
  for (double v : {-3.0, -0.7, 0.0, 0.4, 2.5}) {
    const double h = 1e-5, fd = (gel(v + h) - gel(v - h)) / (2 * h);
    EXPECT_NEAR(gelu_backward(scalar_tensor(1.f), scalar_tensor(float(v))).item<double>(), fd, 1e-6) << v;
  }
  // Broadcast grad and strided x.
  Tensor xt = values({8, 5}, 43).t();
  Tensor d2 = gelu_backward(scalar_tensor(2.f), xt);
  expect_close(d2, {5, 8}, [&](auto& i) {
        const double v = float(xt.at(i));
        return 2 * (0.5 * (1 + std::erf(v * c)) + v * k * std::exp(-0.5 * v * v));
      }, 1e-5, 1e-6, "gelu_backward strided");
  expect_error([&] { gelu_backward(values({2, 3}), values({3, 2})); }, {"gelu_backward", "[2, 3]", "[3, 2]"});
}

// The training forward's fused gelu + derivative must give exactly the bits of the two separate ops (the
// float32 results of a training step are unchanged by the fusion), on a sweep through the erf's series /
// Chebyshev switch at |x / sqrt 2| = 0.5, the far tails, the specials, and a strided input.
TEST(Elementwise, GeluWithGradIsBitIdenticalToGeluAndGeluBackward) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> xs;
  for (int i = -40000; i <= 40000; ++i) xs.push_back(i * 3e-4f);  // [-12, 12], crossing +-0.7071 many times
  for (float v : {0.70710677f, -0.70710677f, 0.7071068f, -0.7071068f, 14.2f, -14.2f, 20.f, -20.f, 1e-30f,
                  -1e-30f, 0.f, -0.f, 3e38f, -3e38f, inf, -inf, std::numeric_limits<float>::quiet_NaN()})
    xs.push_back(v);
  const int64_t n = static_cast<int64_t>(xs.size());
  Tensor x = from_vector(xs, {n});
  Tensor d;
  const Tensor y = gelu_with_grad(x, d);
  const Tensor y_ref = gelu(x), d_ref = gelu_backward(ones({n}), x);
  const float *py = y.data<float>(), *pd = d.data<float>();
  const float *ry = y_ref.data<float>(), *rd = d_ref.data<float>();
  int64_t differ = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool same_y = std::memcmp(py + i, ry + i, sizeof(float)) == 0;
    const bool same_d = std::memcmp(pd + i, rd + i, sizeof(float)) == 0;
    if (!same_y || !same_d) {
      if (++differ <= 5) ADD_FAILURE() << "x = " << xs[i] << ": y " << py[i] << " vs " << ry[i] << ", dy/dx " << pd[i]
                                       << " vs " << rd[i];
    }
  }
  EXPECT_EQ(differ, 0);
  // Huge and infinite inputs: the derivative tends to 1 (x -> +inf) and 0 (x -> -inf), not NaN.
  const Tensor big = from_vector(std::vector<float>{3e38f, inf, -3e38f, -inf, 30.f, -30.f}, {6});
  Tensor dbig;
  gelu_with_grad(big, dbig);
  EXPECT_EQ(dbig.to_vector<float>(), (std::vector<float>{1.f, 1.f, 0.f, 0.f, 1.f, 0.f}));
  // Strided (transposed) input: results in x's logical order.
  Tensor xt = values({8, 5}, 44, -5.f, 5.f).t();
  Tensor dt;
  const Tensor yt = gelu_with_grad(xt, dt);
  ASSERT_EQ(yt.shape(), (Shape{5, 8}));
  ASSERT_EQ(dt.shape(), (Shape{5, 8}));
  EXPECT_EQ(yt.to_vector<float>(), gelu(xt).to_vector<float>());
  EXPECT_EQ(dt.to_vector<float>(), gelu_backward(ones({5, 8}), xt).to_vector<float>());
  expect_error([&] { gelu_with_grad(from_vector(std::vector<int64_t>{1, 2}, {2}), dt); }, {"gelu_with_grad", "int64"});
}

TEST(Elementwise, WhereAndMaskedFill) {
  Tensor cond = from_bytes({1, 0, 0, 1, 1, 0}, {2, 3}, DType::Bool);
  Tensor a = values({2, 3}, 51), b = values({3}, 52);
  Tensor w = where(cond, a, b);
  EXPECT_EQ(w.dtype(), DType::Float32);
  expect_close(w, {2, 3}, [&](auto& i) { return cond.at(i) ? a.at(i) : at_bcast(b, i); }, 0, 0, "where");
  // uint8 condition with values > 1, broadcast cond [3, 1] against [1, 4] operands, transposed a.
  Tensor c8 = from_bytes({0, 7, 1}, {3, 1}, DType::UInt8);
  Tensor at_ = values({4, 3}, 53).t(), bt = scalar_tensor(-9.f);
  Tensor w2 = where(c8, at_, bt);
  expect_close(w2, {3, 4}, [&](auto& i) { return at_bcast(c8, i) ? at_.at(i) : -9.0; }, 0, 0, "where uint8 bcast");
  // 0-d condition, int64 operands keep int64.
  Tensor ia = ivalues({4}, 0, 100), ib = ivalues({4}, 0, 100, 9);
  EXPECT_EQ(where(from_bytes({0}, {}, DType::Bool), ia, ib).to_vector<int64_t>(), ib.to_vector<int64_t>());
  EXPECT_EQ(where(from_bytes({1}, {}, DType::Bool), ia, ib).dtype(), DType::Int64);
  EXPECT_EQ(where(cond.narrow(0, 0, 0), a.narrow(0, 0, 0), b).numel(), 0);
  // Errors: the condition's dtype is named, and shape mismatches name the op.
  expect_error([&] { where(a, a, b); }, {"where", "float32"});
  expect_error([&] { where(ia, a, b); }, {"where", "int64"});
  expect_error([&] { where(cond, a, values({4})); }, {"where", "[2, 3]", "[4]"});

  Tensor mask = from_bytes({0, 1, 1}, {3}, DType::Bool);
  Tensor base = values({4, 3}, 54);
  Tensor m = masked_fill(base, mask, -1e9f);
  expect_close(m, {4, 3}, [&](auto& i) { return mask.at({i[1]}) ? -1e9 : base.at(i); }, 1e-7, 0, "masked_fill");
  Tensor mt = masked_fill(base.t(), from_bytes({1, 0, 0, 0}, {1, 4}, DType::UInt8), 5.f);
  expect_close(mt, {3, 4}, [&](auto& i) { return i[1] == 0 ? 5.0 : base.at({i[1], i[0]}); }, 0, 0, "masked_fill t");
  EXPECT_EQ(masked_fill(ia, mask.narrow(0, 1, 1), 3.f).to_vector<int64_t>(), (std::vector<int64_t>(4, 3)));
  expect_error([&] { masked_fill(base, values({3}), 0.f); }, {"masked_fill", "float32"});
  expect_error([&] { masked_fill(ia, mask.narrow(0, 1, 1), -INFINITY); }, {"masked_fill", "int64"});
  Tensor bytes = from_bytes({1, 2, 3}, {3});
  EXPECT_EQ(masked_fill(bytes, mask, 9.f).to_vector<int>(), (std::vector<int>{1, 9, 9}));
  expect_error([&] { masked_fill(bytes, mask, 300.f); }, {"masked_fill", "uint8"});
  expect_error([&] { masked_fill(base, mask.narrow(0, 0, 2), 0.f); }, {"masked_fill", "[4, 3]", "[2]"});
}

TEST(Elementwise, ComparisonsReturnBool) {
  Tensor a = from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = from_vector(std::vector<float>{2, 2, 2}, {3});
  auto v = [](const Tensor& t) {
    EXPECT_EQ(t.dtype(), DType::Bool);
    return t.to_vector<int>();
  };
  EXPECT_EQ(v(eq(a, b)), (std::vector<int>{0, 1, 0, 0, 0, 0}));
  EXPECT_EQ(v(ne(a, b)), (std::vector<int>{1, 0, 1, 1, 1, 1}));
  EXPECT_EQ(v(lt(a, b)), (std::vector<int>{1, 0, 0, 0, 0, 0}));
  EXPECT_EQ(v(le(a, b)), (std::vector<int>{1, 1, 0, 0, 0, 0}));
  EXPECT_EQ(v(gt(a, b)), (std::vector<int>{0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(v(ge(a, b)), (std::vector<int>{0, 1, 1, 1, 1, 1}));
  EXPECT_EQ(v(gt(a, 3.5f)), (std::vector<int>{0, 0, 0, 1, 1, 1}));
  EXPECT_EQ(v(lt(a, 3.5f)), (std::vector<int>{1, 1, 1, 0, 0, 0}));
  // Transposed input and broadcasting against a column.
  Tensor col = from_vector(std::vector<float>{2, 5, 0}, {3, 1});
  Tensor g = gt(a.t(), col);  // a.t() = [[1,4],[2,5],[3,6]]
  EXPECT_EQ(v(g), (std::vector<int>{0, 1, 0, 0, 1, 1}));
  // Mixed dtypes compare in a common type; int64 scalars compare exactly.
  Tensor i = from_vector(std::vector<int64_t>{1, 2, 3}, {3});
  EXPECT_EQ(v(eq(i, b)), (std::vector<int>{0, 1, 0}));
  EXPECT_EQ(v(gt(i, 1.5f)), (std::vector<int>{0, 1, 1}));
  Tensor big = from_vector(std::vector<int64_t>{(int64_t{1} << 40) + 1}, {1});
  EXPECT_EQ(v(eq(big, from_vector(std::vector<int64_t>{int64_t{1} << 40}, {1}))), (std::vector<int>{0}));
  Tensor bo = from_bytes({1, 0, 1}, {3}, DType::Bool), u8 = from_bytes({1, 1, 0}, {3}, DType::UInt8);
  EXPECT_EQ(v(eq(bo, u8)), (std::vector<int>{1, 0, 0}));
  // NaN compares unequal to everything.
  Tensor n = scalar_tensor(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(v(eq(n, n)), (std::vector<int>{0}));
  EXPECT_EQ(v(ne(n, n)), (std::vector<int>{1}));
  EXPECT_EQ(eq(values({0, 2}), values({2})).shape(), (Shape{0, 2}));
  EXPECT_EQ(v(ge(scalar_tensor(1), scalar_tensor(1))), (std::vector<int>{1}));
  expect_error([&] { lt(a, values({2})); }, {"lt", "[2, 3]", "[2]"});
}

TEST(Elementwise, LogicalOps) {
  Tensor p = from_bytes({1, 1, 0, 0}, {4}, DType::Bool);
  Tensor q = from_bytes({1, 0, 1, 0}, {4}, DType::Bool);
  EXPECT_EQ(logical_and(p, q).to_vector<int>(), (std::vector<int>{1, 0, 0, 0}));
  EXPECT_EQ(logical_or(p, q).to_vector<int>(), (std::vector<int>{1, 1, 1, 0}));
  EXPECT_EQ(logical_not(p).to_vector<int>(), (std::vector<int>{0, 0, 1, 1}));
  EXPECT_EQ(logical_not(p).dtype(), DType::Bool);
  // Any dtype: nonzero is true; uint8 values > 1 too; broadcasting; strided.
  Tensor f = from_vector(std::vector<float>{0.f, -2.f, 0.5f, 0.f}, {4});
  Tensor u = from_bytes({2, 0}, {2, 1}, DType::UInt8);
  EXPECT_EQ(logical_and(f, u).to_vector<int>(), (std::vector<int>{0, 1, 1, 0, 0, 0, 0, 0}));
  EXPECT_EQ(logical_not(u).to_vector<int>(), (std::vector<int>{0, 1}));
  EXPECT_EQ(logical_or(p.slice(0, 0, 4, 2), q.slice(0, 1, 4, 2)).to_vector<int>(), (std::vector<int>{1, 0}));
  expect_error([&] { logical_and(p, values({3})); }, {"logical_and", "[4]", "[3]"});
}

namespace {
// Plain reference for sum_to_shape: accumulate every grad element into its target position, in double.
std::vector<double> ref_sum_to(const Tensor& g, const Shape& shape) {
  std::vector<double> out(shape_numel(shape), 0.0);
  const Shape st = contiguous_strides(shape);
  const size_t lead = g.dim() - shape.size();
  for (const auto& i : indices(g.shape())) {
    int64_t o = 0;
    for (size_t d = 0; d < shape.size(); ++d) o += (shape[d] == 1 ? 0 : i[lead + d]) * st[d];
    out[o] += g.at(i);
  }
  return out;
}
void check_sum_to(const Tensor& g, const Shape& shape, const std::string& what) {
  const Tensor got = sum_to_shape(g, shape);
  ASSERT_EQ(got.shape(), shape) << what;
  const std::vector<double> ref = ref_sum_to(g, shape);
  double scale = 0;  // sum of |terms| per output bounds the float32 rounding error
  for (const auto& i : indices(g.shape())) scale = std::max(scale, std::fabs(g.at(i)));
  const double tol = kSumRelTol * scale * std::max<double>(1, double(g.numel()) / std::max<int64_t>(1, got.numel()));
  const std::vector<double> gv = got.to_vector<double>();
  int bad = 0;
  for (size_t k = 0; k < ref.size(); ++k)
    if (std::fabs(gv[k] - ref[k]) > tol && bad++ < 5)
      ADD_FAILURE() << what << " [" << k << "]: got " << gv[k] << " want " << ref[k] << " tol " << tol;
}
}  // namespace

TEST(Elementwise, SumToShape) {
  Tensor g = values({4, 6, 8}, 61);
  check_sum_to(g, {8}, "[B,T,C] -> [C]");
  check_sum_to(g, {1, 1, 8}, "-> [1,1,C]");
  check_sum_to(g, {4, 1, 8}, "-> [B,1,C]");
  check_sum_to(g, {4, 6, 1}, "-> [B,T,1]");
  check_sum_to(g, {6, 1}, "-> [T,1]");
  check_sum_to(g, {1, 6, 1}, "-> [1,T,1]");
  check_sum_to(g, {4, 1, 1}, "-> [B,1,1]");
  check_sum_to(g, {}, "-> scalar");
  check_sum_to(g, {1}, "-> [1]");
  check_sum_to(g, {6, 8}, "-> [T,C]");
  check_sum_to(values({1, 5, 1, 3}, 62), {5, 1, 3}, "leading size-1 dim only");
  check_sum_to(values({2, 1, 3}, 63), {2, 1, 1}, "size-1 dims kept");
  // Non-contiguous gradients.
  check_sum_to(values({8, 6, 4}, 64).permute({2, 1, 0}), {6, 1}, "permuted grad");
  check_sum_to(values({5, 20}, 65).slice(1, 0, 20, 3), {1, 7}, "step-sliced grad");
  check_sum_to(values({3}, 66).expand({4, 3}), {3}, "expanded grad");
  // Large shapes exercise the parallel paths (few long rows, many short rows, column sums).
  check_sum_to(values({16, 250, 96}, 67), {96}, "large [B,T,C] -> [C]");
  check_sum_to(values({3, 4000, 40}, 68), {3, 1, 40}, "large [B,T,C] -> [B,1,C]");
  check_sum_to(values({2, 100000}, 69), {2, 1}, "long rows");
  check_sum_to(values({200000}, 70), {}, "long full sum");
  check_sum_to(values({5000, 30}, 71), {5000, 1}, "many short rows");
  // Same shape: returned as is.
  EXPECT_TRUE(sum_to_shape(g, g.shape()).shares_storage(g));
  // Empty: zeros of the target shape.
  Tensor e = sum_to_shape(values({0, 3}), {3});
  EXPECT_EQ(e.to_vector<float>(), (std::vector<float>{0, 0, 0}));
  EXPECT_EQ(sum_to_shape(values({2, 0}), {2, 1}).to_vector<float>(), (std::vector<float>{0, 0}));
  // Errors name both shapes.
  expect_error([&] { sum_to_shape(g, {5}); }, {"sum_to_shape", "[4, 6, 8]", "[5]"});
  expect_error([&] { sum_to_shape(g, {2, 4, 6, 8}); }, {"sum_to_shape", "[2, 4, 6, 8]"});
  expect_error([&] { sum_to_shape(ivalues({2, 3}, 0, 5), {3}); }, {"sum_to_shape", "int64"});
}

TEST(Elementwise, SameResultsOnOneAndTwoThreads) {
  Tensor a = values({64, 1000}, 81).t(), b = values({64, 1}, 82).t();
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto r1 = add(a, b).to_vector<float>(), g1 = gelu(a).to_vector<float>();
  omp_set_num_threads(2);
  const auto r2 = add(a, b).to_vector<float>(), g2 = gelu(a).to_vector<float>();
  omp_set_num_threads(saved);
  EXPECT_EQ(r1, r2);
  EXPECT_EQ(g1, g2);
}

namespace {
// Error of a float result in units of the last place of the correctly rounded reference.
double ulp_error(float got, double ref) {
  if (std::isnan(ref)) return std::isnan(got) ? 0 : 1e30;
  if (std::isinf(ref) || std::isinf(got)) return got == static_cast<float>(ref) ? 0 : 1e30;
  const float rf = static_cast<float>(ref);
  double u = std::fabs(double(std::nextafter(rf, std::numeric_limits<float>::infinity())) - rf);
  if (u == 0) u = std::numeric_limits<float>::denorm_min();
  return std::fabs(got - ref) / u;
}
struct Sweep {
  double max_ulp = 0, max_abs = 0, worst_x = 0;
};
template <class F, class R>
Sweep sweep(F f, R ref, float lo, float hi, int n = 400000) {
  Sweep s;
  for (int i = 0; i <= n; ++i) {
    const float x = lo + (hi - lo) * static_cast<float>(i) / n;
    const float g = f(x);
    const double r = ref(double(x));
    const double e = ulp_error(g, r);
    if (e > s.max_ulp) {
      s.max_ulp = e;
      s.worst_x = x;
    }
    s.max_abs = std::max(s.max_abs, std::fabs(g - r));
  }
  return s;
}
// Measured worst cases are 1-8 ulp (see tensor/elementwise_math.h); these bounds leave a little room.
constexpr double kExpUlp = 2, kTanhUlp = 3, kSigmoidUlp = 4, kErfUlp = 6, kGeluUlp = 12;
constexpr double kGeluGradAbs = 4e-7;  // gelu' crosses zero near -0.75, where ulps mean nothing
}  // namespace

TEST(Elementwise, MathFunctionsMatchLibm) {
  using namespace sonar::detail;
  const double rs2 = 1 / std::sqrt(2.0), rs2pi = 1 / std::sqrt(2 * M_PI);
  auto ex = [](double x) { return std::exp(x); };
  auto check = [](const Sweep& s, double bound, const char* what) {
    EXPECT_LE(s.max_ulp, bound) << what << ": worst at x = " << s.worst_x;
  };
  check(sweep([](float x) { return exp_f(x); }, ex, -87.f, 88.7f), kExpUlp, "exp");
  check(sweep([](float x) { return exp_f(x); }, ex, -104.f, -87.f), kExpUlp, "exp (denormal results)");
  check(sweep([](float x) { return tanh_f(x); }, [](double x) { return std::tanh(x); }, -12.f, 12.f), kTanhUlp, "tanh");
  check(sweep([](float x) { return tanh_f(x); }, [](double x) { return std::tanh(x); }, -1.f, 1.f), kTanhUlp, "tanh near 0");
  check(sweep([](float x) { return sigmoid_f(x); }, [](double x) { return 1 / (1 + std::exp(-x)); }, -100.f, 30.f), kSigmoidUlp, "sigmoid");
  check(sweep([](float x) { return erf_f(x); }, [](double x) { return std::erf(x); }, -6.f, 6.f), kErfUlp, "erf");
  check(sweep([](float x) { return erf_f(x); }, [](double x) { return std::erf(x); }, -1e-3f, 1e-3f), kErfUlp, "erf tiny");
  check(sweep([](float x) { return gelu_f(x); }, [&](double x) { return 0.5 * x * std::erfc(-x * rs2); }, -12.f, 12.f), kGeluUlp, "gelu");
  check(sweep([](float x) { return gelu_f(x); }, [&](double x) { return 0.5 * x * std::erfc(-x * rs2); }, -1.f, 1.f), kGeluUlp, "gelu near 0");
  const Sweep g = sweep([](float x) { return gelu_grad_f(x); }, [&](double x) { return 0.5 * std::erfc(-x * rs2) + x * rs2pi * std::exp(-x * x / 2); },
                        -12.f, 12.f);
  EXPECT_LE(g.max_abs, kGeluGradAbs) << "gelu' worst at " << g.worst_x;
  // Special values.
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(exp_f(inf), inf);
  EXPECT_EQ(exp_f(-inf), 0.f);
  EXPECT_EQ(exp_f(88.7f), std::exp(88.7f));
  EXPECT_EQ(exp_f(89.f), inf);
  EXPECT_TRUE(std::isnan(exp_f(nan)));
  EXPECT_EQ(tanh_f(inf), 1.f);
  EXPECT_EQ(tanh_f(-inf), -1.f);
  EXPECT_TRUE(std::isnan(tanh_f(nan)));
  EXPECT_EQ(erf_f(inf), 1.f);
  EXPECT_EQ(erf_f(-inf), -1.f);
  EXPECT_TRUE(std::isnan(erf_f(nan)));
  EXPECT_EQ(gelu_f(inf), inf);
  EXPECT_TRUE(std::isnan(gelu_f(nan)));
  EXPECT_EQ(sigmoid_f(-inf), 0.f);
  EXPECT_EQ(sigmoid_f(inf), 1.f);
}

TEST(Elementwise, SqrtRsqrtVectorPathAndTail) {
  for (int64_t n : {1, 7, 8, 9, 100, 1 << 17}) {
    Tensor x = values({n}, 91, 0.f, 100.f);
    auto s = sqrt(x).to_vector<float>(), r = rsqrt(x).to_vector<float>();
    for (int64_t i = 0; i < n; ++i) {
      const float v = static_cast<float>(x.at({i}));
      ASSERT_EQ(s[i], std::sqrt(v)) << i;  // correctly rounded either way
      ASSERT_EQ(r[i], 1.0f / std::sqrt(v)) << i;
    }
  }
  EXPECT_TRUE(std::isnan(sqrt(scalar_tensor(-1.f)).item<float>()));
  EXPECT_EQ(rsqrt(scalar_tensor(0.f)).item<float>(), std::numeric_limits<float>::infinity());
}
