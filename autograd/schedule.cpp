// Warm-up + cosine/linear decay learning-rate schedule (see schedule.h). Not an optimiser.
#include "autograd/schedule.h"

#include <cmath>
#include <numbers>

#include "tensor/error.h"

namespace sonar::ag {

LrSchedule::LrSchedule(const LrScheduleOptions& opt) : opt_(opt) {
  SONAR_CHECK(opt.warmup_steps >= 0, "LrSchedule: warmup_steps must be >= 0, got ", opt.warmup_steps);
  SONAR_CHECK(opt.total_steps >= opt.warmup_steps, "LrSchedule: total_steps ", opt.total_steps,
              " is before the end of warm-up (", opt.warmup_steps, ")");
  SONAR_CHECK(opt.peak_lr >= 0 && opt.init_lr >= 0 && opt.final_lr >= 0 && std::isfinite(opt.peak_lr) &&
                  std::isfinite(opt.init_lr) && std::isfinite(opt.final_lr),
              "LrSchedule: learning rates must be finite and >= 0 (init ", opt.init_lr, ", peak ", opt.peak_lr,
              ", final ", opt.final_lr, ")");
}

double LrSchedule::lr_at(int64_t step) const {
  SONAR_CHECK(step >= 0, "LrSchedule::lr_at: negative step ", step);
  const auto& o = opt_;
  if (step < o.warmup_steps)
    return o.init_lr + (o.peak_lr - o.init_lr) * static_cast<double>(step) / static_cast<double>(o.warmup_steps);
  if (o.decay == Decay::Constant) return o.peak_lr;
  if (step >= o.total_steps) return o.final_lr;
  const double p = static_cast<double>(step - o.warmup_steps) / static_cast<double>(o.total_steps - o.warmup_steps);
  if (o.decay == Decay::Linear) return o.peak_lr + (o.final_lr - o.peak_lr) * p;
  return o.final_lr + (o.peak_lr - o.final_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * p));
}

}  // namespace sonar::ag
