// Experiment grids: which continual pre-training method adapts to a new domain and which forgets. A plan
// (JSON) names a start model (BEATs checkpoint plus its tokenizer), a prior pool (the data the start model was
// pre-trained on: it stands for AudioSet, is replayed by SONAR and has a probe task), new domains (unlabelled
// training data plus a labelled probe task each), the methods (named variants of sonar/method.h, or custom
// flag sets), the seeds and the training and probe settings. The grid is domains x seeds x methods; each cell
// is an ordinary `sonar pretrain` run folder, and each model (the start model too, as method "start") is
// linear-probed (sonar/probe.h) on every task: its new domain's ("new"), the prior pool's ("prior") and the
// other domains' ("other"). Finished runs and probes are reused; an interrupted grid resumes.
//
// Output folder:
//   plan.json                     the plan as run (paths absolute)
//   runs/<domain>/<method>/seed<S>/   pretrain run folders (plus grid_run.json: the settings the cell was made with)
//   probes/<model>/<task>-seed<S>.json  probe reports with the key they were computed for (cache)
//   results.csv                   one row per (domain, method, seed, task)
//   results.json, results.md      the summary: mean and sample std over seeds per (domain, method), and each
//                                 method against dcpt (and the ablations against sonar) paired by domain and seed
//   figures/curves-<domain>.svg   training curves per method (metrics.jsonl, mean over seeds)
//   figures/bars.svg              new-domain macro-F1 and prior score per method and domain, error bars = std
//   figures/scatter.svg           adaptation (new-domain F1 gain) against forgetting (prior drop)
//
// Scores: macro-F1 for single-label tasks, mAP for multi-label ones. Forgetting of a model on a task = the start
// model's score - the model's score (paired by seed: the probe classifier of seed S is trained the same way for
// both); relative forgetting = forgetting / start score; the "general" drop = the mean forgetting over the
// "other" tasks (the domains not adapted to), which a coarse prior task can hide.
//
// The plan half (parse_plan, read_plan, to_json, cell_flags, grid_cells) is sonar/experiment_plan.cpp, which
// needs no training code; the rest is sonar/experiment.cpp.
//
// Not here: the training loop (sonar/trainer.h), the method's parts (sonar/method.h), the probe protocol
// (sonar/probe.h), the SVG writer (sonar/plot.h), the command line (apps/cmd_experiment.cpp).
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace sonar::method {

// ---- the plan ----

// The start model's name in the grid's results (and in probes/); reserved, so no method may take it.
inline constexpr const char* kStartMethodName = "start";

struct PlanDomain {
  std::string name;                 // also the name of its probe task
  std::string data;                 // unlabelled training data (manifest, folder or list)
  std::vector<std::string> splits;  // rows of `data` used for training (e.g. train, val); empty: all
  std::string task;                 // labelled probe manifest (default: `data`)
};

struct PlanMethod {
  std::string name;                          // run folder name; "start" is reserved
  std::map<std::string, std::string> flags;  // SONAR flags (sonar/method.h), "method" included
};

struct PlanTraining {
  int64_t steps = 400, batch = 16, warmup = -1, log_every = 25, save_every = 100;
  double crop_seconds = 2.0, lr = 5e-4, final_lr = 0.0, max_clip_seconds = 60.0;
  int threads = 0, workers = 1;
};

struct PlanProbe {
  int64_t epochs = 200, patience = 30, layer = 0, batch = 8;
  double max_seconds = 10.0;
  // > 1: every task is probed by cross-validation over this many folds of whole groups (ProbeOptions::
  // group_folds; the probe seed, the run's seed, deals the folds), not on the manifests' splits.
  int64_t group_folds = 0;
};

struct ExperimentPlan {
  std::string name = "experiment";
  std::string start_model, start_tokenizer;  // the start checkpoint and its tokenizer
  std::string prior_data;                    // the prior pool (replay source)
  std::vector<std::string> prior_splits;     // its rows replay may use (e.g. train, val)
  std::string prior_task;                    // its labelled probe manifest ("" = no prior task)
  std::vector<PlanDomain> domains;
  std::map<std::string, std::string> extra_tasks;  // more probe tasks (name -> manifest), scored as "other"
  std::vector<PlanMethod> methods;
  std::vector<uint64_t> seeds;
  std::map<std::string, std::string> sonar_flags;  // common to every method with method sonar
  PlanTraining train;
  PlanProbe probe;
  nlohmann::json to_json() const;  // the normalised plan (absolute paths), as written to plan.json
};

// A plan from JSON; relative paths are taken from `base_dir`. Everything is checked before anything runs:
// unknown keys, unknown methods or flags (each method's flags go through sonar_options_from_flags), missing
// files, duplicate domain, method, task or seed names (they would make two cells share a run folder), names
// unfit for a folder, numbers out of range, strings holding control characters, more than 10000 cells. Throws
// one line naming the plan file and the problem.
ExperimentPlan parse_plan(const nlohmann::json& j, const std::string& base_dir, const std::string& what = "plan");
// The same from JSON text (a plan file's bytes): text that is not JSON is one line naming `what` too.
ExperimentPlan parse_plan_text(const std::string& text, const std::string& base_dir, const std::string& what);
ExperimentPlan read_plan(const std::string& path);  // parse_plan_text of the file, relative to its folder

// The flags a cell's run gets: the method's own and, for method sonar, the plan's common SONAR flags (the
// method's own win) and the prior pool.
std::map<std::string, std::string> cell_flags(const ExperimentPlan& plan, const PlanMethod& m);

// ---- the grid ----

struct GridCell {
  std::string domain, method;
  uint64_t seed = 0;
  std::string dir;  // the run folder
};
// The cells in run order: domain, then seed, then method.
std::vector<GridCell> grid_cells(const ExperimentPlan& plan, const std::string& out_dir);

struct ExperimentOptions {
  std::string out_dir;
  std::function<void(const std::string&)> log;  // progress lines (default: stdout)
  const std::atomic<bool>* stop = nullptr;      // finish the current step, save, return
  // Runs (and probes) done at the same time, each with its share of the plan's threads (at least one). A tiny
  // model's step is too short to keep two cores busy, so two runs of one thread each finish the grid about 1.5x
  // sooner than one run of two threads (docs/results.md); a large model gains little and needs the memory of
  // every concurrent run. Results do not depend on it beyond the float summation order of a thread count.
  int jobs = 1;
  // Train nothing: probe the runs already finished (and the start model for their seeds) and write the results
  // and figures of those alone, titled as partial. For reading a long grid while it is still running, or
  // between the sessions it is resumed in. Fails when no run is finished.
  bool finished_only = false;
};

struct ExperimentReport {
  int64_t cells = 0, trained = 0, reused = 0;  // runs trained (or resumed) in this session / found finished
  int64_t left_out = 0;                         // finished_only: runs not finished, not in the results
  int64_t probes = 0, probes_reused = 0;
  bool stopped = false;
  double seconds = 0.0;
  std::vector<std::string> outputs;  // result files and figures written
};

// Runs (or resumes) the grid, probes every model on every task, writes the results and the figures.
ExperimentReport run_experiment(const ExperimentPlan& plan, const ExperimentOptions& opts);

// ---- results ----

struct ResultRow {
  std::string domain, method;
  uint64_t seed = 0;
  std::string task, role;  // role: new, prior or other
  int64_t test_clips = 0;
  double accuracy = 0, macro_f1 = 0, mAP = 0;  // NaN where the task has no such metric
  double score = 0;                            // macro-F1 (single-label) or mAP (multi-label)
};

std::string results_csv(const std::vector<ResultRow>& rows);
// Parses results.csv (the header and columns results_csv writes). Throws naming the file and line.
std::vector<ResultRow> parse_results_csv(const std::string& text, const std::string& what = "results.csv");

struct Stat {
  double mean = 0, std = 0;  // std: sample standard deviation (n - 1); NaN for n < 2
  int64_t n = 0;             // finite values used
};
Stat stat_of(const std::vector<double>& v);  // NaN entries are left out

struct SummaryRow {
  std::string domain, method;
  int64_t seeds = 0;
  Stat new_f1, new_acc;          // on the new domain's task
  Stat new_gain;                 // new-domain score - the start model's (same seed)
  Stat prior;                    // prior task score (mAP for a multi-label pool)
  Stat forgetting;               // start prior score - this prior score, per seed
  Stat relative_forgetting;      // forgetting / start prior score
  Stat general_drop;             // per seed: mean over "other" tasks of (start score - score)
};
// One row per (domain, method) in the order they first appear; "start" rows have zero forgetting. Methods
// without a "start" row of the same domain and seed get NaN for the paired numbers.
std::vector<SummaryRow> summarise(const std::vector<ResultRow>& rows);

// One method against a reference method on the same domain and seed (same start model, same probe
// classifiers' seed): differences are method - reference, so positive means the method scored higher.
struct PairedRow {
  std::string domain;  // kAllDomains pools the pairs of every domain
  std::string method, reference;
  int64_t pairs = 0;   // (domain, seed) pairs where both have the task's score
  Stat new_f1;         // new-domain score difference (macro-F1: the new domains' tasks are single-label)
  Stat prior;          // prior score difference (positive = the method kept more of the prior task)
  Stat other;          // mean over the other domains' tasks of the score difference
  int64_t new_wins = 0, new_losses = 0, prior_wins = 0, prior_losses = 0;  // ties count as neither
  double new_p = 0, prior_p = 0;  // two-sided exact sign test of wins against losses (NaN with no pair)
};
inline constexpr const char* kAllDomains = "all domains";
// Two-sided exact sign test: the probability, with wins and losses equally likely, of a split at least as
// uneven as `wins` against `losses` (1 when both are 0).
double sign_test_p(int64_t wins, int64_t losses);
// `method` against `reference` per domain (in order of first appearance) and pooled over domains; empty when
// either method has no rows.
std::vector<PairedRow> compare_paired(const std::vector<ResultRow>& rows, const std::string& method,
                                      const std::string& reference);
// The comparisons the report shows: every method but start and dcpt against "dcpt", and every method but
// start, dcpt and sonar (the ablations) against "sonar", where those methods exist.
std::vector<PairedRow> report_comparisons(const std::vector<ResultRow>& rows);

nlohmann::json results_json(const std::vector<ResultRow>& rows, const std::vector<SummaryRow>& summary,
                            const std::vector<PairedRow>& paired = {});
std::string results_markdown(const std::vector<SummaryRow>& summary, const std::string& title,
                             const std::vector<PairedRow>& paired = {});

// ---- training curves ----

struct MetricsLog {
  std::vector<std::string> keys;                    // in first-seen order, "step" left out
  std::map<std::string, std::vector<double>> steps, values;  // per key
};
// Reads a run's metrics.jsonl (one JSON object per logged step; null values are skipped). Throws naming the
// file and line on a malformed line.
MetricsLog read_metrics(const std::string& path);
// The same key averaged point-wise over several logs (same steps), e.g. over seeds.
MetricsLog mean_metrics(const std::vector<MetricsLog>& logs);

// The panels drawn for training curves: loss terms, accuracies, codebook health, replay, learning rate and
// gradient norm; each returns the keys of a log that belong to it (empty panels are not drawn).
std::vector<std::pair<std::string, std::vector<std::string>>> curve_panels(const std::vector<std::string>& keys);
// One run: every panel, each key a line.
std::string run_curves_svg(const MetricsLog& log, const std::string& title);
// Several runs (e.g. methods): one panel per key, each run a line.
std::string compare_curves_svg(const std::vector<std::pair<std::string, MetricsLog>>& logs, const std::string& title);

// Writes results.csv, results.json, results.md and figures/bars.svg, figures/scatter.svg into out_dir
// (atomically); returns the paths.
std::vector<std::string> write_results(const std::vector<ResultRow>& rows, const std::string& out_dir,
                                       const std::string& title);

}  // namespace sonar::method
