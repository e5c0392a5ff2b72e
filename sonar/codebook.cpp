// The online clustered codebook (see sonar/codebook.h). INTERIM: the interface is fixed; the implementation is
// being written on the codebook branch and replaces this file.
#include "sonar/codebook.h"

namespace sonar::method {

void validate(const CodebookOptions& o) {}
struct OnlineCodebookExtension::Impl {};
OnlineCodebookExtension::OnlineCodebookExtension(CodebookOptions o) { SONAR_FAIL("the online codebook is not built yet"); }
nlohmann::json OnlineCodebookExtension::config() const { return {}; }
void OnlineCodebookExtension::attach(Trainer&) {}
void OnlineCodebookExtension::relabel(StepBatch&) {}
void OnlineCodebookExtension::after_step(const StepBatch&, const beats::MlpOutput&) {}
std::vector<std::pair<std::string, double>> OnlineCodebookExtension::progress() { return {}; }
void OnlineCodebookExtension::save_state(std::map<std::string, Tensor>&, std::map<std::string, std::string>&) const {}
void OnlineCodebookExtension::load_state(const std::map<std::string, Tensor>&, const std::map<std::string, std::string>&) {}
void OnlineCodebookExtension::finish(const std::string&) {}

}  // namespace sonar::method
