// Tests of dual-source self-distillation (sonar/distill.h) and of the SONAR flags (sonar/method.h): the
// model-level loss equals a double hand computation and its gradient matches finite differences; the loss and
// its gradient are exactly zero at the start (student == teacher, dropout off); the teacher sees exactly the
// student's visible patches; the auxiliary head learns the frozen start tokenizer's labels while the main head's
// targets differ; a SONAR run with distillation is killed, resumed and ends bit-identical to a straight run;
// metrics.jsonl has one line per logged step, cut back correctly on resume; a resume with a changed SONAR flag is
// refused naming the flag; bad flags fail with one line.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "audio/synth_corpus.h"
#include "autograd/gradcheck.h"
#include "autograd/loss.h"
#include "autograd/ops.h"
#include "nn/beats/checkpoint.h"
#include "sonar/method.h"
#include "tensor/creation.h"
#include "tensor/index.h"
#include "tensor/io.h"
#include "tensor/random.h"
#include "tests/sonar/sonar_test_util.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace sonar;
using namespace sonar::method;
using namespace sonar::testutil;

namespace {

constexpr double kHandTol = 1e-5;        // float32 loss vs the same formula in double (relative)
constexpr double kGradAtol = 2e-3;       // finite differences over a float32 forward
constexpr double kGradRtol = 2e-2;
constexpr float kResumeTolerance = 0.0f;  // bit-identical on the same machine and thread count

fs::path base_dir() { return fs::temp_directory_path() / ("sonar_test_distill_" + std::to_string(::getpid())); }

// 16 clips per domain, 8 prior clips, seed 9.
std::string corpus_dir() {
  static const std::string dir = build_tiny_corpus(base_dir() / "corpus", 8, 9);
  return dir;
}
const ::testing::Environment* const kCleanup = remove_after_all_tests({base_dir()});

std::string run_dir(const std::string& name) {
  fs::path p = base_dir() / name;
  fs::remove_all(p);
  return p.string();
}

// A tiny BEATs with every dropout off, saved once: the start model of the runs below.
std::string start_checkpoint() {
  static const std::string path = [] {
    const fs::path p = base_dir() / "start.safetensors";
    save_dropout_free_tiny_model(p, 77);
    return p.string();
  }();
  return path;
}


// The tiny run on 1-second crops of the 16 bird clips from the start model, batches of 4, seed 3, a log line
// every step.
PretrainOptions tiny_options(const std::string& out, int64_t steps) {
  PretrainOptions o = tiny_run_options<PretrainOptions>(corpus_dir() + "/birds.csv", out, steps, 3);
  o.init = start_checkpoint();
  o.log_every = 1;
  return o;
}

SonarOptions distill_only(double model_weight, double tok_weight) {
  return sonar_options_from_flags({{"method", "sonar"},
                                   {"replay", "none"},
                                   {"codebook", "frozen"},
                                   {"distill-model", std::to_string(model_weight)},
                                   {"distill-tokenizer", std::to_string(tok_weight)}});
}

// Records the start labels and targets the auxiliary head must learn, and the model-level loss of every step.
class Recorder : public TrainerExtension {
 public:
  std::string name() const override { return "recorder"; }
  void relabel(StepBatch& b) override {
    // Make the main head's targets differ from the start tokenizer's (as an adapting codebook would).
    Tensor shifted = b.start_labels.contiguous().clone();
    int64_t* l = shifted.data<int64_t>();
    for (int64_t i = 0; i < shifted.numel(); ++i) l[i] = (l[i] + 1) % 32;
    b.labels = shifted;
    start_labels.push_back(b.start_labels.clone());
  }
  std::vector<Tensor> start_labels;
};

double hand_cosine_loss(const Tensor& s, const Tensor& t) {
  const int64_t N = s.size(0), C = s.size(1);
  const float* a = s.data<float>();
  const float* b = t.data<float>();
  double total = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    double dot = 0, na = 0, nb = 0;
    for (int64_t j = 0; j < C; ++j) {
      dot += double(a[i * C + j]) * b[i * C + j];
      na += double(a[i * C + j]) * a[i * C + j];
      nb += double(b[i * C + j]) * b[i * C + j];
    }
    total += 1.0 - dot / std::sqrt(na * nb);
  }
  return total / N;
}

