// Tests of the experiment library (sonar/experiment.h) that need no training: results aggregation against a
// hand computation on a made-up results.csv (means, sample std, forgetting paired by seed, relative forgetting,
// the general drop), the CSV round trip and its errors, the tables and figures written from it, metrics.jsonl
// reading and averaging, and plan validation (every bad plan is one error line naming the problem, including
// the inputs found for the plan fuzz target, tests/fixtures/fuzz/regressions/plan_*.json). The grid
// end to end (training, probes, reuse) is tested through the command in tests/apps/test_cmd_experiment.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include <nlohmann/json.hpp>

#include "sonar/experiment.h"
#include "sonar/method.h"
#include "tensor/io.h"
#include "tests/sonar/xml_check.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace sonar::method;

namespace {

constexpr double kTol = 1e-12;  // the aggregation is plain double arithmetic on 6-decimal inputs

// Two seeds; new domain birds; prior task; two other tasks. Values chosen so the hand computation is short.
const char* kResults =
    "domain,method,seed,task,role,test_clips,accuracy,macro_f1,mAP,score\n"
    "birds,start,0,birds,new,60,0.55,0.50,nan,0.50\n"
    "birds,start,0,prior,prior,60,nan,nan,0.80,0.80\n"
    "birds,start,0,music,other,60,0.71,0.70,nan,0.70\n"
    "birds,start,0,speech,other,60,0.61,0.60,nan,0.60\n"
    "birds,start,1,birds,new,60,0.57,0.54,nan,0.54\n"
    "birds,start,1,prior,prior,60,nan,nan,0.82,0.82\n"
    "birds,start,1,music,other,60,0.73,0.72,nan,0.72\n"
    "birds,start,1,speech,other,60,0.63,0.62,nan,0.62\n"
    "birds,dcpt,0,birds,new,60,0.72,0.70,nan,0.70\n"
    "birds,dcpt,0,prior,prior,60,nan,nan,0.60,0.60\n"
    "birds,dcpt,0,music,other,60,0.51,0.50,nan,0.50\n"
    "birds,dcpt,0,speech,other,60,0.51,0.50,nan,0.50\n"
    "birds,dcpt,1,birds,new,60,0.76,0.74,nan,0.74\n"
    "birds,dcpt,1,prior,prior,60,nan,nan,0.66,0.66\n"
    "birds,dcpt,1,music,other,60,0.57,0.56,nan,0.56\n"
    "birds,dcpt,1,speech,other,60,0.49,0.48,nan,0.48\n"
    "birds,sonar,0,birds,new,60,0.70,0.68,nan,0.68\n"
    "birds,sonar,0,prior,prior,60,nan,nan,0.79,0.79\n"
    "birds,sonar,0,music,other,60,0.70,0.69,nan,0.69\n"
    "birds,sonar,0,speech,other,60,0.62,0.61,nan,0.61\n"
    "birds,sonar,1,birds,new,60,0.74,0.72,nan,0.72\n"
    "birds,sonar,1,prior,prior,60,nan,nan,0.80,0.80\n"
    "birds,sonar,1,music,other,60,0.70,0.70,nan,0.70\n"
    "birds,sonar,1,speech,other,60,0.60,0.60,nan,0.60\n";

const SummaryRow& row(const std::vector<SummaryRow>& s, const std::string& method) {
  for (const auto& r : s)
    if (r.method == method) return r;
  ADD_FAILURE() << "no summary row for " << method;
  return s.front();
}

std::string tmp_dir(const std::string& name) { return sonar::testutil::fresh_tmp_path("sonar_test_experiment_", name); }

void write(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path) << text;
}

}  // namespace

TEST(ExperimentResults, StatIsMeanAndSampleStd) {
  const Stat s = stat_of({1, 2, 3, std::numeric_limits<double>::quiet_NaN()});
  EXPECT_EQ(s.n, 3);
  EXPECT_NEAR(s.mean, 2.0, kTol);
  EXPECT_NEAR(s.std, 1.0, kTol);  // sqrt(((1-2)^2 + 0 + (3-2)^2) / (3 - 1))
  const Stat one = stat_of({5});
  EXPECT_EQ(one.n, 1);
  EXPECT_EQ(one.mean, 5);
  EXPECT_TRUE(std::isnan(one.std));
  EXPECT_EQ(stat_of({}).n, 0);
}

