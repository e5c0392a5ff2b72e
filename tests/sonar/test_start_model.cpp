// Tests of the start model's chain (sonar/start_model.h) and the `small` preset: the three stages end in the
// files a plan's "start" names and a record of their settings and times; a second call reuses every stage and
// changes no file; a chain stopped in its first and then its third stage resumes to the same model, bit for
// bit, as one run straight through; other settings, unknown presets, zero steps and unrecorded stage folders
// are refused with a line that names the problem, before anything is written.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "nn/beats/checkpoint.h"
#include "sonar/start_model.h"
#include "sonar/trainer.h"
#include "tensor/io.h"
#include "tests/sonar/sonar_test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace sonar;
using namespace sonar::method;
using sonar::testutil::build_tiny_corpus;
using sonar::testutil::fresh_tmp_path;
using sonar::testutil::remove_after_all_tests;

namespace {

fs::path corpus_path() { return fs::temp_directory_path() / ("sonar_test_start_model_corpus_" + std::to_string(::getpid())); }

// 8 prior clips of 1.5 s, seed 7; removed after the last test.
std::string prior_pool() {
  static const std::string dir = build_tiny_corpus(corpus_path(), 8, 7);
  return dir + "/prior.csv";
}
const ::testing::Environment* const kCleanup = remove_after_all_tests({corpus_path()});

// A few steps per stage on 1-second crops, one thread (so that runs are bit-for-bit reproducible), quiet.
StartModelOptions tiny_chain(const std::string& out) {
  StartModelOptions o;
  o.data = prior_pool();
  o.splits = {};  // the 8 prior clips span every split; all of them are trained on here
  o.out_dir = out;
  o.preset = "tiny";
  o.projection_steps = 4;
  o.tokenizer_steps = 3;
  o.steps = 4;
  o.batch_size = 4;
  o.crop_seconds = 1.0;
  o.save_every = 100;
  o.log_every = 1;
  o.num_threads = 1;
  o.log = [](const std::string&) {};
  return o;
}

// Every tensor of two files equal bit for bit (their metadata name their own folders, so it differs).
void expect_same_tensors(const std::string& a, const std::string& b) {
  const SafeTensorsFile fa = load_safetensors(a), fb = load_safetensors(b);
  ASSERT_EQ(fa.tensors.size(), fb.tensors.size());
  for (const auto& [name, t] : fa.tensors) {
    const auto it = fb.tensors.find(name);
    ASSERT_NE(it, fb.tensors.end()) << name;
    EXPECT_EQ(sonar::testutil::max_abs_diff_nan_aware(t, it->second), 0.0f) << name;
  }
}

std::string error_of(const StartModelOptions& o) {
  try {
    make_start_model(o);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(StartModel, ChainEndsInAPlanStartAndARerunReusesEveryStage) {
  const std::string out = fresh_tmp_path("sonar_test_start_model_", "chain");
  const StartModelResult r = make_start_model(tiny_chain(out));
  ASSERT_TRUE(r.finished);
  EXPECT_EQ(r.stages_reused, 0);
  EXPECT_EQ(r.model, out + "/3-tokenizer-targets/checkpoint.safetensors");
  EXPECT_EQ(r.tokenizer, out + "/3-tokenizer-targets/tokenizer.safetensors");
  ASSERT_TRUE(fs::exists(r.model));
  ASSERT_TRUE(fs::exists(r.tokenizer));

  // Stage 3 trained on stage 2's tokenizer (a distilled one, not stage 1's random projection).
  expect_same_tensors(out + "/2-tokenizer/tokenizer.safetensors", r.tokenizer);

  const json rec = json::parse(read_file(out + "/start-model.json"));
  EXPECT_TRUE(rec.at("finished").get<bool>());
  EXPECT_EQ(rec.at("start").at("model"), "3-tokenizer-targets/checkpoint.safetensors");
  EXPECT_EQ(rec.at("start").at("tokenizer"), "3-tokenizer-targets/tokenizer.safetensors");
  EXPECT_EQ(rec.at("settings").at("preset"), "tiny");
  ASSERT_EQ(rec.at("stages").size(), 3u);
  const int64_t steps[3] = {4, 3, 4};
  double sum = 0.0;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(rec["stages"][i].at("dir"), start_model_stages()[i]);
    EXPECT_EQ(rec["stages"][i].at("steps").get<int64_t>(), steps[i]);
    EXPECT_GT(rec["stages"][i].at("training_seconds").get<double>(), 0.0) << i;
    sum += rec["stages"][i]["training_seconds"].get<double>();
  }
  EXPECT_DOUBLE_EQ(rec.at("training_seconds").get<double>(), sum);

  const std::string model_bytes = read_file(r.model);
  const auto model_time = fs::last_write_time(r.model);
  const StartModelResult again = make_start_model(tiny_chain(out));
  ASSERT_TRUE(again.finished);
  EXPECT_EQ(again.stages_reused, 3);
  EXPECT_EQ(again.model, r.model);
  EXPECT_EQ(read_file(r.model), model_bytes);
  EXPECT_EQ(fs::last_write_time(r.model), model_time);
}

TEST(StartModel, StoppedChainResumesToTheSameModelAsAStraightOne) {
  const std::string straight = fresh_tmp_path("sonar_test_start_model_", "straight");
  const std::string stopped = fresh_tmp_path("sonar_test_start_model_", "stopped");
  ASSERT_TRUE(make_start_model(tiny_chain(straight)).finished);

  // Stopped at step 2 of stage 1, then at step 2 of stage 3; the third call finishes.
  std::atomic<bool> stop{false};
  StartModelOptions o = tiny_chain(stopped);
  o.stop = &stop;
  int stage = 0;
  std::string stop_in;
  o.log = [&](const std::string& l) {
    if (l.rfind("start model, stage ", 0) == 0) stage = l[19] - '0';
    if (std::to_string(stage) == stop_in && l.find("step 2/") != std::string::npos) stop = true;
  };
  stop_in = "1";
  EXPECT_FALSE(make_start_model(o).finished);
  EXPECT_FALSE(fs::exists(stopped + "/1-random-projection/model.safetensors"));
  EXPECT_FALSE(json::parse(read_file(stopped + "/start-model.json")).at("finished").get<bool>());
  stop = false;
  stop_in = "3";
  EXPECT_FALSE(make_start_model(o).finished);
  EXPECT_TRUE(fs::exists(stopped + "/2-tokenizer/tokenizer.safetensors"));
  EXPECT_FALSE(fs::exists(stopped + "/3-tokenizer-targets/model.safetensors"));
  stop = false;
  stop_in = "";
  const StartModelResult r = make_start_model(o);
  ASSERT_TRUE(r.finished);
  EXPECT_EQ(r.stages_reused, 2);
  expect_same_tensors(straight + "/3-tokenizer-targets/checkpoint.safetensors", r.model);
  expect_same_tensors(straight + "/2-tokenizer/tokenizer.safetensors", stopped + "/2-tokenizer/tokenizer.safetensors");
}

TEST(StartModel, BadSettingsAreRefusedBeforeAnythingIsWritten) {
  const std::string out = fresh_tmp_path("sonar_test_start_model_", "bad");
  ASSERT_TRUE(make_start_model(tiny_chain(out)).finished);
  const std::string record = read_file(out + "/start-model.json");
  const auto model_time = fs::last_write_time(out + "/3-tokenizer-targets/checkpoint.safetensors");

  StartModelOptions other = tiny_chain(out);
  other.lr = 1e-2;
  const std::string e = error_of(other);
  EXPECT_NE(e.find(out + " holds a start model made with other settings (lr: 0.003 there, 0.01 now)"),
            std::string::npos) << e;
  EXPECT_EQ(read_file(out + "/start-model.json"), record);
  EXPECT_EQ(fs::last_write_time(out + "/3-tokenizer-targets/checkpoint.safetensors"), model_time);

  const std::string fresh = fresh_tmp_path("sonar_test_start_model_", "fresh");
  StartModelOptions huge = tiny_chain(fresh);
  huge.preset = "huge";
  EXPECT_NE(error_of(huge).find("unknown model preset 'huge' (known: tiny, small, base)"), std::string::npos)
      << error_of(huge);
  StartModelOptions none = tiny_chain(fresh);
  none.tokenizer_steps = 0;
  EXPECT_NE(error_of(none).find("every stage needs a positive number of steps, got 0"), std::string::npos);
  StartModelOptions nowhere = tiny_chain(fresh);
  nowhere.data = fresh + "-no-such-pool.csv";
  EXPECT_NE(error_of(nowhere).find("the prior pool " + nowhere.data + " does not exist"), std::string::npos)
      << error_of(nowhere);
  EXPECT_FALSE(fs::exists(fresh));

  // Stage folders without a record (an older sonar's, or made by hand): their settings are unknown.
  fs::remove(out + "/start-model.json");
  EXPECT_NE(error_of(tiny_chain(out)).find("holds stage folders but no start-model.json"), std::string::npos);
  EXPECT_FALSE(fs::exists(out + "/start-model.json"));
}

TEST(StartModel, EveryStageHasThePresetsSize) {
  const std::string out = fresh_tmp_path("sonar_test_start_model_", "small");
  StartModelOptions o = tiny_chain(out);
  o.preset = "small";
  o.projection_steps = o.tokenizer_steps = o.steps = 1;
  o.batch_size = 2;
  o.num_threads = 2;
  const StartModelResult r = make_start_model(o);
  ASSERT_TRUE(r.finished);
  const beats::BeatsConfig want = preset_config("small");
  for (const std::string& f : {r.model, r.tokenizer, out + "/1-random-projection/model.safetensors"}) {
    const json c = json::parse(load_safetensors(f).metadata.at("sonar.config"));
    EXPECT_EQ(c.at("encoder_layers").get<int64_t>(), want.encoder_layers) << f;
    EXPECT_EQ(c.at("encoder_embed_dim").get<int64_t>(), want.encoder_embed_dim) << f;
    EXPECT_EQ(c.at("quant_n").get<int64_t>(), want.quant_n) << f;
  }
}

TEST(Presets, SmallSitsBetweenTinyAndBase) {
  const beats::BeatsConfig s = preset_config("small");
  EXPECT_EQ(s.encoder_layers, 4);
  EXPECT_EQ(s.encoder_embed_dim, 256);
  EXPECT_EQ(s.encoder_ffn_embed_dim, 1024);
  EXPECT_EQ(s.encoder_embed_dim / s.encoder_attention_heads, 64);  // base's head width
  EXPECT_EQ(s.embed_dim, 128);
  EXPECT_EQ(s.quant_n, 512);
  EXPECT_EQ(s.quant_dim, 64);
  Generator g(1);
  const int64_t tiny = beats::BeatsModel(preset_config("tiny"), &g).num_parameters();
  const int64_t small = beats::BeatsModel(s, &g).num_parameters();
  EXPECT_GT(small, 10 * tiny);
  EXPECT_LT(small, 9'000'000);  // a tenth of base's 90 M (docs/distributed.md)
}
