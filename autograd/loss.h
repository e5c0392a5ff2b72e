// Differentiable losses with PyTorch semantics (reduction = mean): cross-entropy with label smoothing and an
// ignored label, mean squared error, cosine similarity and binary cross-entropy on logits. Cross-entropy and
// BCE are fused (one kernel forward, closed-form gradient backward, sums in double); the others are composed
// from autograd/ops.h. Not modules and not metrics (accuracy, mAP live in sonar/).
#pragma once
#include <cstdint>

#include "autograd/var.h"

namespace sonar::ag {

// logits [N, C] float, target [N] int64 class ids in [0, C) or == ignore_index.
// Per row: (1 - s) * (-log p[target]) + s * mean_c(-log p[c]) with s = label_smoothing; the result is the mean
// over rows whose target != ignore_index (NaN when every row is ignored, as in PyTorch).
// Gradient per kept row: (softmax - ((1 - s) onehot + s / C)) / kept_rows.
Var cross_entropy(const Var& logits, const Tensor& target, float label_smoothing = 0.0f, int64_t ignore_index = -100);

// mean((a - b)^2); a and b must have the same shape.
Var mse_loss(const Var& a, const Var& b);

// a.b / (max(||a||, eps) * max(||b||, eps)) along dim (a and b broadcast first); the result drops dim.
Var cosine_similarity(const Var& a, const Var& b, int64_t dim = 1, float eps = 1e-8f);

// mean(max(x, 0) - x t + log(1 + exp(-|x|))): stable for any |x|. targets: float32, same shape as logits,
// values in [0, 1]. Gradient (sigmoid(x) - t) / numel.
Var binary_cross_entropy_with_logits(const Var& logits, const Tensor& targets);

}  // namespace sonar::ag
