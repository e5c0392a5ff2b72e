// The scoped timers of tensor/profile.h: nothing is recorded while profiling is off; nested scopes form paths
// whose self times and children add up to the parent's total; kernels report exact FLOP counts to the
// innermost scope; and the autograd engine times each node's backward under the part that recorded it.
#include <gtest/gtest.h>

#include "autograd/ops.h"
#include "tensor/ops.h"
#include "tensor/profile.h"
#include "tensor/random.h"

namespace sonar {
namespace {

constexpr double kSumTolSeconds = 1e-9;  // sums of integer nanoseconds, compared after conversion

const profile::Row* find(const std::vector<profile::Row>& rows, const std::string& phase, const std::string& path) {
  for (const auto& r : rows)
    if (r.phase == phase && r.path == path) return &r;
  return nullptr;
}

struct Profiling {
  Profiling() {
    profile::reset();
    profile::set_enabled(true);
  }
  ~Profiling() { profile::set_enabled(false); }
};

TEST(Profile, OffRecordsNothing) {
  profile::reset();
  profile::set_enabled(false);
  {
    profile::Scope a("outer");
    profile::Scope b("inner", 3);
    EXPECT_EQ(profile::current_part(), -1);
    profile::count_flops(100);
  }
  EXPECT_TRUE(profile::rows().empty());
}

TEST(Profile, NestedPathsSelfTimesAndFlops) {
  Generator gen(1);
  const Tensor a = randn({8, 16}, gen), b = randn({16, 4}, gen);
  {
    Profiling on;
    for (int i = 0; i < 2; ++i) {
      profile::Scope outer("outer");
      (void)matmul(a, b);  // 2 * 8 * 4 * 16 FLOP to "outer"
      for (int j = 0; j < 2; ++j) {
        profile::Scope inner("layers", j);
        (void)matmul(b, b.transpose(0, 1));  // 2 * 16 * 16 * 4 to "outer/layers.j"
      }
    }
  }
  const auto rows = profile::rows();
  ASSERT_EQ(rows.size(), 3u);
  const profile::Row* o = find(rows, "forward", "outer");
  const profile::Row* l0 = find(rows, "forward", "outer/layers.0");
  const profile::Row* l1 = find(rows, "forward", "outer/layers.1");
  ASSERT_TRUE(o && l0 && l1);
  EXPECT_EQ(o->calls, 2);
  EXPECT_EQ(l0->calls, 2);
  EXPECT_DOUBLE_EQ(o->self_flops, 2 * 2.0 * 8 * 4 * 16);
  EXPECT_DOUBLE_EQ(l1->self_flops, 2 * 2.0 * 16 * 16 * 4);
  EXPECT_NEAR(o->total_seconds, o->self_seconds + l0->total_seconds + l1->total_seconds, kSumTolSeconds);
  EXPECT_DOUBLE_EQ(l0->self_seconds, l0->total_seconds);  // no children
  EXPECT_GE(o->self_seconds, 0.0);
}

TEST(Profile, BackwardCountsInTheRecordingPart) {
  Generator gen(2);
  ag::Var x(randn({5, 12}, gen), true), w(randn({7, 12}, gen), true);
  {
    Profiling on;
    ag::Var y;
    {
      profile::Scope s("proj");
      y = ag::linear(x, w, ag::Var());
    }
    ag::Var loss;
    {
      profile::Scope s("loss");
      loss = ag::sum(ag::mul(y, y));
    }
    loss.backward();
  }
  const auto rows = profile::rows();
  const profile::Row* f = find(rows, "forward", "proj");
  const profile::Row* b = find(rows, "backward", "proj");
  ASSERT_TRUE(f && b);
  EXPECT_NE(find(rows, "backward", "loss"), nullptr);
  const double fwd = 2.0 * 5 * 7 * 12;
  EXPECT_DOUBLE_EQ(f->self_flops, fwd);
  EXPECT_DOUBLE_EQ(b->self_flops, 2 * fwd);  // dx and dW
  EXPECT_EQ(b->calls, 1);
}

TEST(Profile, PhasesAndUntaggedNodes) {
  Generator gen(3);
  ag::Var x(randn({3, 3}, gen), true);
  {
    Profiling on;
    ag::Var y = ag::mul(x, 2.0f);  // recorded outside any scope
    ag::sum(y).backward();
    profile::PhaseScope p("optimizer");
    profile::Scope s("adamw");
  }
  const auto rows = profile::rows();
  EXPECT_NE(find(rows, "backward", "(untagged)"), nullptr);
  EXPECT_NE(find(rows, "optimizer", "adamw"), nullptr);
}

}  // namespace
}  // namespace sonar
