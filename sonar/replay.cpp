// Task-relevant stratified replay (see sonar/replay.h). INTERIM: the interface is fixed; the implementation is
// being written on the replay branch and replaces this file.
#include "sonar/replay.h"

namespace sonar::method {

void validate(const ReplayOptions& o) {
  SONAR_CHECK(o.ratio >= 0 && o.ratio <= 1, "--replay-ratio must be in [0, 1], got ", o.ratio);
}
struct ReplayExtension::Impl {};
ReplayExtension::ReplayExtension(ReplayOptions o) { SONAR_FAIL("replay is not built yet"); }
nlohmann::json ReplayExtension::config() const { return {}; }
void ReplayExtension::attach(Trainer&) {}
void ReplayExtension::on_batch(StepBatch&) {}
std::vector<std::pair<std::string, double>> ReplayExtension::progress() { return {}; }

}  // namespace sonar::method
