// `sonar probe`: linear-probe evaluation of a frozen BEATs model on a labelled manifest (sonar/probe.h): pooled
// clip features, a logistic-regression classifier with early stopping on the validation split, test accuracy
// and macro-F1 (single-label) or mAP (multi-label), optionally written to a JSON file (atomically). With --tasks,
// every task of a corpus's tasks.csv in turn and a summary table. Thin: parses flags and calls the library.
// Not fine-tuning.
#include <cstdio>
#include <sstream>
#include <string>

#include "apps/command.h"
#include "sonar/probe.h"
#include "tensor/error.h"
#include "tensor/io.h"
#include "tensor/precision.h"

#include <omp.h>

namespace {

std::string usage() {
  const sonar::method::ProbeOptions d;
  std::ostringstream u;
  u << "usage: sonar probe (--checkpoint CKPT | --preset tiny|small|base) (--data MANIFEST | --tasks TASKS.csv)\n"
       "                   [--layer N] [--epochs N] [--seed S] [--output metrics.json] [more flags below]\n\n"
       "Linear-probe evaluation of a frozen model: every clip's features (one block's output, mean-pooled over\n"
       "its unpadded patches) feed a logistic-regression classifier trained with AdamW on the training split,\n"
       "stopped early on the validation loss, and scored on the test split: accuracy and macro-F1 for\n"
       "single-label tasks, mAP for multi-label ones. Splits: the manifest's train/val/test values (when there\n"
       "is no val, " << d.val_fraction * 100 << "% of the training clips are held out by group), or numeric folds (each fold is\n"
       "the test set once; the mean is reported).\n\n"
       "  --checkpoint CKPT   BEATs model to probe (.pt or safetensors; a pre-training run's checkpoint or model\n"
       "                      file works; a tokenizer checkpoint probes the tokenizer's encoder)\n"
       "  --preset NAME       instead: a freshly initialised model of this preset (tiny, small, base), a baseline\n"
       "  --model-seed S      initialisation seed of that fresh model (default 0)\n"
       "  --data MANIFEST     labelled CSV/TSV manifest (path,label,split,... ) or class folder\n"
       "  --tasks TASKS.csv   instead: every task of a corpus (the tasks.csv that scripts/build-benchmark.sh and\n"
       "                      sonar synth-corpus write: task, manifest, type), one after the other, then a\n"
       "                      table of the test scores; --output then holds every task's metrics\n"
       "  --task T            auto (default: multi-label when some clip has several labels), single, multi\n"
       "  --layer N           features from block N (1 = first); 0 = the last block (default 0)\n"
       "  --max-seconds S     clips are read from the start up to S seconds (default " << d.features.max_seconds << ")\n"
       "  --batch N           clips per feature batch (default " << d.features.batch_size << ")\n"
       "  --epochs N          at most N passes of the classifier over the training clips (default "
    << d.classifier.epochs << ")\n"
       "  --patience N        stop after N epochs without a better validation loss (default " << d.classifier.patience << ")\n"
       "  --lr LR             classifier learning rate (default " << d.classifier.lr << ")\n"
       "  --weight-decay W    classifier weight decay (default " << d.classifier.weight_decay << ")\n"
       "  --group-folds K     ignore the manifest's splits: K-fold cross-validation over whole groups (a group's\n"
       "                      clips share a fold; each class's groups dealt over the folds in a seeded order),\n"
       "                      every clip tested once and the mean reported: less noisy than one small test split\n"
       "  --val-fraction F    training share held out for validation when the manifest has no val (default "
    << d.val_fraction << ")\n"
       "  --seed S            classifier minibatch order and validation hold-out (default 0)\n"
       "  --output FILE       write the metrics as JSON (written only when everything succeeded)\n"
       "  --threads N         compute threads (default: OpenMP's)\n"
       "  --workers N         background loading threads (default " << d.features.workers << ")\n"
       "  --cache DIR         fbank cache folder\n"
       "  --precision P       f32 (default) or bf16: every matrix product of the run (the frozen model's and the\n"
       "                      classifier's) with bfloat16 operands and float32 accumulation; weights, softmax,\n"
       "                      losses and the optimiser stay float32 (needs AVX512-BF16)\n";
  return u.str();
}

int run(int argc, char** argv) {
  sonar::app::Args args(argc, argv,
                        {"checkpoint", "preset", "model-seed", "data", "task", "layer", "max-seconds", "batch",
                         "epochs", "patience", "lr", "weight-decay", "val-fraction", "seed", "output", "threads",
                         "workers", "cache", "precision", "tasks", "group-folds"},
                        {});
  if (args.help()) {
    std::printf("%s", usage().c_str());
    return 0;
  }
  SONAR_CHECK(args.positional().empty(), "unexpected argument '", args.positional().empty() ? "" : args.positional()[0],
              "' (see --help)");
  SONAR_CHECK(args.has("checkpoint") != args.has("preset"), "give either --checkpoint or --preset (see --help)");
  sonar::method::ProbeOptions o;
  o.checkpoint = args.get("checkpoint");
  o.preset = args.get("preset");
  const long long ms = args.get_int("model-seed", 0);
  SONAR_CHECK(ms >= 0, "--model-seed must be >= 0, got ", ms);
  o.model_seed = static_cast<uint64_t>(ms);
  SONAR_CHECK(args.has("data") != args.has("tasks"), "give either --data or --tasks (see --help)");
  SONAR_CHECK(!(args.has("tasks") && args.has("task")), "--task does not go with --tasks: each task's type is in the tasks file");
  o.data = args.get("data");
  o.task = args.get("task", "auto");
  std::vector<sonar::method::ProbeTask> tasks;
  if (args.has("tasks")) tasks = sonar::method::read_probe_tasks(args.get("tasks"));
  o.features.layer = args.get_int("layer", 0);
  SONAR_CHECK(o.features.layer >= 0, "--layer must be >= 0, got ", o.features.layer);
  o.features.max_seconds = args.get_double("max-seconds", o.features.max_seconds);
  SONAR_CHECK(o.features.max_seconds > 0, "--max-seconds must be positive, got ", o.features.max_seconds);
  o.features.batch_size = args.get_int("batch", o.features.batch_size);
  SONAR_CHECK(o.features.batch_size > 0, "--batch must be positive, got ", o.features.batch_size);
  o.features.workers = static_cast<int>(args.get_int("workers", o.features.workers));
  SONAR_CHECK(o.features.workers >= 0, "--workers must be >= 0, got ", o.features.workers);
  o.features.cache_dir = args.get("cache");
  o.classifier.epochs = args.get_int("epochs", o.classifier.epochs);
  SONAR_CHECK(o.classifier.epochs > 0, "--epochs must be positive, got ", o.classifier.epochs);
  o.classifier.patience = args.get_int("patience", o.classifier.patience);
  SONAR_CHECK(o.classifier.patience > 0, "--patience must be positive, got ", o.classifier.patience);
  o.classifier.lr = static_cast<float>(args.get_double("lr", o.classifier.lr));
  SONAR_CHECK(o.classifier.lr > 0, "--lr must be positive, got ", o.classifier.lr);
  o.classifier.weight_decay = static_cast<float>(args.get_double("weight-decay", o.classifier.weight_decay));
  SONAR_CHECK(o.classifier.weight_decay >= 0, "--weight-decay must be >= 0, got ", o.classifier.weight_decay);
  o.val_fraction = args.get_double("val-fraction", o.val_fraction);
  o.group_folds = args.get_int("group-folds", 0);
  SONAR_CHECK(o.group_folds == 0 || o.group_folds >= 2, "--group-folds must be at least 2, got ", o.group_folds);
  const long long seed = args.get_int("seed", 0);
  SONAR_CHECK(seed >= 0, "--seed must be >= 0, got ", seed);
  o.classifier.seed = static_cast<uint64_t>(seed);
  const long long threads = args.get_int("threads", 0);
  SONAR_CHECK(threads >= 0, "--threads must be >= 0, got ", threads);
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
  const std::string output = args.get("output");
  const sonar::Precision precision = sonar::parse_precision(args.get("precision", "f32"));
  sonar::require_precision_supported(precision);

  sonar::PrecisionGuard precision_scope(precision);
  if (tasks.empty()) {
    const sonar::method::ProbeReport rep = sonar::method::run_probe(o);
    if (!output.empty()) {
      sonar::write_file_atomic(output, rep.to_json().dump(2) + "\n");
      std::printf("metrics: %s\n", output.c_str());
    }
    return 0;
  }
  nlohmann::json all = nlohmann::json::array();
  std::string table = "| task | test score | test accuracy | test clips |\n| --- | ---: | ---: | ---: |\n";
  for (size_t i = 0; i < tasks.size(); ++i) {
    const auto& t = tasks[i];
    std::printf("[task %zu of %zu] %s\n", i + 1, tasks.size(), t.name.c_str());
    std::fflush(stdout);
    o.data = t.manifest;
    o.task = t.task;
    const sonar::method::ProbeReport rep = sonar::method::run_probe(o);
    nlohmann::json j = rep.to_json();
    j["name"] = t.name;
    all.push_back(j);
    int64_t clips = 0;
    for (const auto& f : rep.folds) clips += f.test;
    char row[256];
    if (rep.multi_label)
      std::snprintf(row, sizeof row, "| %s | mAP %.4f | - | %lld |\n", t.name.c_str(), rep.test.mAP,
                    static_cast<long long>(clips));
    else
      std::snprintf(row, sizeof row, "| %s | macro-F1 %.4f | %.4f | %lld |\n", t.name.c_str(), rep.test.macro_f1,
                    rep.test.accuracy, static_cast<long long>(clips));
    table += row;
  }
  std::printf("\n%s: %s\n%s", o.checkpoint.empty() ? ("untrained " + o.preset).c_str() : o.checkpoint.c_str(),
              args.get("tasks").c_str(), table.c_str());
  if (!output.empty()) {
    sonar::write_file_atomic(output, nlohmann::json{{"tasks", all}}.dump(2) + "\n");
    std::printf("metrics: %s\n", output.c_str());
  }
  return 0;
}

}  // namespace

SONAR_COMMAND("probe", "linear-probe evaluation of a frozen BEATs model on a labelled manifest (accuracy, F1, mAP)",
              usage(), run);