double hand_mse_loss(const Tensor& s, const Tensor& t) {
  const int64_t N = s.size(0), C = s.size(1);
  auto standardise = [&](const float* x, int64_t i, std::vector<double>& out) {
    double m = 0, v = 0;
    for (int64_t j = 0; j < C; ++j) m += x[i * C + j];
    m /= C;
    for (int64_t j = 0; j < C; ++j) v += (x[i * C + j] - m) * (x[i * C + j] - m);
    v /= C;
    out.resize(C);
    for (int64_t j = 0; j < C; ++j) out[j] = (x[i * C + j] - m) / std::sqrt(v + 1e-5);
  };
  double total = 0.0;
  std::vector<double> ra, rb;
  for (int64_t i = 0; i < N; ++i) {
    standardise(s.data<float>(), i, ra);
    standardise(t.data<float>(), i, rb);
    for (int64_t j = 0; j < C; ++j) total += (ra[j] - rb[j]) * (ra[j] - rb[j]);
  }
  return total / (N * C);
}

}  // namespace

TEST(Distill, FeatureLossEqualsHandComputation) {
  Tensor s = lcg_uniform({7, 5}, 1, 1), t = lcg_uniform({7, 5}, 2, 1);
  const double c = feature_distill_loss(ag::Var(s), t, "cosine").value().item<double>();
  EXPECT_NEAR(c, hand_cosine_loss(s, t), kHandTol * std::fabs(hand_cosine_loss(s, t)));
  const double m = feature_distill_loss(ag::Var(s), t, "mse").value().item<double>();
  EXPECT_NEAR(m, hand_mse_loss(s, t), kHandTol * std::fabs(hand_mse_loss(s, t)));
  expect_error([&] { feature_distill_loss(ag::Var(s), lcg_uniform({7, 4}, 2, 1), "cosine"); }, {"[7, 4]"});
  expect_error([&] { feature_distill_loss(ag::Var(s), t, "l1"); }, {"l1"});
}

TEST(Distill, FeatureLossGradientMatchesFiniteDifferences) {
  const Tensor t = lcg_uniform({6, 4}, 3, 1);
  for (const std::string loss : {"cosine", "mse"}) {
    ag::GradcheckOptions go;
    go.atol = kGradAtol;
    go.rtol = kGradRtol;
    ag::GradcheckResult r = ag::gradcheck(
        [&](const std::vector<ag::Var>& in) { return feature_distill_loss(in[0], t, loss); },
        {lcg_uniform({6, 4}, 4, 1)}, go);
    EXPECT_TRUE(r.ok) << loss << "\n" << r.report;
    // A non-contiguous (transposed) student.
    ag::GradcheckResult rt = ag::gradcheck(
        [&](const std::vector<ag::Var>& in) { return feature_distill_loss(ag::transpose(in[0], 0, 1), t, loss); },
        {lcg_uniform({4, 6}, 5, 1)}, go);
    EXPECT_TRUE(rt.ok) << loss << " transposed\n" << rt.report;
  }
}

TEST(Distill, ZeroLossAndZeroGradientWhenStudentIsTeacher) {
  // The model-level term at step 0 of a run from a dropout-free start model: exactly 0, with exactly zero
  // gradient for every parameter of the model.
  beats::CheckpointData c = beats::read_checkpoint(start_checkpoint());
  auto student = beats::build_beats(c);
  auto teacher = beats::build_beats(c);
  teacher->eval();
  beats::MlpOptions mo;
  mo.predictor.num_classes = 16;
  mo.layer_results = true;
  Generator pg(1);
  beats::MaskedLabelPrediction obj(student, mo, &pg);
  obj.train();
  Tensor fbank = lcg_uniform({2, 112, 128}, 6, 1);
  Tensor fm = zeros({2, 112}, DType::Bool);
  for (int64_t t = 90; t < 112; ++t) fm.bytes()[112 + t] = 1;  // clip 1 padded
  for (const std::string loss : {"cosine", "mse"}) {
    Generator mg(2);
    beats::VisibleEncoding ve = obj.encode_visible(ag::Var(fbank), fm, mg);
    beats::VisibleEncoding te;
    {
      ag::NoGradGuard ng;
      te = beats::encode_with_masking(*teacher, ag::Var(fbank), ve.patch_padding, ve.masking, true);
    }
    ASSERT_EQ(ve.layer_results.size(), 3u);  // block input + 2 blocks
    ASSERT_EQ(ve.layer_results.size(), te.layer_results.size());
    student->zero_grad();
    ag::Var total;
    for (size_t l = 1; l < ve.layer_results.size(); ++l) {
      const int64_t C = ve.layer_results[l].size(2), R = ve.masking.batch * ve.masking.visible;
      ag::Var term = feature_distill_loss(ag::reshape(ve.layer_results[l], {R, C}),
                                          te.layer_results[l].value().contiguous().reshape({R, C}), loss);
      total = total.defined() ? ag::add(total, term) : term;
    }
    EXPECT_EQ(total.value().item<double>(), 0.0) << loss;
    total.backward();
    int with_grad = 0;
    for (const auto& [name, p] : student->named_parameters()) {
      if (!p.grad().defined()) continue;
      ++with_grad;
      EXPECT_EQ(max_abs_diff(p.grad(), zeros_like(p.grad())), 0.0) << loss << " " << name;
    }
    EXPECT_GT(with_grad, 10) << "the loss did not reach the encoder's parameters";
  }
}

