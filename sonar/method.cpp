// SONAR assembled from its parts (see sonar/method.h): make_extensions. The flags and the options' checks are
// sonar/method_options.cpp.
#include "sonar/method.h"

#include "tensor/error.h"
#include "tensor/random.h"

namespace sonar::method {

namespace {

constexpr uint64_t kReplayStream = 0x52504c59ULL;    // "RPLY"
constexpr uint64_t kCodebookStream = 0x434f4442ULL;  // "CODB"

}  // namespace

std::vector<std::shared_ptr<TrainerExtension>> make_extensions(const SonarOptions& o, uint64_t seed) {
  std::vector<std::shared_ptr<TrainerExtension>> ext;
  if (o.method == "dcpt") return ext;
  SONAR_CHECK(o.method == "sonar", "unknown method '", o.method, "' (dcpt or sonar)");
  if (o.replay.mode != "none") {
    ReplayOptions r = o.replay;
    r.seed = random_bits(seed, kReplayStream);
    ext.push_back(std::make_shared<ReplayExtension>(r));
  }
  // The codebook relabels before the distillation reads the start labels; order matters only for relabel.
  if (o.codebook.mode == "online") {
    CodebookOptions c = o.codebook;
    c.seed = random_bits(seed, kCodebookStream);
    ext.push_back(std::make_shared<OnlineCodebookExtension>(c));
  }
  if (o.distill.model_weight > 0 || o.distill.tokenizer_weight > 0)
    ext.push_back(std::make_shared<SelfDistillExtension>(o.distill));
  return ext;
}

}  // namespace sonar::method
