// Tests of BEATs checkpoint files (nn/beats/checkpoint.h): kinds, configs and labels of the official .pt
// files, safetensors round trips for every kind (values, labels, training tensors and metadata), conversion,
// and the one-line errors for a missing file, a foreign file, a wrong kind and a wrong shape.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "nn/beats/checkpoint.h"
#include "tensor/ops.h"
#include "tests/test_util.h"

namespace sonar::beats {
namespace {

using testutil::error_of;

const std::string kDir = std::string(SONAR_FIXTURES_DIR) + "/beats_tiny/";

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "sonar_ckpt_XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void expect_same_state(const nn::Module& a, const nn::Module& b) {
  auto sa = a.state_dict(), sb = b.state_dict();
  ASSERT_EQ(sa.size(), sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    EXPECT_EQ(sa[i].first, sb[i].first);
    EXPECT_EQ(sa[i].second.to_vector<float>(), sb[i].second.to_vector<float>()) << sa[i].first;
  }
}

TEST(BeatsCheckpoint, OfficialFilesKindsConfigsAndLabels) {
  CheckpointData b = read_checkpoint(kDir + "beats.pt");
  EXPECT_EQ(b.kind, ModelKind::Pretrained);
  EXPECT_EQ(b.format, FileFormat::PyTorch);
  EXPECT_EQ(b.cfg.encoder_layers, 2);
  EXPECT_EQ(b.cfg.encoder_embed_dim, 64);
  EXPECT_TRUE(b.cfg.deep_norm);
  EXPECT_TRUE(b.cfg.gru_rel_pos);
  EXPECT_EQ(b.cfg.num_buckets, 32);
  EXPECT_TRUE(b.labels.empty());
  CheckpointData f = read_checkpoint(kDir + "beats_finetuned.pt");
  EXPECT_EQ(f.kind, ModelKind::Finetuned);
  EXPECT_EQ(f.cfg.predictor_class, 10);
  EXPECT_EQ(f.labels.size(), 10u);
  EXPECT_EQ(f.labels.at(9), "class_9");
  CheckpointData t = read_checkpoint(kDir + "tokenizer.pt");
  EXPECT_EQ(t.kind, ModelKind::Tokenizer);
  EXPECT_EQ(t.cfg.quant_n, 64);
  EXPECT_EQ(t.cfg.quant_dim, 16);
  EXPECT_TRUE(build_tokenizer(t)->quantize->initialised());
  EXPECT_NE(describe(t.cfg, t.kind).find("quant_n: 64"), std::string::npos);
}

TEST(BeatsCheckpoint, SafetensorsRoundTripOfEveryKind) {
  TempDir tmp;
  auto model = load_beats(kDir + "beats_finetuned.pt");
  SaveExtras extras;
  extras.training_tensors["optimizer.step"] = full({1}, 42.0);
  extras.metadata["step"] = "42";
  save_beats(tmp.file("ft.safetensors"), *model, extras);
  CheckpointData c = read_checkpoint(tmp.file("ft.safetensors"));
  EXPECT_EQ(c.format, FileFormat::SafeTensors);
  EXPECT_EQ(c.kind, ModelKind::Finetuned);
  EXPECT_EQ(c.labels, model->labels);
  EXPECT_EQ(c.cfg.to_json(), model->cfg.to_json());
  EXPECT_EQ(c.metadata.at("step"), "42");
  EXPECT_EQ(c.training_tensors.at("optimizer.step").at({0}), 42.0);
  EXPECT_EQ(c.state.count("train.optimizer.step"), 0u);
  auto back = build_beats(c);
  expect_same_state(*model, *back);
  EXPECT_TRUE(c.state.count("encoder.layers.1.self_attn.relative_attention_bias.weight"));  // torch-loadable

  auto tok = load_tokenizer(kDir + "tokenizer.pt");
  save_tokenizer(tmp.file("tok.safetensors"), *tok);
  expect_same_state(*tok, *load_tokenizer(tmp.file("tok.safetensors")));

  Generator gen(1);
  RandomProjectionTokenizer rp(16, 32, 8, &gen);
  save_random_projection(tmp.file("rp.safetensors"), rp);
  auto rp2 = build_random_projection(read_checkpoint(tmp.file("rp.safetensors")));
  expect_same_state(rp, *rp2);

  EXPECT_NE(error_of([&] {
              SaveExtras bad;
              bad.metadata["sonar.kind"] = "x";
              save_beats(tmp.file("bad.safetensors"), *model, bad);
            }).find("reserved"),
            std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(tmp.file("bad.safetensors")));
}

TEST(BeatsCheckpoint, ConvertWritesALoadableSafetensorsFile) {
  TempDir tmp;
  convert_checkpoint(kDir + "beats.pt", tmp.file("b.safetensors"));
  SafeTensorsFile f = load_safetensors(tmp.file("b.safetensors"));
  EXPECT_EQ(f.metadata.at("sonar.kind"), "pretrained");
  auto official = load_beats(kDir + "beats.pt");
  EXPECT_EQ(f.tensors.size(), official->state_dict().size());
  expect_same_state(*official, *load_beats(tmp.file("b.safetensors")));
}

TEST(BeatsCheckpoint, ClearErrors) {
  TempDir tmp;
  std::string e = error_of([&] { read_checkpoint(tmp.file("nope.pt")); });
  EXPECT_NE(e.find("nope.pt"), std::string::npos) << e;
  {
    std::ofstream(tmp.file("junk.pt")) << "this is not a checkpoint at all";
  }
  e = error_of([&] { read_checkpoint(tmp.file("junk.pt")); });
  EXPECT_NE(e.find("junk.pt"), std::string::npos) << e;
  EXPECT_NE(e.find("neither"), std::string::npos) << e;

  e = error_of([&] { load_tokenizer(kDir + "beats.pt"); });
  EXPECT_NE(e.find("pretrained"), std::string::npos) << e;
  EXPECT_NE(e.find("beats.pt"), std::string::npos) << e;
  e = error_of([&] { load_beats(kDir + "tokenizer.pt"); });
  EXPECT_NE(e.find("tokenizer"), std::string::npos) << e;

  // A file whose tensor has the wrong shape names the key and both shapes.
  auto model = load_beats(kDir + "beats.pt");
  std::map<std::string, Tensor> tensors;
  for (auto& [k, t] : model->state_dict()) tensors[k] = t.contiguous();
  tensors["encoder.layers.0.fc1.weight"] = zeros({3, 64});
  save_safetensors(tmp.file("shape.safetensors"), tensors,
                   {{"sonar.format", kSafetensorsFormat}, {"sonar.kind", "pretrained"},
                    {"sonar.config", model->cfg.to_json().dump()}});
  e = error_of([&] { load_beats(tmp.file("shape.safetensors")); });
  EXPECT_NE(e.find("encoder.layers.0.fc1.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("[3, 64]"), std::string::npos) << e;
  EXPECT_NE(e.find("[128, 64]"), std::string::npos) << e;
  // A safetensors file that is not ours.
  save_safetensors(tmp.file("plain.safetensors"), {{"w", zeros({2})}});
  e = error_of([&] { read_checkpoint(tmp.file("plain.safetensors")); });
  EXPECT_NE(e.find("sonar.format"), std::string::npos) << e;
}

TEST(BeatsCheckpoint, ConfigJsonRoundTripKeepsUnknownKeys) {
  BeatsConfig c;
  c.input_patch_size = 16;
  c.extra["future_field"] = "3";
  nlohmann::json j = c.to_json();
  BeatsConfig d = BeatsConfig::from_json(j);
  EXPECT_EQ(d.to_json(), j);
  EXPECT_EQ(d.extra.at("future_field"), "3");
  j["encoder_layers"] = "twelve";
  EXPECT_THROW(BeatsConfig::from_json(j), Error);
  BeatsConfig bad = c;
  bad.encoder_attention_heads = 5;
  EXPECT_THROW(bad.validate(), Error);
}

}  // namespace
}  // namespace sonar::beats
