// Learning-rate schedule: linear warm-up from init_lr to peak_lr over warmup_steps, then cosine or linear decay
// to final_lr (the floor) at total_steps, constant afterwards. lr_at(step) is a pure function of the number of
// optimiser steps already taken (step 0 is the first update), so a resumed run gets the same values.
// Not an optimiser: the training loop calls opt.set_lr(schedule.lr_at(step)) before each step.
#pragma once
#include <cstdint>

namespace sonar::ag {

enum class Decay { Cosine, Linear, Constant };

struct LrScheduleOptions {
  double peak_lr = 1e-3;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;  // end of the decay; must be >= warmup_steps
  double init_lr = 0.0;     // lr at step 0 when warmup_steps > 0
  double final_lr = 0.0;    // the floor reached at total_steps
  Decay decay = Decay::Cosine;
};

class LrSchedule {
 public:
  explicit LrSchedule(const LrScheduleOptions& opt);
  // step < warmup: init + (peak - init) * step / warmup
  // warmup <= step < total: p = (step - warmup) / (total - warmup);
  //   cosine: final + (peak - final) * (1 + cos(pi p)) / 2; linear: peak + (final - peak) p; constant: peak
  // step >= total: final (peak for Constant)
  double lr_at(int64_t step) const;
  const LrScheduleOptions& options() const { return opt_; }

 private:
  LrScheduleOptions opt_;
};

}  // namespace sonar::ag
