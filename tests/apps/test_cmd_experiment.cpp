// Tests of `sonar experiment` and `sonar plot` as a user runs them: a tiny grid (2 methods x 1 domain x 1 seed,
// a few steps, on a tiny synthetic corpus and a start model pre-trained for 4 steps) runs end to end and writes
// the three result files and the figures (well-formed SVG); the same command again trains nothing and probes
// nothing; a folder made with other settings is refused; bad plans fail with one line and write nothing;
// `sonar plot` draws a run. The library parts are tested in tests/sonar/test_experiment.cpp.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "tensor/io.h"
#include "tests/sonar/xml_check.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using sonar::testutil::run_sonar;

namespace {

std::string tmp_dir(const std::string& name) {
  return sonar::testutil::fresh_tmp_path("sonar_test_cmd_experiment_", name);
}

int lines_of(const std::string& text) {
  int n = 0;
  for (char c : text) n += c == '\n';
  return n;
}

// A tiny corpus and start model shared by the tests of this file (made once).
struct GridSetup {
  std::string root, corpus, start;
  GridSetup() {
    root = tmp_dir("setup");
    corpus = root + "/corpus";
    start = root + "/start";
    auto c = run_sonar("synth-corpus --out " + corpus + " --clips-per-class 4 --prior-clips 8 --seconds 1 --seed 5");
    EXPECT_EQ(c.code, 0) << c.out;
    auto p = run_sonar("pretrain --data " + corpus + "/prior.csv --out " + start +
                       " --preset tiny --codes 32 --steps 4 --batch 4 --crop-seconds 1 --lr 2e-3 --warmup 1"
                       " --log-every 2 --save-every 4 --seed 1 --threads 2");
    EXPECT_EQ(p.code, 0) << p.out;
  }
  json plan() const {
    return json::parse(R"({
      "name": "tiny grid",
      "start": {"model": ")" + start + R"(/checkpoint.safetensors", "tokenizer": ")" + start + R"(/tokenizer.safetensors"},
      "prior": {"data": ")" + corpus + R"(/prior.csv", "splits": ["train", "val"]},
      "domains": [{"name": "birds", "data": ")" + corpus + R"(/birds.csv", "splits": ["train", "val"]}],
      "tasks": {"music": ")" + corpus + R"(/music.csv"},
      "methods": ["dcpt", {"name": "distill", "base": "sonar", "flags": {"replay": "none", "codebook": "frozen"}}],
      "seeds": [3],
      "train": {"steps": 3, "batch": 4, "crop_seconds": 1, "log_every": 1, "save_every": 3, "threads": 2},
      "probe": {"epochs": 5, "patience": 5}
    })");
  }
};

const GridSetup& setup() {
  static GridSetup s;
  return s;
}

std::string write_plan(const std::string& dir, const json& j) {
  fs::create_directories(dir);
  const std::string path = dir + "/plan.json";
  std::ofstream(path) << j.dump(2);
  return path;
}

}  // namespace

