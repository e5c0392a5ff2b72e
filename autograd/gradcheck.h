// Finite-difference gradient check: compares the engine's gradients of f(inputs) with central differences.
// The output is reduced to a scalar by a fixed random projection L = sum_j R_j y_j (so every output element
// is checked at once); the differences are taken in double over the float32 forward, dividing by the step
// actually representable in float32. Inputs may be non-contiguous views (they are perturbed through their
// strides) but not expanded (stride 0 over a dim of size > 1). Not a test framework: it returns a result.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "autograd/var.h"

namespace sonar::ag {

struct GradcheckOptions {
  double eps = 1e-3;   // finite-difference step
  double atol = 1e-3;  // pass when |analytic - numeric| <= atol + rtol * |numeric|
  double rtol = 1e-2;
  uint64_t seed = 0x5eed;  // of the output projection R (uniform in [-1, 1])
  int max_report = 8;      // mismatches listed in the report
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_err = 0.0;
  double max_rel_err = 0.0;  // |a - n| / max(|n|, 1e-12)
  int64_t checked = 0;       // number of input elements compared
  std::string report;        // the first mismatches: input, element, analytic, numeric
};

using GradcheckFn = std::function<Var(const std::vector<Var>&)>;

// Every tensor in `inputs` must be float32; each becomes a leaf with requires_grad and is differentiated.
// The tensors are perturbed in place during the check and restored afterwards.
GradcheckResult gradcheck(const GradcheckFn& f, const std::vector<Tensor>& inputs, const GradcheckOptions& opt = {});

}  // namespace sonar::ag
