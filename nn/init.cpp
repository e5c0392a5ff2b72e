// Initialisers (see nn/init.h). Each draws one whole tensor from tensor/random.h and writes it in place.
#include "nn/init.h"

#include <cmath>

#include "tensor/elementwise.h"

namespace sonar::nn::init {

namespace {
void check_float(const Tensor& t, const char* op) {
  SONAR_CHECK(t.defined() && t.dtype() == DType::Float32, "init::", op, ": needs a defined float32 tensor");
}
}  // namespace

Fans compute_fans(const Shape& shape) {
  SONAR_CHECK(shape.size() >= 2, "init: fans need a tensor with at least 2 dims, got ", shape_str(shape));
  int64_t receptive = 1;
  for (size_t i = 2; i < shape.size(); ++i) receptive *= shape[i];
  return Fans{shape[1] * receptive, shape[0] * receptive};
}

double calculate_gain(const std::string& nl, double param) {
  if (nl == "linear" || nl == "conv1d" || nl == "conv2d" || nl == "conv3d" || nl == "sigmoid") return 1.0;
  if (nl == "tanh") return 5.0 / 3.0;
  if (nl == "relu") return std::sqrt(2.0);
  if (nl == "leaky_relu") return std::sqrt(2.0 / (1.0 + param * param));
  if (nl == "selu") return 0.75;
  SONAR_FAIL("init::calculate_gain: unknown nonlinearity '", nl, "'");
}

void constant_(Tensor& t, double value) {
  check_float(t, "constant_");
  t.fill_(value);
}
void zeros_(Tensor& t) { constant_(t, 0.0); }
void ones_(Tensor& t) { constant_(t, 1.0); }

void uniform_(Tensor& t, double lo, double hi, Generator& gen) {
  check_float(t, "uniform_");
  SONAR_CHECK(lo <= hi, "init::uniform_: lo ", lo, " > hi ", hi);
  t.copy_(add(mul(rand(t.shape(), gen), static_cast<float>(hi - lo)), static_cast<float>(lo)));
}

void normal_(Tensor& t, double mean, double std, Generator& gen) {
  check_float(t, "normal_");
  SONAR_CHECK(std >= 0.0, "init::normal_: negative std ", std);
  t.copy_(add(mul(randn(t.shape(), gen), static_cast<float>(std)), static_cast<float>(mean)));
}

double erfinv(double y) {
  SONAR_CHECK(y > -1.0 && y < 1.0, "init::erfinv: argument ", y, " outside (-1, 1)");
  // Initial guess (Giles 2010, single-precision branch), then Newton steps on erf(x) - y.
  double w = -std::log((1.0 - y) * (1.0 + y)), x;
  if (w < 5.0) {
    w -= 2.5;
    x = 2.81022636e-08;
    x = 3.43273939e-07 + x * w;
    x = -3.5233877e-06 + x * w;
    x = -4.39150654e-06 + x * w;
    x = 0.00021858087 + x * w;
    x = -0.00125372503 + x * w;
    x = -0.00417768164 + x * w;
    x = 0.246640727 + x * w;
    x = 1.50140941 + x * w;
  } else {
    w = std::sqrt(w) - 3.0;
    x = -0.000200214257;
    x = 0.000100950558 + x * w;
    x = 0.00134934322 + x * w;
    x = -0.00367342844 + x * w;
    x = 0.00573950773 + x * w;
    x = -0.0076224613 + x * w;
    x = 0.00943887047 + x * w;
    x = 1.00167406 + x * w;
    x = 2.83297682 + x * w;
  }
  x *= y;
  const double two_over_sqrt_pi = 1.1283791670955126;
  for (int i = 0; i < 3; ++i) x -= (std::erf(x) - y) / (two_over_sqrt_pi * std::exp(-x * x));
  return x;
}

void trunc_normal_(Tensor& t, double mean, double std, double a, double b, Generator& gen) {
  check_float(t, "trunc_normal_");
  SONAR_CHECK(std > 0.0 && a < b, "init::trunc_normal_: needs std > 0 and a < b (std ", std, ", a ", a, ", b ", b,
              ")");
  auto cdf = [](double x) { return 0.5 * (1.0 + std::erf(x / std::sqrt(2.0))); };
  const double l = cdf((a - mean) / std), u = cdf((b - mean) / std);
  Tensor r = rand(t.shape(), gen).contiguous();
  float* p = r.data<float>();
  for (int64_t i = 0; i < r.numel(); ++i) {
    // uniform in [2l - 1, 2u - 1], kept strictly inside (-1, 1) for erfinv
    double v = (2.0 * l - 1.0) + p[i] * (2.0 * (u - l));
    v = std::min(std::max(v, -1.0 + 1e-15), 1.0 - 1e-15);
    double x = erfinv(v) * std * std::sqrt(2.0) + mean;
    p[i] = static_cast<float>(std::min(std::max(x, a), b));
  }
  t.copy_(r);
}

void xavier_uniform_(Tensor& t, double gain, Generator& gen) {
  Fans f = compute_fans(t.shape());
  const double bound = gain * std::sqrt(6.0 / static_cast<double>(f.fan_in + f.fan_out));
  uniform_(t, -bound, bound, gen);
}

void xavier_normal_(Tensor& t, double gain, Generator& gen) {
  Fans f = compute_fans(t.shape());
  normal_(t, 0.0, gain * std::sqrt(2.0 / static_cast<double>(f.fan_in + f.fan_out)), gen);
}

void kaiming_uniform_(Tensor& t, double a, FanMode mode, const std::string& nonlinearity, Generator& gen) {
  Fans f = compute_fans(t.shape());
  const double fan = static_cast<double>(mode == FanMode::FanIn ? f.fan_in : f.fan_out);
  SONAR_CHECK(fan > 0, "init::kaiming_uniform_: zero fan for shape ", shape_str(t.shape()));
  const double bound = calculate_gain(nonlinearity, a) * std::sqrt(3.0 / fan);
  uniform_(t, -bound, bound, gen);
}

void kaiming_normal_(Tensor& t, double a, FanMode mode, const std::string& nonlinearity, Generator& gen) {
  Fans f = compute_fans(t.shape());
  const double fan = static_cast<double>(mode == FanMode::FanIn ? f.fan_in : f.fan_out);
  SONAR_CHECK(fan > 0, "init::kaiming_normal_: zero fan for shape ", shape_str(t.shape()));
  normal_(t, 0.0, calculate_gain(nonlinearity, a) / std::sqrt(fan), gen);
}

}  // namespace sonar::nn::init