TEST(Distill, RunStartsAtZeroAndAuxHeadLearnsStartLabels) {
  const std::string dir = run_dir("aux");
  auto rec = std::make_shared<Recorder>();
  auto ext = make_extensions(distill_only(1.0, 1.0), 3);
  ASSERT_EQ(ext.size(), 1u);
  auto distill = std::dynamic_pointer_cast<SelfDistillExtension>(ext[0]);
  ASSERT_NE(distill, nullptr);
  // One step: model-level term exactly zero (student == teacher before the first update; dropout off).
  PretrainOptions o = tiny_options(dir, 1);
  o.warmup_steps = 0;
  Trainer t1(o, {rec, distill});
  t1.run();
  EXPECT_EQ(distill->last_model_loss(), 0.0);
  // The auxiliary head's loss is the cross-entropy against the START labels: a fresh auxiliary head equals the
  // main head, whose targets were shifted by one, so both losses are about log(32) but computed on different
  // targets; check the aux head's targets by recomputing its loss from the run's predictor.
  ASSERT_EQ(rec->start_labels.size(), 1u);
  auto pred = t1.objective()->predictor;
  ASSERT_NE(pred->aux_head, nullptr);
  EXPECT_EQ(pred->aux_head->out_features(), 32);
  EXPECT_TRUE(std::isfinite(distill->last_tokenizer_loss()));
  EXPECT_GT(distill->last_tokenizer_loss(), 0.0);

  // Longer: the auxiliary head's accuracy on the start labels rises while the main head follows other labels.
  const std::string dir2 = run_dir("aux_long");
  auto ext2 = make_extensions(distill_only(1.0, 1.0), 3);
  auto d2 = std::dynamic_pointer_cast<SelfDistillExtension>(ext2[0]);
  auto rec2 = std::make_shared<Recorder>();
  PretrainOptions o2 = tiny_options(dir2, 30);
  std::vector<double> accs;
  o2.log = [&](const std::string&) {};
  Trainer t2(o2, {rec2, d2});
  t2.run();
  // metrics.jsonl has start_acc for every logged step: last 5 mean above first 5 mean.
  std::ifstream in(fs::path(dir2) / kMetricsFile);
  std::string line;
  while (std::getline(in, line)) accs.push_back(nlohmann::json::parse(line).at("start_acc").get<double>());
  ASSERT_EQ(accs.size(), 30u);
  double first = 0, last = 0;
  for (int i = 0; i < 5; ++i) {
    first += accs[i];
    last += accs[accs.size() - 1 - i];
  }
  EXPECT_GT(last, first) << "the auxiliary head did not learn the start tokenizer's labels";
}