TEST(ExperimentResults, SummaryMatchesAHandComputation) {
  const auto rows = parse_results_csv(kResults);
  ASSERT_EQ(rows.size(), 24u);
  const auto s = summarise(rows);
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].method, "start");
  EXPECT_EQ(s[1].method, "dcpt");
  EXPECT_EQ(s[2].method, "sonar");

  const SummaryRow& st = row(s, "start");
  EXPECT_NEAR(st.new_f1.mean, 0.52, kTol);
  EXPECT_NEAR(st.forgetting.mean, 0.0, kTol);
  EXPECT_NEAR(st.general_drop.mean, 0.0, kTol);

  const SummaryRow& d = row(s, "dcpt");
  EXPECT_EQ(d.seeds, 2);
  // new F1: 0.70, 0.74 -> mean 0.72, std sqrt(0.02^2 + 0.02^2) = 0.028284271247461926
  EXPECT_NEAR(d.new_f1.mean, 0.72, kTol);
  EXPECT_NEAR(d.new_f1.std, 0.028284271247461926, kTol);
  EXPECT_NEAR(d.new_acc.mean, 0.74, kTol);
  // gain per seed: 0.70 - 0.50, 0.74 - 0.54 -> 0.20 both
  EXPECT_NEAR(d.new_gain.mean, 0.20, kTol);
  EXPECT_NEAR(d.new_gain.std, 0.0, kTol);
  // prior: 0.60, 0.66; forgetting: 0.80 - 0.60 = 0.20, 0.82 - 0.66 = 0.16
  EXPECT_NEAR(d.prior.mean, 0.63, kTol);
  EXPECT_NEAR(d.forgetting.mean, 0.18, kTol);
  EXPECT_NEAR(d.forgetting.std, 0.028284271247461926, kTol);
  // relative: 0.20 / 0.80 = 0.25, 0.16 / 0.82 = 0.1951219512...
  EXPECT_NEAR(d.relative_forgetting.mean, 0.2225609756097561, kTol);
  EXPECT_NEAR(d.relative_forgetting.std, 0.03880464043096907, kTol);
  // general: seed 0 ((0.70-0.50) + (0.60-0.50)) / 2 = 0.15; seed 1 ((0.72-0.56) + (0.62-0.48)) / 2 = 0.15
  EXPECT_NEAR(d.general_drop.mean, 0.15, kTol);
  EXPECT_NEAR(d.general_drop.std, 0.0, kTol);

  const SummaryRow& so = row(s, "sonar");
  // forgetting 0.01, 0.02; general: seed 0 (0.01 - 0.01) / 2 = 0, seed 1 (0.02 + 0.02) / 2 = 0.02
  EXPECT_NEAR(so.forgetting.mean, 0.015, kTol);
  EXPECT_NEAR(so.forgetting.std, 0.007071067811865475, kTol);
  EXPECT_NEAR(so.general_drop.mean, 0.01, kTol);
  EXPECT_NEAR(so.general_drop.std, 0.01414213562373095, kTol);
  EXPECT_NEAR(so.new_f1.mean, 0.70, kTol);

  // Without the start rows, the paired numbers are unknown, the unpaired ones are not.
  std::vector<ResultRow> no_start;
  for (const auto& r : rows)
    if (r.method != "start") no_start.push_back(r);
  const auto s2 = summarise(no_start);
  EXPECT_NEAR(row(s2, "dcpt").new_f1.mean, 0.72, kTol);
  EXPECT_EQ(row(s2, "dcpt").forgetting.n, 0);
}