TEST(CmdExperiment, TinyGridEndToEndThenReusedOnRerun) {
  const GridSetup& s = setup();
  const std::string dir = tmp_dir("grid");
  const std::string plan = write_plan(dir + "-plans", s.plan());
  const std::string out = dir + "/out";
  auto r = run_sonar("experiment --plan " + plan + " --out " + out);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("run 1 of 2: birds / dcpt / seed 3"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("run 2 of 2: birds / distill / seed 3"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("probe 9 of 9"), std::string::npos) << r.out;  // (start + 2 runs) x 3 tasks
  EXPECT_NE(r.out.find("2 trained now, 0 reused"), std::string::npos) << r.out;
  for (const char* f : {"results.csv", "results.json", "results.md", "plan.json", "figures/bars.svg",
                        "figures/scatter.svg", "figures/curves-birds.svg", "runs/birds/dcpt/seed3/model.safetensors",
                        "runs/birds/distill/seed3/metrics.jsonl"})
    EXPECT_TRUE(fs::exists(fs::path(out) / f)) << f;
  const std::string csv = sonar::read_file(out + "/results.csv");
  EXPECT_EQ(lines_of(csv), 1 + 9) << csv;  // header + 3 models x 3 tasks
  EXPECT_NE(csv.find("birds,distill,3,prior,prior,"), std::string::npos) << csv;
  EXPECT_NE(csv.find("birds,start,3,music,other,"), std::string::npos) << csv;
  const json res = json::parse(sonar::read_file(out + "/results.json"));
  ASSERT_EQ(res["summary"].size(), 3u);
  EXPECT_EQ(res["summary"][0]["method"], "start");
  EXPECT_EQ(res["summary"][0]["forgetting"]["mean"].get<double>(), 0.0);
  const std::string md = sonar::read_file(out + "/results.md");
  EXPECT_NE(md.find("| distill | 1 |"), std::string::npos) << md;
  EXPECT_NE(r.out.find("| dcpt | 1 |"), std::string::npos) << "the table is printed";
  for (const char* f : {"figures/bars.svg", "figures/scatter.svg", "figures/curves-birds.svg"}) {
    const auto x = sonar::testutil::check_xml(sonar::read_file(out + "/" + f));
    EXPECT_TRUE(x.ok) << f << ": " << x.error;
  }

  // The same command again: nothing is trained or probed, the results are the same.
  const auto stamp = fs::last_write_time(fs::path(out) / "runs/birds/dcpt/seed3/checkpoint.safetensors");
  auto again = run_sonar("experiment --plan " + plan + " --out " + out);
  ASSERT_EQ(again.code, 0) << again.out;
  EXPECT_NE(again.out.find("0 trained now, 2 reused"), std::string::npos) << again.out;
  EXPECT_NE(again.out.find("9 probes (9 reused)"), std::string::npos) << again.out;
  EXPECT_EQ(again.out.find("step 1/3"), std::string::npos) << again.out;
  EXPECT_EQ(fs::last_write_time(fs::path(out) / "runs/birds/dcpt/seed3/checkpoint.safetensors"), stamp);
  EXPECT_EQ(sonar::read_file(out + "/results.csv"), csv);

  // The same folder with other training settings is refused before anything is touched.
  json changed = s.plan();
  changed["train"]["lr"] = 1e-3;
  auto refused = run_sonar("experiment --plan " + write_plan(dir + "-changed", changed) + " --out " + out);
  EXPECT_NE(refused.code, 0);
  EXPECT_NE(refused.out.find("was made with other settings (lr:"), std::string::npos) << refused.out;
  EXPECT_EQ(fs::last_write_time(fs::path(out) / "runs/birds/dcpt/seed3/checkpoint.safetensors"), stamp);

  // Probes by group folds: the runs are reused, every probe is made again (another cache key) and reports
  // its folds.
  json folded = s.plan();
  folded["probe"]["group_folds"] = 2;
  auto gf = run_sonar("experiment --plan " + write_plan(dir + "-folds", folded) + " --out " + out);
  ASSERT_EQ(gf.code, 0) << gf.out;
  EXPECT_NE(gf.out.find("0 trained now, 2 reused"), std::string::npos) << gf.out;
  EXPECT_NE(gf.out.find("9 probes (0 reused)"), std::string::npos) << gf.out;
  const json cached = json::parse(sonar::read_file(out + "/probes/start/birds-seed3.json"));
  EXPECT_EQ(cached["report"]["group_folds"], 2);
  EXPECT_EQ(cached["report"]["folds"].size(), 2u);

  // sonar plot draws one run.
  auto p = run_sonar("plot " + out + "/runs/birds/distill/seed3");
  ASSERT_EQ(p.code, 0) << p.out;
  const auto x = sonar::testutil::check_xml(sonar::read_file(out + "/runs/birds/distill/seed3/curves.svg"));
  EXPECT_TRUE(x.ok) << x.error;
  const std::string svg = sonar::read_file(out + "/runs/birds/distill/seed3/curves.svg");
  for (const char* k : {">loss terms<", ">accuracy<", ">distill_model<", ">masked_accuracy<"})
    EXPECT_NE(svg.find(k), std::string::npos) << k;
  auto nometrics = run_sonar("plot " + dir + "-plans");
  EXPECT_NE(nometrics.code, 0);
  EXPECT_NE(nometrics.out.find("has no metrics.jsonl"), std::string::npos) << nometrics.out;
}

// --jobs 2 runs two cells at a time; with one thread per run either way, the results are the same bit for bit.
TEST(CmdExperiment, TwoJobsGiveTheSameResultsAsOne) {
  const GridSetup& s = setup();
  const std::string dir = tmp_dir("jobs");
  json p = s.plan();
  p["train"]["threads"] = 1;
  const std::string plan = write_plan(dir + "-plans", p);
  auto one = run_sonar("experiment --plan " + plan + " --out " + dir + "/one --jobs 1");
  ASSERT_EQ(one.code, 0) << one.out;
  EXPECT_EQ(one.out.find(" at a time"), std::string::npos) << one.out;
  auto two = run_sonar("experiment --plan " + plan + " --out " + dir + "/two --jobs 2");
  ASSERT_EQ(two.code, 0) << two.out;
  EXPECT_NE(two.out.find("training 2 runs, 2 at a time with 1 thread each"), std::string::npos) << two.out;
  EXPECT_NE(two.out.find("[birds/distill/seed3] step 1/3"), std::string::npos) << "lines name their run: " << two.out;
  EXPECT_NE(two.out.find("probe 9 of 9"), std::string::npos) << two.out;
  EXPECT_EQ(sonar::read_file(dir + "/two/results.csv"), sonar::read_file(dir + "/one/results.csv"));
  for (const char* run : {"runs/birds/dcpt/seed3", "runs/birds/distill/seed3"})
    EXPECT_EQ(sonar::read_file(dir + "/two/" + run + "/model.safetensors"),
              sonar::read_file(dir + "/one/" + run + "/model.safetensors"))
        << run;
  auto bad = run_sonar("experiment --plan " + plan + " --out " + dir + "/bad --jobs 0");
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("--jobs must be between 1 and 64, got 0"), std::string::npos) << bad.out;
}

