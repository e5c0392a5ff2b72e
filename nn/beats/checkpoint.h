// BEATs checkpoints: the official PyTorch .pt files (BEATs pre-trained, fine-tuned with label_dict, and
// Tokenizer) and this project's safetensors files, read into one CheckpointData and turned into models built
// from the configuration stored in the file.
//
// The project's safetensors layout: the model's state dict under its PyTorch names (so
// `model.load_state_dict(load_file(path))` works in PyTorch once "train."-prefixed entries are dropped), and
// string metadata
//   sonar.format  = "sonar-beats-1"
//   sonar.kind    = pretrained | finetuned | tokenizer | random_projection_tokenizer
//   sonar.config  = the BeatsConfig as JSON
//   sonar.labels  = {"0": "label", ...} (fine-tuned models with labels)
// plus, for training runs, any tensors under "train." (optimiser moments, RNG or schedule tensors) and any
// other metadata entries (step, schedule, RNG state as text): CheckpointData hands both back untouched.
// Not here: the zip/pickle reader (nn/torch_checkpoint.h) or safetensors I/O itself (tensor/io.h).
#pragma once
#include <map>
#include <memory>
#include <string>

#include "nn/beats/beats.h"
#include "nn/beats/config.h"
#include "nn/beats/quantizer.h"
#include "nn/beats/tokenizer.h"

namespace sonar::beats {

constexpr const char* kSafetensorsFormat = "sonar-beats-1";
constexpr const char* kTrainingPrefix = "train.";

enum class FileFormat { PyTorch, SafeTensors };

struct CheckpointData {
  std::string path;
  FileFormat format = FileFormat::PyTorch;
  ModelKind kind = ModelKind::Pretrained;
  BeatsConfig cfg;
  std::map<std::string, Tensor> state;             // model weights and buffers, PyTorch names
  std::map<int64_t, std::string> labels;           // class index -> label (label_dict)
  std::map<std::string, Tensor> training_tensors;  // safetensors entries under "train." (prefix removed)
  std::map<std::string, std::string> metadata;     // safetensors metadata (all of it)
};

// Reads either format (recognised by content, not by extension). Errors name the file and what is wrong:
// a missing file, a file that is neither format, a checkpoint without cfg or model, a bad config value.
CheckpointData read_checkpoint(const std::string& path);

// Models built from a checkpoint's configuration and loaded strictly from its state.
std::shared_ptr<BeatsModel> build_beats(const CheckpointData& ckpt);        // pretrained or finetuned
std::shared_ptr<BeatsTokenizer> build_tokenizer(const CheckpointData& ckpt);  // tokenizer
std::shared_ptr<RandomProjectionTokenizer> build_random_projection(const CheckpointData& ckpt);
std::shared_ptr<nn::Module> build_module(const CheckpointData& ckpt);         // whatever the kind is

// read_checkpoint + build_*: throw a one-line error naming the file when it holds another kind.
std::shared_ptr<BeatsModel> load_beats(const std::string& path);
std::shared_ptr<BeatsTokenizer> load_tokenizer(const std::string& path);

struct SaveExtras {
  std::map<std::string, Tensor> training_tensors;  // stored under "train." + name
  std::map<std::string, std::string> metadata;     // extra metadata entries (must not start with "sonar.")
};
// Writes a safetensors checkpoint (atomically: temporary file + rename).
void save_checkpoint(const std::string& path, const nn::Module& model, ModelKind kind, const BeatsConfig& cfg,
                     const std::map<int64_t, std::string>& labels = {}, const SaveExtras& extras = {});
void save_beats(const std::string& path, const BeatsModel& model, const SaveExtras& extras = {});
void save_tokenizer(const std::string& path, const BeatsTokenizer& tokenizer, const SaveExtras& extras = {});
// A RandomProjectionTokenizer's config holds input_patch_size, quant_n and quant_dim.
void save_random_projection(const std::string& path, const RandomProjectionTokenizer& tokenizer,
                            const SaveExtras& extras = {});

// Reads any checkpoint and writes it as this project's safetensors (strict round trip through the model,
// so the output is known to load).
void convert_checkpoint(const std::string& in_path, const std::string& out_path);

}  // namespace sonar::beats