TEST(ExperimentResults, CsvRoundTripAndErrors) {
  const auto rows = parse_results_csv(kResults);
  EXPECT_EQ(results_csv(rows), results_csv(parse_results_csv(results_csv(rows))));
  EXPECT_TRUE(std::isnan(rows[0].mAP));
  sonar::testutil::expect_error([] { parse_results_csv("domain,method\n"); }, {"results.csv", "header"});
  sonar::testutil::expect_error(
      [] { parse_results_csv(std::string(kResults) + "birds,dcpt,0,x,sideways,1,0,0,0,0\n"); },
      {"line 26", "role must be new, prior or other", "sideways"});
  sonar::testutil::expect_error([] { parse_results_csv(std::string(kResults) + "birds,dcpt,0\n"); },
                                {"line 26", "3 fields"});
  sonar::testutil::expect_error(
      [] { parse_results_csv(std::string(kResults) + "birds,dcpt,0,x,new,1,abc,0,0,0\n"); }, {"'abc' is not a number"});
}

TEST(ExperimentResults, SignTestMatchesTheBinomialTail) {
  EXPECT_EQ(sign_test_p(0, 0), 1.0);
  EXPECT_NEAR(sign_test_p(3, 0), 0.25, kTol);              // 2 / 2^3
  EXPECT_NEAR(sign_test_p(0, 3), 0.25, kTol);
  EXPECT_NEAR(sign_test_p(12, 0), 2.0 / 4096.0, kTol);     // every one of 12 pairs the same way
  EXPECT_NEAR(sign_test_p(9, 1), 22.0 / 1024.0, kTol);     // 2 (C(10,0) + C(10,1)) / 2^10
  EXPECT_EQ(sign_test_p(5, 5), 1.0);                        // capped at 1
  EXPECT_NEAR(sign_test_p(1000, 1000), 1.0, kTol);
  const double p = sign_test_p(600, 400);  // large n stays finite: about 2.6e-10
  EXPECT_GT(p, 0.0);
  EXPECT_LT(p, 1e-9);
  sonar::testutil::expect_error([] { sign_test_p(-1, 2); }, {"sign_test_p", "-1"});
}

