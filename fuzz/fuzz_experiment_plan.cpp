// libFuzzer target: experiment plans from memory (sonar/experiment_plan.cpp: the JSON itself, its shape,
// keys, types, names, duplicates, the files it names, each method's SONAR flags through
// sonar/method_options.cpp), then what the runner does with a plan it accepted: the normalised plan
// (to_json, dumped as plan.json is) must parse again to itself, and the grid's cells are listed.
// Every input must end in a plan or in one sonar::Error of one line; anything else is a finding.
// The plans are read relative to a temporary folder holding the files the seeds name (copies of the tiny
// fixture model and tokenizer and of small manifests, plus a data folder), so that mutations get past the
// existence checks to the deep paths. Seeds: tests/fixtures/fuzz/experiment_plan. Not a test of the runner.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "fuzz/fuzz_util.h"
#include "sonar/experiment.h"
#include "tensor/error.h"

namespace {

namespace fs = std::filesystem;

[[noreturn]] void finding(const std::string& what) {
  std::fprintf(stderr, "fuzz_experiment_plan: %s\n", what.c_str());
  std::abort();
}

// The folder the plans' relative paths point into; removed when the fuzzer exits normally.
std::string plan_folder() {
  char tmpl[] = "/tmp/sonar-fuzz-plan-XXXXXX";
  if (!mkdtemp(tmpl)) finding("cannot create a temporary folder");
  const fs::path dir(tmpl), src(SONAR_SOURCE_DIR "/tests/fixtures");
  fs::copy_file(src / "beats_tiny/beats.pt", dir / "model.pt");
  fs::copy_file(src / "beats_tiny/tokenizer.pt", dir / "tokenizer.pt");
  for (const char* m : {"prior.csv", "speech.csv", "music.csv"})
    fs::copy_file(src / "fuzz/manifest/project.csv", dir / m);
  fs::copy_file(src / "fuzz/manifest/esc50.csv", dir / "esc50.csv");
  fs::create_directories(dir / "clips");
  static const std::string path = dir.string();
  std::atexit([] { std::error_code ec; fs::remove_all(path, ec); });
  return path;
}

void check_one_line(const sonar::Error& e, const char* stage) {
  const std::string msg = e.what();
  if (msg.empty() || msg.find('\n') != std::string::npos || msg.find('\r') != std::string::npos)
    finding(std::string(stage) + ": the error is not one line: " + msg);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = plan_folder();
  using namespace sonar::method;
  ExperimentPlan plan;
  try {
    plan = parse_plan_text(sonar::fuzz::bytes_of(data, size), dir, "fuzz/plan.json");
  } catch (const sonar::Error& e) {
    check_one_line(e, "parse_plan_text");
    return 0;
  }
  // Accepted: the runner writes plan.json (to_json().dump()) and lists the cells; the normalised plan (absolute
  // paths) must be accepted from anywhere and normalise to itself.
  const nlohmann::json normalised = plan.to_json();
  (void)normalised.dump(2);
  try {
    const ExperimentPlan again = parse_plan(normalised, "/nonexistent", "fuzz/plan.json (normalised)");
    if (again.to_json() != normalised) finding("the normalised plan does not normalise to itself");
  } catch (const sonar::Error& e) {
    finding(std::string("the normalised plan is refused: ") + e.what());
  }
  const auto cells = grid_cells(plan, dir + "/out");
  if (cells.size() != plan.domains.size() * plan.seeds.size() * plan.methods.size())
    finding("grid_cells lists " + std::to_string(cells.size()) + " cells");
  return 0;
}