// A run that fails stops the run beside it at its next step, with a checkpoint it resumes from, and the grid
// ends with the failing run's error (one line naming the file); no results are written.
TEST(CmdExperiment, AFailingRunStopsTheConcurrentOneResumably) {
  const GridSetup& s = setup();
  const std::string dir = tmp_dir("fail");
  fs::create_directories(dir);
  // A manifest whose every clip is not audio: the run on it fails at its start.
  const std::string junk = dir + "/junk.wav";
  std::ofstream(junk) << "this is not a RIFF file, only text pretending to be audio";
  std::ofstream(dir + "/broken.csv") << "path,label,split\\n" << junk << ",x,train\\n" << junk << ",y,train\\n";
  json p = s.plan();
  // birds first, so that its run is taken before the broken one fails (a few milliseconds in).
  p["domains"] = json::array({{{"name", "birds"}, {"data", s.corpus + "/birds.csv"}, {"splits", {"train", "val"}}},
                              {{"name", "broken"}, {"data", dir + "/broken.csv"}}});
  p["methods"] = json::array({"dcpt"});
  p["train"]["steps"] = 20000;  // far more than the birds run can do before the broken one fails
  p["train"]["save_every"] = 20000;
  p["train"]["threads"] = 2;
  const std::string plan = write_plan(dir + "-plans", p);
  auto r = run_sonar("experiment --plan " + plan + " --out " + dir + "/out --jobs 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("broken.csv: no audio clips"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(dir + "/out/runs/birds/dcpt/seed3/model.safetensors")) << r.out;
  // The birds run had started (its start line): it stopped at its next step, with a checkpoint to resume from.
  // (Only if the machine delayed its thread past the failure could it not have started; then it has no folder.)
  if (r.out.find("[birds/dcpt/seed3] starting") != std::string::npos) {
    EXPECT_NE(r.out.find("[birds/dcpt/seed3] stopped at step"), std::string::npos) << r.out;
    EXPECT_TRUE(fs::exists(dir + "/out/runs/birds/dcpt/seed3/checkpoint.safetensors")) << r.out;
  } else {
    EXPECT_FALSE(fs::exists(dir + "/out/runs/birds/dcpt/seed3/checkpoint.safetensors")) << r.out;
  }
  EXPECT_FALSE(fs::exists(dir + "/out/results.csv"));
}

// --finished-only trains nothing and reports the finished runs alone: here one run of a 2 x 2 grid, made by a
// plan with only that cell. Its rows are those of the one-cell grid, to the byte; the tables say partial.
TEST(CmdExperiment, FinishedOnlyReportsThePartialGrid) {
  const GridSetup& s = setup();
  const std::string dir = tmp_dir("partial");
  const std::string out = dir + "/out";
  json full = s.plan();
  full["seeds"] = {3, 4};
  const std::string full_plan = write_plan(dir + "-full", full);

  auto none = run_sonar("experiment --plan " + full_plan + " --out " + out + " --finished-only");
  EXPECT_NE(none.code, 0);
  EXPECT_NE(none.out.find("is finished yet, so there is nothing to report"), std::string::npos) << none.out;
  EXPECT_LE(lines_of(none.out), 1) << none.out;
  EXPECT_FALSE(fs::exists(out)) << "nothing is written";

  json one = s.plan();
  one["methods"] = {"dcpt"};
  auto trained = run_sonar("experiment --plan " + write_plan(dir + "-one", one) + " --out " + out);
  ASSERT_EQ(trained.code, 0) << trained.out;
  const std::string one_csv = sonar::read_file(out + "/results.csv");
  EXPECT_EQ(lines_of(one_csv), 1 + 2 * 3) << one_csv;  // start and dcpt at seed 3, three tasks each

  auto partial = run_sonar("experiment --plan " + full_plan + " --out " + out + " --finished-only");
  ASSERT_EQ(partial.code, 0) << partial.out;
  EXPECT_EQ(partial.out.find("step 1/3"), std::string::npos) << "nothing trained: " << partial.out;
  EXPECT_NE(partial.out.find("run 2 of 4: birds / distill / seed 3: not finished, left out"), std::string::npos)
      << partial.out;
  EXPECT_NE(partial.out.find("0 trained now, 1 reused, 3 not finished, left out"), std::string::npos) << partial.out;
  EXPECT_NE(partial.out.find("6 probes (6 reused)"), std::string::npos) << partial.out;
  EXPECT_EQ(sonar::read_file(out + "/results.csv"), one_csv);
  EXPECT_NE(sonar::read_file(out + "/results.md").find("(partial: 1 of 4 runs finished)"), std::string::npos);
  EXPECT_FALSE(fs::exists(out + "/runs/birds/distill/seed3/model.safetensors"));
  EXPECT_FALSE(fs::exists(out + "/runs/birds/dcpt/seed4"));

  auto demo = run_sonar("experiment --preset demo --out " + dir + "/demo --finished-only");
  EXPECT_NE(demo.code, 0);
  EXPECT_NE(demo.out.find("--finished-only reads a grid made from a plan"), std::string::npos) << demo.out;
  EXPECT_FALSE(fs::exists(dir + "/demo"));
}

TEST(CmdExperiment, BadPlansFailWithOneLineAndWriteNothing) {
  const GridSetup& s = setup();
  const std::string dir = tmp_dir("bad");
  auto expect_refused = [&](const std::string& name, const json& plan, const std::string& needle) {
    const std::string out = dir + "/out-" + name;
    auto r = run_sonar("experiment --plan " + write_plan(dir + "/" + name, plan) + " --out " + out);
    EXPECT_NE(r.code, 0) << name;
    EXPECT_NE(r.out.find(needle), std::string::npos) << name << ": " << r.out;
    EXPECT_LE(lines_of(r.out), 1) << name << ": " << r.out;
    EXPECT_FALSE(fs::exists(out)) << name << ": the output folder was created";
  };
  json p = s.plan();
  p["methods"].push_back("sonar-extra-strong");
  expect_refused("method", p, "unknown method 'sonar-extra-strong'");
  p = s.plan();
  p["methods"][1]["flags"]["replay-sped"] = 1;
  expect_refused("flag", p, "unknown flag 'replay-sped'");
  p = s.plan();
  p["domains"][0]["data"] = s.corpus + "/owls.csv";
  expect_refused("manifest", p, "owls.csv does not exist");
  p = s.plan();
  p["methods"].push_back({{"name", "dcpt"}, {"base", "dcpt"}});
  expect_refused("duplicate", p, "duplicate run name: method 'dcpt'");
  auto notjson = run_sonar("experiment --plan " + s.corpus + "/prior.csv --out " + dir + "/out-csv");
  EXPECT_NE(notjson.code, 0);
  EXPECT_NE(notjson.out.find("not valid JSON"), std::string::npos) << notjson.out;
  EXPECT_FALSE(fs::exists(dir + "/out-csv"));
}

TEST(CmdExperiment, HelpNamesEveryFlag) {
  auto r = run_sonar("experiment --help");
  ASSERT_EQ(r.code, 0);
  for (const char* f : {"--plan", "--preset", "--out", "--domain", "--seeds", "--steps", "--threads", "--jobs",
                        "--finished-only"})
    EXPECT_NE(r.out.find(f), std::string::npos) << f;
  auto p = run_sonar("plot --help");
  ASSERT_EQ(p.code, 0);
  EXPECT_NE(p.out.find("--output"), std::string::npos);
}