TEST(ExperimentResults, PairedComparisonMatchesAHandComputation) {
  // kResults plus a second domain with one seed: a tie on the new task, a win on the prior, no other tasks.
  const std::string text = std::string(kResults) +
                           "frogs,dcpt,0,frogs,new,60,0.5,0.40,nan,0.40\n"
                           "frogs,dcpt,0,prior,prior,60,nan,nan,0.70,0.70\n"
                           "frogs,sonar,0,frogs,new,60,0.5,0.40,nan,0.40\n"
                           "frogs,sonar,0,prior,prior,60,nan,nan,0.75,0.75\n";
  const auto rows = parse_results_csv(text);
  const auto p = compare_paired(rows, "sonar", "dcpt");
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(p[0].domain, "birds");
  EXPECT_EQ(p[1].domain, "frogs");
  EXPECT_EQ(p[2].domain, kAllDomains);
  // birds: new 0.68 - 0.70, 0.72 - 0.74; prior 0.79 - 0.60, 0.80 - 0.66; other: seed 0 ((0.69 - 0.50) +
  // (0.61 - 0.50)) / 2 = 0.15, seed 1 ((0.70 - 0.56) + (0.60 - 0.48)) / 2 = 0.13.
  EXPECT_EQ(p[0].pairs, 2);
  EXPECT_NEAR(p[0].new_f1.mean, -0.02, kTol);
  EXPECT_NEAR(p[0].new_f1.std, 0.0, kTol);
  EXPECT_EQ(p[0].new_wins, 0);
  EXPECT_EQ(p[0].new_losses, 2);
  EXPECT_NEAR(p[0].new_p, 0.5, kTol);
  EXPECT_NEAR(p[0].prior.mean, 0.165, kTol);
  EXPECT_NEAR(p[0].prior.std, 0.035355339059327376, kTol);
  EXPECT_EQ(p[0].prior_wins, 2);
  EXPECT_NEAR(p[0].other.mean, 0.14, kTol);
  EXPECT_NEAR(p[0].other.std, 0.01414213562373095, kTol);
  // frogs: a tie is neither a win nor a loss.
  EXPECT_EQ(p[1].pairs, 1);
  EXPECT_EQ(p[1].new_wins + p[1].new_losses, 0);
  EXPECT_EQ(p[1].new_f1.n, 1);
  EXPECT_EQ(p[1].new_p, 1.0);
  EXPECT_NEAR(p[1].prior.mean, 0.05, kTol);
  EXPECT_EQ(p[1].other.n, 0);
  // pooled: 3 pairs; prior 0.19, 0.14, 0.05 all won -> p = 2 / 2^3.
  EXPECT_EQ(p[2].pairs, 3);
  EXPECT_NEAR(p[2].prior.mean, 0.38 / 3.0, kTol);
  EXPECT_EQ(p[2].prior_wins, 3);
  EXPECT_NEAR(p[2].prior_p, 0.25, kTol);
  EXPECT_NEAR(p[2].new_f1.mean, -0.04 / 3.0, kTol);
  EXPECT_EQ(p[2].new_losses, 2);
  EXPECT_EQ(p[2].other.n, 2);
  // The reverse comparison flips the signs; a missing method gives nothing.
  const auto r = compare_paired(rows, "dcpt", "sonar");
  ASSERT_EQ(r.size(), 3u);
  EXPECT_NEAR(r[2].prior.mean, -0.38 / 3.0, kTol);
  EXPECT_EQ(r[2].prior_losses, 3);
  EXPECT_TRUE(compare_paired(rows, "sonar", "nope").empty());
  // The report compares sonar with dcpt (dcpt itself is the reference, start is not a method).
  const auto rep = report_comparisons(rows);
  ASSERT_EQ(rep.size(), 3u);
  EXPECT_EQ(rep[0].method, "sonar");
  EXPECT_EQ(rep[0].reference, "dcpt");
  const std::string md = results_markdown(summarise(rows), "made-up", rep);
  EXPECT_NE(md.find("| sonar | dcpt | birds | 2 | -0.0200 ± 0.0000 | 0 of 2 | 0.5 | 0.1650 ± 0.0354 | 2 of 2 | "
                    "0.5 | 0.1400 ± 0.0141 |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| sonar | dcpt | frogs | 1 | 0.0000 | 0 of 1 (1 tied) | 1 | 0.0500 | 1 of 1 | 1 | - |"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| 3 of 3 | 0.25 |"), std::string::npos) << md;
  // An ablation is compared with dcpt and with sonar.
  std::vector<ResultRow> with_ablation = rows;
  for (const auto& x : rows)
    if (x.method == "sonar") {
      with_ablation.push_back(x);
      with_ablation.back().method = "sonar-no-replay";
    }
  const auto rep2 = report_comparisons(with_ablation);
  ASSERT_EQ(rep2.size(), 9u);
  EXPECT_EQ(rep2[3].method, "sonar-no-replay");
  EXPECT_EQ(rep2[3].reference, "dcpt");
  EXPECT_EQ(rep2[6].reference, "sonar");
  EXPECT_EQ(rep2[8].prior.mean, 0.0);  // the same scores as sonar's
  EXPECT_EQ(rep2[8].prior_wins + rep2[8].prior_losses, 0);
  const json j = results_json(rows, summarise(rows), rep);
  ASSERT_EQ(j["paired"].size(), 3u);
  EXPECT_EQ(j["paired"][2]["prior_wins"].get<int64_t>(), 3);
}

TEST(ExperimentResults, TablesAndFiguresFromResults) {
  const auto rows = parse_results_csv(kResults);
  const auto summary = summarise(rows);
  const std::string md = results_markdown(summary, "made-up");
  EXPECT_NE(md.find("## New domain: birds"), std::string::npos) << md;
  EXPECT_NE(md.find("| dcpt | 2 | 0.7200 ± 0.0283 | 0.7400 ± 0.0283 | 0.2000 ± 0.0000 | 0.6300 ± 0.0424 | "
                    "0.1800 ± 0.0283 | 22.3 ± 3.9 % | 0.1500 ± 0.0000 |"),
            std::string::npos)
      << md;
  const json j = results_json(rows, summary);
  EXPECT_EQ(j["rows"].size(), 24u);
  EXPECT_TRUE(j["rows"][0]["mAP"].is_null());
  EXPECT_NEAR(j["summary"][1]["forgetting"]["mean"].get<double>(), 0.18, kTol);

  const std::string dir = tmp_dir("figures");
  const auto files = write_results(rows, dir, "made-up <grid>");
  ASSERT_EQ(files.size(), 5u);
  EXPECT_EQ(sonar::read_file(dir + "/results.csv"), results_csv(rows));
  for (const char* f : {"figures/bars.svg", "figures/scatter.svg"}) {
    const auto x = sonar::testutil::check_xml(sonar::read_file(dir + "/" + f));
    ASSERT_TRUE(x.ok) << f << ": " << x.error;
  }
  // The bars carry their values in a tooltip: dcpt's new-domain bar is the mean 0.72.
  const std::string bars = sonar::read_file(dir + "/figures/bars.svg");
  EXPECT_NE(bars.find("<title>dcpt, birds: 0.72</title>"), std::string::npos);
  EXPECT_NE(bars.find("made-up &lt;grid&gt;"), std::string::npos);
  // Each scatter point names its domain.
  const std::string scatter = sonar::read_file(dir + "/figures/scatter.svg");
  EXPECT_NE(scatter.find("class=\"point-label\" fill=\"#"), std::string::npos) << scatter;
  EXPECT_NE(scatter.find(">birds</text>"), std::string::npos) << scatter;
}

TEST(ExperimentMetrics, ReadsAveragesAndGroupsCurves) {
  const std::string dir = tmp_dir("metrics");
  write(dir + "/a.jsonl",
        "{\"step\":10,\"loss\":4.0,\"masked_accuracy\":0.1,\"lr\":1e-3,\"codebook_size\":256,\"distill_tok\":null}\n"
        "{\"step\":20,\"loss\":3.0,\"masked_accuracy\":0.2,\"lr\":5e-4,\"codebook_size\":260,\"distill_tok\":2.5,"
        "\"novel_share\":0.01}\n");
  write(dir + "/b.jsonl", "{\"step\":10,\"loss\":6.0,\"masked_accuracy\":0.3}\n{\"step\":20,\"loss\":5.0}\n");
  const MetricsLog a = read_metrics(dir + "/a.jsonl");
  EXPECT_EQ(a.keys, (std::vector<std::string>{"loss", "masked_accuracy", "lr", "codebook_size", "distill_tok",
                                               "novel_share"}));
  EXPECT_EQ(a.values.at("distill_tok"), (std::vector<double>{2.5}));  // the null is skipped
  EXPECT_EQ(a.steps.at("distill_tok"), (std::vector<double>{20}));
  const MetricsLog m = mean_metrics({a, read_metrics(dir + "/b.jsonl")});
  EXPECT_EQ(m.values.at("loss"), (std::vector<double>{5.0, 4.0}));
  EXPECT_EQ(m.values.at("masked_accuracy"), (std::vector<double>{0.2, 0.2}));  // (0.1 + 0.3) / 2, then 0.2 alone
  const auto panels = curve_panels(a.keys);
  ASSERT_EQ(panels.size(), 4u);
  EXPECT_EQ(panels[0].first, "loss terms");
  EXPECT_EQ(panels[0].second, (std::vector<std::string>{"loss", "distill_tok"}));
  EXPECT_EQ(panels[1].second, (std::vector<std::string>{"masked_accuracy"}));
  EXPECT_EQ(panels[2].second, (std::vector<std::string>{"codebook_size", "novel_share"}));
  EXPECT_EQ(panels[3].second, (std::vector<std::string>{"lr"}));
  const auto x = sonar::testutil::check_xml(run_curves_svg(a, "run a"));
  EXPECT_TRUE(x.ok) << x.error;
  write(dir + "/bad.jsonl", "{\"step\":1}\nnot json\n");
  sonar::testutil::expect_error([&] { read_metrics(dir + "/bad.jsonl"); }, {"bad.jsonl line 2"});
}

// ---- plans ----

namespace {

struct PlanFixture {
  std::string dir;
  json plan;
  PlanFixture() {
    dir = tmp_dir("plan");
    for (const char* f : {"start.safetensors", "tok.safetensors", "prior.csv", "speech.csv", "music.csv"})
      write(dir + "/" + f, "x\n");
    plan = json::parse(R"({
      "name": "p",
      "start": {"model": "start.safetensors", "tokenizer": "tok.safetensors"},
      "prior": {"data": "prior.csv", "splits": ["train"]},
      "domains": [{"name": "speech", "data": "speech.csv", "splits": ["train", "val"]}],
      "tasks": {"music": "music.csv"},
      "methods": ["dcpt", {"name": "distill-only", "base": "sonar",
                           "flags": {"replay": "none", "codebook": "frozen", "distill-model": 2}}],
      "seeds": [0, 1],
      "train": {"steps": 5, "batch": 4},
      "probe": {"epochs": 3}
    })");
  }
  std::string error(const std::function<void(json&)>& edit) {
    json j = plan;
    edit(j);
    return sonar::testutil::error_of([&] { parse_plan(j, dir, "plan.json"); });
  }
};

}  // namespace

TEST(ExperimentPlan, ParsesAndResolvesPaths) {
  PlanFixture f;
  const ExperimentPlan p = parse_plan(f.plan, f.dir);
  EXPECT_EQ(p.start_model, (fs::path(f.dir) / "start.safetensors").string());
  EXPECT_EQ(p.prior_task, (fs::path(f.dir) / "prior.csv").string());  // defaults to the prior data
  ASSERT_EQ(p.methods.size(), 2u);
  EXPECT_EQ(p.methods[0].flags.at("method"), "dcpt");
  EXPECT_EQ(p.methods[1].flags.at("method"), "sonar");
  EXPECT_EQ(p.methods[1].flags.at("distill-model"), "2");
  EXPECT_EQ(p.train.steps, 5);
  EXPECT_EQ(p.train.lr, PlanTraining().lr);
  const auto cells = grid_cells(p, "/out");
  ASSERT_EQ(cells.size(), 4u);  // 1 domain x 2 seeds x 2 methods
  EXPECT_EQ(cells[1].dir, "/out/runs/speech/distill-only/seed0");
  EXPECT_EQ(cells[2].seed, 1u);
  EXPECT_EQ(p.probe.group_folds, 0);  // the manifests' splits unless the plan asks for group folds
  // The normalised plan parses to the same grid.
  const ExperimentPlan again = parse_plan(p.to_json(), "/elsewhere");
  EXPECT_EQ(again.to_json(), p.to_json());
  json folds = f.plan;
  folds["probe"]["group_folds"] = 5;
  EXPECT_EQ(parse_plan(folds, f.dir).probe.group_folds, 5);
}

TEST(ExperimentPlan, BadPlansGiveOneLineNamingTheProblem) {
  PlanFixture f;
  auto expect = [&](const std::function<void(json&)>& edit, const std::vector<std::string>& parts) {
    const std::string e = f.error(edit);
    ASSERT_FALSE(e.empty()) << "no error for: " << parts[0];
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    for (const auto& p : parts) EXPECT_NE(e.find(p), std::string::npos) << e << "\nmissing: " << p;
  };
  expect([](json& j) { j["methods"].push_back("sonar-turbo"); }, {"plan.json", "unknown method 'sonar-turbo'"});
  expect([](json& j) { j["methods"][1]["flags"]["replay-speed"] = 2; }, {"plan.json", "unknown flag 'replay-speed'"});
  expect([](json& j) { j["flags"] = {{"distill-loss", "l7"}}; }, {"method 'distill-only'", "--distill-loss", "l7"});
  expect([](json& j) { j["domains"][0]["data"] = "nowhere/birds.csv"; }, {"domain 'speech'", "nowhere/birds.csv",
                                                                        "does not exist"});
  expect([](json& j) { j["domains"].push_back(j["domains"][0]); }, {"duplicate run name", "domain 'speech'"});
  expect([](json& j) { j["methods"].push_back("dcpt"); }, {"duplicate run name", "method 'dcpt'"});
  expect([](json& j) { j["seeds"] = {0, 0}; }, {"duplicate run name", "seed 0"});
  expect([](json& j) { j["methods"].push_back("start"); }, {"'start' is always in the grid"});
  expect([](json& j) { j["stepz"] = 3; }, {"unknown key 'stepz'"});
  expect([](json& j) { j["train"]["steps"] = 0; }, {"train", "must be positive"});
  expect([](json& j) { j["methods"][1]["name"] = "a/b"; }, {"method name 'a/b'"});
  expect([](json& j) { j.erase("start"); }, {"missing 'start'"});
  expect([](json& j) { j["tasks"]["speech"] = "music.csv"; }, {"duplicate task name 'speech'"});
  expect([](json& j) { j["probe"]["group_folds"] = 1; }, {"probe", "group_folds must be 0", "got 1"});
}

namespace {

// The folder fuzz/fuzz_experiment_plan.cpp reads its plans from: the files its seeds and findings name (their
// contents do not matter to the plan reader, which checks that they exist).
std::string fuzz_plan_folder(const std::string& name) {
  const std::string dir = tmp_dir(name);
  for (const char* f : {"model.pt", "tokenizer.pt", "prior.csv", "speech.csv", "music.csv", "esc50.csv"})
    write(dir + "/" + f, "x\n");
  fs::create_directories(dir + "/clips");
  return dir;
}

}  // namespace

// The fuzz target's seeds (tests/fixtures/fuzz/experiment_plan) do what their names say: the valid ones parse,
// so that mutations start from plans that reach the method flags and the grid; the broken ones fail.
TEST(ExperimentPlan, FuzzSeedsAreValidOrBrokenAsNamed) {
  const std::string dir = fuzz_plan_folder("fuzz_seeds");
  const std::string seeds = std::string(SONAR_FIXTURES_DIR) + "/fuzz/experiment_plan/";
  for (const char* name : {"minimal.json", "full.json", "all_methods.json"}) {
    SCOPED_TRACE(name);
    const ExperimentPlan p = parse_plan_text(sonar::read_file(seeds + name), dir, name);
    EXPECT_FALSE(grid_cells(p, "/out").empty());
  }
  const ExperimentPlan full = parse_plan_text(sonar::read_file(seeds + "full.json"), dir, "full.json");
  EXPECT_EQ(grid_cells(full, "/out").size(), 2u * 3u * 5u);
  for (const char* name : {"bad_flags.json", "bad_types.json", "duplicate_names.json", "truncated.json"}) {
    SCOPED_TRACE(name);
    const std::string e = sonar::testutil::error_of([&] { parse_plan_text(sonar::read_file(seeds + name), dir, name); });
    EXPECT_NE(e.find(name), std::string::npos) << e;
  }
}

// Inputs that crashed or misled the plan reader under fuzz/fuzz_experiment_plan.cpp, or were built while reading
// it for that harness (docs/reliability.md), kept under tests/fixtures/fuzz/regressions/: each must give one
// error line naming the plan file and the problem. Before the fixes: a flag value, a method's flags or a seed
// nested 10^5 lists deep overflowed the stack (copying or printing it recursed as deep), a 300-character file
// name escaped as std::filesystem::filesystem_error, a number too large for steps (int64) or threads (int) was
// converted anyway (undefined behaviour), a newline in a name made the error two lines (strings with control
// characters are now refused first), a grid of 102500 runs was accepted, and one of 74250 (the fuzzer's first
// finding, mutated from the previous one) took the fuzz target over 20 s to list under the sanitizers. The plans are read from a folder holding the files the harness gives them.
TEST(ExperimentPlan, FuzzFindingsGiveOneErrorNamingTheInput) {
  const std::string dir = fuzz_plan_folder("fuzz_findings");
  const std::pair<const char*, std::vector<std::string>> cases[] = {
      {"plan_deep_flag_value.json", {"method 'x'", "flag 'replay' must be a string, a number or a list of them, got a "
                                     "JSON array"}},
      {"plan_deep_method_flags.json", {"method 'x'", "'flags' must be an object of SONAR flags"}},
      {"plan_deep_seed.json", {"seeds must be whole numbers >= 0, got a JSON array"}},
      {"plan_long_file_name.json", {"domain 'speech'", "data manifest", "ddddd.csv: File name too long"}},
      {"plan_newline_in_name.json", {"the string \"a\\x0ab\" holds a control character"}},
      {"plan_steps_1e30.json", {"train", "'steps' must be a whole number from -9223372036854775808 to "
                                "9223372036854775807, got 1e+30"}},
      {"plan_threads_3e9.json", {"train", "'threads' must be a whole number from -2147483648 to 2147483647"}},
      {"plan_grid_too_big.json", {"50 domains x 50 seeds x 41 methods = 102500 runs, more than 10000"}},
      {"plan_grid_timeout.json", {"45 domains x 50 seeds x 33 methods = 74250 runs, more than 10000 (kMaxGridCells)"}},
  };
  for (const auto& [name, parts] : cases) {
    SCOPED_TRACE(name);
    const std::string path = dir + "/" + name;
    fs::copy_file(std::string(SONAR_FIXTURES_DIR) + "/fuzz/regressions/" + name, path);
    const std::string e = sonar::testutil::error_of([&] { read_plan(path); });
    ASSERT_FALSE(e.empty());
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    EXPECT_NE(e.find(path), std::string::npos) << e;
    for (const auto& p : parts) EXPECT_NE(e.find(p), std::string::npos) << e << "\nmissing: " << p;
  }
}

// The edges of what the fixes above accept: whole numbers written as floats, integers read exactly (not through
// a double), seeds up to 2^64 - 1, a grid of exactly 10000 runs; a NUL in a flag value is refused (by the plan
// and by the flag parser, which no longer stops at it), and a whole number beyond 64 bits is refused, not
// clamped.
TEST(ExperimentPlan, NumbersAndGridSizeAtTheirLimits) {
  PlanFixture f;
  json j = f.plan;
  j["train"]["steps"] = 5.0;
  j["train"]["save_every"] = 9007199254740993;  // 2^53 + 1: not a double
  j["seeds"] = json::parse("[0, 18446744073709551615]");
  const ExperimentPlan p = parse_plan(j, f.dir);
  EXPECT_EQ(p.train.steps, 5);
  EXPECT_EQ(p.train.save_every, 9007199254740993);
  EXPECT_EQ(p.seeds.back(), 18446744073709551615ull);
  EXPECT_EQ(parse_plan(p.to_json(), "/elsewhere").to_json(), p.to_json());

  auto numbered = [](const char* prefix, int i) {  // (not "d" + to_string(i): a GCC 12 -Wrestrict false alarm)
    std::string s = prefix;
    s += std::to_string(i);
    return s;
  };
  json big = f.plan;  // 10 domains x 10 seeds x 100 methods
  big["domains"] = json::array();
  for (int i = 0; i < 10; ++i) big["domains"].push_back({{"name", numbered("d", i)}, {"data", "speech.csv"}});
  big["tasks"] = json::object();
  big["methods"] = json::array();
  for (int i = 0; i < 100; ++i) big["methods"].push_back({{"name", numbered("m", i)}, {"base", "dcpt"}});
  big["seeds"] = json::array();
  for (int i = 0; i < 10; ++i) big["seeds"].push_back(i);
  EXPECT_EQ(grid_cells(parse_plan(big, f.dir), "/out").size(), 10000u);
  big["seeds"].push_back(10);
  EXPECT_NE(f.error([&](json& e) { e = big; }).find("= 11000 runs, more than 10000"), std::string::npos);

  const std::string nul = f.error([](json& e) { e["methods"][1]["flags"]["replay-floor"] = std::string("0.5\0x", 5); });
  EXPECT_NE(nul.find("the string \"0.5\\x00x\" holds a control character"), std::string::npos) << nul;
  sonar::testutil::expect_error([] {
    sonar_options_from_flags({{"method", "sonar"}, {"replay", "none"}, {"replay-floor", std::string("0.5\0x", 5)}});
  }, {"--replay-floor takes a number"});
  const std::string wide = f.error([](json& e) { e["methods"][1]["flags"]["max-codes"] = "99999999999999999999"; });
  EXPECT_NE(wide.find("--max-codes takes a whole number (64-bit), got '99999999999999999999'"), std::string::npos)
      << wide;
}
