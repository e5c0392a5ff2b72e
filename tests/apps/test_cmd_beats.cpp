// Command-line tests of the BEATs commands (info, features, tokenize, classify, convert): the built `sonar`
// program is run on the beats_tiny fixtures and its output files are compared with the official reference
// arrays; misuse (missing file, wrong kind of checkpoint, bad .npy input) must fail with one line on stderr,
// a non-zero exit and no output file.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "audio/decode.h"
#include "tensor/ops.h"
#include "tests/test_util.h"

namespace sonar {
namespace {

const std::string kSonar = std::string(SONAR_BINARY_DIR) + "/sonar";
const std::string kDir = std::string(SONAR_FIXTURES_DIR) + "/beats_tiny/";
constexpr double kFeatureTol = 1e-4;  // fixtures README: 1e-4 absolute or relative to the largest magnitude

class CmdBeats : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "sonar_cmd_beats_XXXXXX").string();
    dir_ = mkdtemp(tmpl.data());
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string file(const std::string& name) const { return dir_ + "/" + name; }

  // Runs sonar with `args`; stdout and stderr land in out_ and err_. Idle OpenMP threads sleep instead of
  // spinning (results do not depend on it; it keeps these short runs fast on a machine shared with others).
  int run(const std::string& args) {
    const std::string cmd = "OMP_WAIT_POLICY=passive " + kSonar + " " + args + " > " + file("stdout.txt") + " 2> " +
                            file("stderr.txt");
    const int status = std::system(cmd.c_str());
    out_ = sonar::testutil::read_text_file(file("stdout.txt"));
    err_ = sonar::testutil::read_text_file(file("stderr.txt"));
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  // One line on stderr, naming `needle`, and a failing exit code.
  void expect_clean_failure(int rc, const std::string& needle) {
    EXPECT_NE(rc, 0);
    EXPECT_EQ(std::count(err_.begin(), err_.end(), '\n'), 1) << err_;
    EXPECT_NE(err_.find(needle), std::string::npos) << err_;
  }

  std::string dir_, out_, err_;
};

double max_err(const Tensor& got, const Tensor& ref) {
  EXPECT_EQ(shape_str(got.shape()), shape_str(ref.shape()));
  if (got.shape() != ref.shape()) return 1e30;
  const double scale = std::max(1.0, max_all(abs(ref)).item<double>());
  return max_all(abs(sub(got, ref))).item<double>() / scale;
}

TEST_F(CmdBeats, FeaturesOfThePaddedBatchAndTheirMask) {
  ASSERT_EQ(run("features --checkpoint " + kDir + "beats.pt --input " + kDir + "wave.npy --padding-mask " + kDir +
                "padding_mask.npy --output " + file("f.npy")),
            0)
      << err_;
  EXPECT_LT(max_err(load_npy(file("f.npy")), load_npy(kDir + "features_batch.npy")), kFeatureTol);
  Tensor mask = load_npy(file("f.mask.npy"));
  EXPECT_EQ(mask.dtype(), DType::UInt8);
  EXPECT_EQ(mask.to_vector<uint8_t>(), load_npy(kDir + "features_batch_mask.npy").to(DType::UInt8).to_vector<uint8_t>());
  EXPECT_NE(out_.find("[2, 48, 64]"), std::string::npos) << out_;
}

TEST_F(CmdBeats, FeaturesOfOneClipFromSafetensorsAndLayerOutputs) {
  save_npy(file("clip0.npy"), load_npy(kDir + "wave.npy").select(0, 0));
  ASSERT_EQ(run("convert " + kDir + "beats.pt " + file("b.safetensors")), 0) << err_;
  ASSERT_EQ(run("features --checkpoint " + file("b.safetensors") + " --input " + file("clip0.npy") + " --output " +
                file("f.npy")),
            0)
      << err_;
  EXPECT_LT(max_err(load_npy(file("f.npy")), load_npy(kDir + "features_single.npy")), kFeatureTol);
  EXPECT_FALSE(std::filesystem::exists(file("f.mask.npy")));
  // The last block's output of this post-LN model is the final output; block 1 differs.
  ASSERT_EQ(run("features --checkpoint " + kDir + "beats.pt --input " + file("clip0.npy") + " --layer 2 --output " +
                file("l2.npy")),
            0)
      << err_;
  EXPECT_LT(max_err(load_npy(file("l2.npy")), load_npy(kDir + "features_single.npy")), kFeatureTol);
  ASSERT_EQ(run("features --checkpoint " + kDir + "beats.pt --input " + file("clip0.npy") + " --layer 1 --output " +
                file("l1.npy")),
            0)
      << err_;
  EXPECT_GT(max_err(load_npy(file("l1.npy")), load_npy(kDir + "features_single.npy")), 1e-2);
}

TEST_F(CmdBeats, FeaturesOfAnAudioFile) {
  // Clip 0 as a 32-bit float WAV at 16 kHz: decoding is exact, so the official features are reproduced.
  audio::write_audio(file("clip0.wav"), load_npy(kDir + "wave.npy").select(0, 0).contiguous().to_vector<float>(), 1,
                     16000, audio::SampleFormat::Float);
  ASSERT_EQ(run("features --checkpoint " + kDir + "beats.pt --input " + file("clip0.wav") + " --output " + file("f.npy")),
            0)
      << err_;
  EXPECT_LT(max_err(load_npy(file("f.npy")), load_npy(kDir + "features_single.npy")), kFeatureTol);
}

TEST_F(CmdBeats, ExactPaddingMaskFollowsTheTrueLength) {
  ASSERT_EQ(run("features --checkpoint " + kDir + "beats.pt --input " + kDir + "wave.npy --padding-mask " + kDir +
                "padding_mask.npy --exact-padding --output " + file("f.npy")),
            0)
      << err_;
  std::vector<uint8_t> want(96, 0);
  for (int p = 32; p < 48; ++p) want[48 + p] = 1;  // 11680 samples: 71 frames, 4 time patches, 32 patches
  EXPECT_EQ(load_npy(file("f.mask.npy")).to_vector<uint8_t>(), want);
}

TEST_F(CmdBeats, TokenizeMatchesTheOfficialLabels) {
  save_npy(file("clip0.npy"), load_npy(kDir + "wave.npy").narrow(0, 0, 1));
  ASSERT_EQ(run("tokenize --tokenizer " + kDir + "tokenizer.pt --input " + file("clip0.npy") + " --output " +
                file("t.npy")),
            0)
      << err_;
  Tensor t = load_npy(file("t.npy"));
  EXPECT_EQ(t.dtype(), DType::Int64);
  EXPECT_EQ(t.to_vector<int64_t>(), load_npy(kDir + "tokenizer_labels_single.npy").to_vector<int64_t>());
}

TEST_F(CmdBeats, ClassifyMatchesTheOfficialProbabilitiesAndPrintsLabels) {
  ASSERT_EQ(run("classify --checkpoint " + kDir + "beats_finetuned.pt --input " + kDir + "wave.npy --padding-mask " +
                kDir + "padding_mask.npy --output " + file("p.npy") + " --top 2"),
            0)
      << err_;
  Tensor ref = load_npy(kDir + "finetuned_probs.npy");
  EXPECT_LT(max_err(load_npy(file("p.npy")), ref), kFeatureTol);
  // The top label of each clip, by name, from the reference probabilities.
  for (int64_t c = 0; c < 2; ++c) {
    const int64_t best = argmax(ref.select(0, c), 0).item<int64_t>();
    const std::string line = "clip " + std::to_string(c) + ": class_" + std::to_string(best) + " ";
    EXPECT_NE(out_.find(line), std::string::npos) << out_;
  }
}

TEST_F(CmdBeats, InfoAndConvertOfEveryOfficialKind) {
  ASSERT_EQ(run("info " + kDir + "beats_finetuned.pt"), 0) << err_;
  EXPECT_NE(out_.find("kind: finetuned"), std::string::npos) << out_;
  EXPECT_NE(out_.find("parameters: 94962"), std::string::npos) << out_;
  EXPECT_NE(out_.find("encoder_layers: 2"), std::string::npos) << out_;
  EXPECT_NE(out_.find("3: class_3"), std::string::npos) << out_;
  ASSERT_EQ(run("convert " + kDir + "tokenizer.pt " + file("t.safetensors")), 0) << err_;
  ASSERT_EQ(run("info " + file("t.safetensors")), 0) << err_;
  EXPECT_NE(out_.find("kind: tokenizer"), std::string::npos) << out_;
  EXPECT_NE(out_.find("codebook: 64 codes x 16 dims, initialised"), std::string::npos) << out_;
  EXPECT_NE(out_.find("safetensors"), std::string::npos) << out_;
}

TEST_F(CmdBeats, MisuseFailsWithOneLineAndNoOutput) {
  const std::string out = file("x.npy");
  expect_clean_failure(run("info " + file("missing.pt")), "missing.pt");
  expect_clean_failure(run("features --checkpoint " + file("missing.pt") + " --input " + kDir + "wave.npy --output " + out),
                       "missing.pt");
  expect_clean_failure(run("features --checkpoint " + kDir + "tokenizer.pt --input " + kDir + "wave.npy --output " + out),
                       "tokenizer");
  expect_clean_failure(run("tokenize --tokenizer " + kDir + "beats.pt --input " + kDir + "wave.npy --output " + out),
                       "not a tokenizer");
  expect_clean_failure(run("classify --checkpoint " + kDir + "beats.pt --input " + kDir + "wave.npy --output " + out),
                       "classifier head");
  // A .npy that is not 16 kHz float samples: a mask, integer-scaled PCM, a too-short clip, a mismatched mask.
  expect_clean_failure(run("features --checkpoint " + kDir + "beats.pt --input " + kDir + "padding_mask.npy --output " + out),
                       "float32");
  save_npy(file("pcm.npy"), mul(load_npy(kDir + "wave.npy"), 32768.0f));
  expect_clean_failure(run("features --checkpoint " + kDir + "beats.pt --input " + file("pcm.npy") + " --output " + out),
                       "[-1, 1]");
  save_npy(file("short.npy"), zeros({1000}));
  expect_clean_failure(run("tokenize --tokenizer " + kDir + "tokenizer.pt --input " + file("short.npy") + " --output " + out),
                       "shorter");
  save_npy(file("mask.npy"), zeros({2, 100}, DType::UInt8));
  expect_clean_failure(run("classify --checkpoint " + kDir + "beats_finetuned.pt --input " + kDir + "wave.npy --padding-mask " +
                           file("mask.npy") + " --output " + out),
                       "does not match");
  expect_clean_failure(run("convert " + kDir + "wave.npy " + file("w.safetensors")), "wave.npy");
  EXPECT_FALSE(std::filesystem::exists(out));
  EXPECT_FALSE(std::filesystem::exists(file("w.safetensors")));
}

}  // namespace
}  // namespace sonar