TEST(Distill, KilledAndResumedRunEqualsStraightRunAndMetricsAreTrimmed) {
  const std::string straight = run_dir("straight"), resumed = run_dir("resumed");
  PretrainOptions oa = tiny_options(straight, 7);
  oa.log_every = 2;
  Trainer(oa, make_extensions(distill_only(1.0, 0.5), oa.seed)).run();

  PretrainOptions ob = tiny_options(resumed, 7);
  ob.log_every = 2;
  ob.halt_after = 5;  // checkpoint at step 3; steps 4-5 (and the metrics line of step 4) are redone
  Trainer(ob, make_extensions(distill_only(1.0, 0.5), ob.seed)).run();
  ob.halt_after = -1;
  PretrainResult r = Trainer(ob, make_extensions(distill_only(1.0, 0.5), ob.seed)).run();
  EXPECT_TRUE(r.resumed);
  EXPECT_EQ(r.start_step, 3);
  ASSERT_TRUE(r.finished);

  SafeTensorsFile fa = load_safetensors((fs::path(straight) / kCheckpointFile).string());
  SafeTensorsFile fb = load_safetensors((fs::path(resumed) / kCheckpointFile).string());
  ASSERT_EQ(fa.tensors.size(), fb.tensors.size());
  bool has_aux = false;
  for (const auto& [name, t] : fa.tensors) {
    has_aux = has_aux || name.find("aux_head") != std::string::npos;
    ASSERT_TRUE(fb.tensors.count(name)) << name;
    EXPECT_LE(max_abs_diff(t, fb.tensors.at(name)), kResumeTolerance) << name;
  }
  EXPECT_TRUE(has_aux) << "the auxiliary head is not in the checkpoint";

  // metrics.jsonl: steps 2, 4, 6, 7 exactly once each, in order, with the distillation terms.
  std::ifstream in(fs::path(resumed) / kMetricsFile);
  std::string line;
  std::vector<int64_t> steps;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    steps.push_back(j.at("step").get<int64_t>());
    EXPECT_TRUE(j.contains("distill_model") && j.contains("distill_tok") && j.contains("mlp_loss")) << line;
  }
  EXPECT_EQ(steps, (std::vector<int64_t>{2, 4, 6, 7}));

  // A changed SONAR flag is refused on resume, naming the flag, and nothing is written.
  const std::string changed = run_dir("changed");
  PretrainOptions oc = tiny_options(changed, 7);
  oc.halt_after = 4;
  Trainer(oc, make_extensions(distill_only(1.0, 0.5), oc.seed)).run();
  const auto before = fs::last_write_time(fs::path(changed) / kCheckpointFile);
  oc.halt_after = -1;
  expect_error([&] { Trainer(oc, make_extensions(distill_only(0.25, 0.5), oc.seed)).run(); },
               {"distill-model", "other options"});
  expect_error([&] { Trainer(oc, {}).run(); }, {"extension distill"});
  EXPECT_EQ(fs::last_write_time(fs::path(changed) / kCheckpointFile), before);
}

TEST(SonarFlags, BadValuesGiveOneLineNamingTheFlag) {
  expect_error([] { sonar_options_from_flags({{"distill-model", "1"}}); }, {"--distill-model", "--method sonar"});
  expect_error([] { sonar_options_from_flags({{"method", "sonr"}}); }, {"--method", "sonr"});
  expect_error([] { sonar_options_from_flags({{"method", "sonar"}}); }, {"--prior"});
  expect_error([] { sonar_options_from_flags({{"method", "sonar"}, {"replay", "none"}, {"distill-model", "-1"}}); },
               {"--distill-model"});
  expect_error([] { sonar_options_from_flags({{"method", "sonar"}, {"prior", "p.csv"}, {"replay-ratio", "1.5"}}); },
               {"--replay-ratio"});
  expect_error([] { sonar_options_from_flags({{"method", "sonar"}, {"replay", "none"}, {"distill-layers", "0"}}); },
               {"--distill-layers"});
  expect_error([] { method_flags("sonar-everything"); }, {"sonar-everything", "known"});
  // Every named variant parses (with a prior pool) and dcpt has no extension.
  for (const auto& m : method_names()) {
    auto f = method_flags(m);
    if (f.at("method") == "sonar") f["prior"] = "prior.csv";
    SonarOptions o = sonar_options_from_flags(f);
    EXPECT_EQ(o.method, m == "dcpt" ? "dcpt" : "sonar") << m;
  }
  EXPECT_TRUE(make_extensions(sonar_options_from_flags({}), 0).empty());
}

TEST(Distill, BadLayerIsRefusedBeforeAnythingIsWritten) {
  const std::string dir = run_dir("badlayer");
  SonarOptions so = distill_only(1.0, 1.0);
  so.distill.layers = {5};  // the tiny model has 2 blocks
  expect_error([&] { Trainer(tiny_options(dir, 2), make_extensions(so, 3)).run(); }, {"block 5", "2 blocks"});
  EXPECT_FALSE(fs::exists(dir));
}
