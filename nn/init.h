// Parameter initialisers with PyTorch's semantics (torch.nn.init): fans, gains, uniform/normal/truncated normal,
// xavier and kaiming, filling a float32 tensor in place from a seedable Generator. The numbers differ from
// PyTorch's own generator; the distributions are the same.
// Not here: which layer uses which initialiser (each layer's reset_parameters, and nn/beats/init for the
// official BEATs scheme).
#pragma once
#include <string>

#include "tensor/random.h"
#include "tensor/tensor.h"

namespace sonar::nn::init {

struct Fans {
  int64_t fan_in = 0, fan_out = 0;
};
// fan_in = size(1) * receptive field, fan_out = size(0) * receptive field; needs at least 2 dims.
Fans compute_fans(const Shape& shape);

// torch.nn.init.calculate_gain: "linear", "conv1d", "conv2d", "sigmoid" -> 1, "tanh" -> 5/3,
// "relu" -> sqrt(2), "leaky_relu" -> sqrt(2 / (1 + param^2)), "selu" -> 3/4.
double calculate_gain(const std::string& nonlinearity, double param = 0.01);

void constant_(Tensor& t, double value);
void zeros_(Tensor& t);
void ones_(Tensor& t);
void uniform_(Tensor& t, double lo, double hi, Generator& gen);
void normal_(Tensor& t, double mean, double std, Generator& gen);
// Normal(mean, std) restricted to [a, b] (inverse-CDF sampling, as torch.nn.init.trunc_normal_).
void trunc_normal_(Tensor& t, double mean, double std, double a, double b, Generator& gen);
// U(-bound, bound) with bound = gain * sqrt(6 / (fan_in + fan_out)).
void xavier_uniform_(Tensor& t, double gain, Generator& gen);
// N(0, gain * sqrt(2 / (fan_in + fan_out))).
void xavier_normal_(Tensor& t, double gain, Generator& gen);
enum class FanMode { FanIn, FanOut };
// U(-bound, bound) with bound = gain(nonlinearity, a) * sqrt(3 / fan).
void kaiming_uniform_(Tensor& t, double a, FanMode mode, const std::string& nonlinearity, Generator& gen);
// N(0, gain(nonlinearity, a) / sqrt(fan)).
void kaiming_normal_(Tensor& t, double a, FanMode mode, const std::string& nonlinearity, Generator& gen);

// Inverse error function in double precision (for trunc_normal_ and tests).
double erfinv(double y);

}  // namespace sonar::nn::init
