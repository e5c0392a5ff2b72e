// `sonar tokenize`: discrete BEATs token labels of waveforms from a tokenizer checkpoint (official Tokenizer
// .pt, or sonar safetensors of a tokenizer or random-projection tokenizer). Thin: the work is nn/beats.
#include <cstdio>
#include <string>
#include <vector>

#include "apps/beats_common.h"
#include "apps/command.h"
#include "nn/beats/checkpoint.h"
#include "tensor/index.h"
#include "tensor/io.h"

namespace {

const char* kUsage = R"(usage: sonar tokenize --tokenizer CKPT --input IN [--padding-mask M.npy] [--exact-padding]
                      --output OUT.npy

Labels every patch of every clip with its nearest codebook entry and saves int64 [clips, patches] (patches
time-major, as `sonar features`). Runs in eval mode without gradients; the codebook is not changed on disk.

  --tokenizer CKPT    a BEATs tokenizer (official Tokenizer .pt or sonar safetensors), or a sonar
                      random-projection tokenizer (iteration 0: no encoder, the mask is not used)
  --input IN          an audio file or a float32 .npy of 16 kHz samples, [samples] or [clips, samples]
  --padding-mask M    uint8 .npy [clips, samples], 1 = padding: passed to the encoder as the official
                      extract_labels does (every patch still gets a label)
  --exact-padding     use each clip's true length for the encoder's patch mask (see `sonar features`)
  --output OUT.npy    written atomically
)";

int run_tokenize(int argc, char** argv) {
  using namespace sonar;
  app::Args args(argc, argv, {"tokenizer", "input", "padding-mask", "output"}, {"exact-padding"});
  if (args.help()) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  SONAR_CHECK(args.positional().empty(), "unexpected argument '", args.positional().front(), "' (see --help)");
  const std::string ckpt = args.require("tokenizer"), input = args.require("input"), out = args.require("output");
  app::require_npy_name(out, "output");
  beats::CheckpointData c = beats::read_checkpoint(ckpt);
  SONAR_CHECK(c.kind == beats::ModelKind::Tokenizer || c.kind == beats::ModelKind::RandomProjectionTokenizer, ckpt,
              ": this is a ", beats::kind_name(c.kind), " checkpoint, not a tokenizer");
  app::WaveInput in = app::read_wave_input(input, args.get("padding-mask"));

  beats::FeatureOptions opts;
  opts.padding = args.has("exact-padding") ? beats::PaddingMode::Exact : beats::PaddingMode::Official;
  ag::NoGradGuard no_grad;
  std::vector<Tensor> labels;
  const int64_t clips = in.wave.size(0);
  if (c.kind == beats::ModelKind::Tokenizer) {
    auto tok = beats::build_tokenizer(c);
    tok->eval();
    app::for_each_chunk(clips, app::kClipsPerChunk, [&](int64_t first, int64_t n) {
      Tensor mask = in.mask_rows(first, n);
      labels.push_back(tok->extract_labels(in.wave.narrow(0, first, n), mask, opts).labels);
    });
  } else {
    auto rp = beats::build_random_projection(c);
    app::for_each_chunk(clips, app::kClipsPerChunk, [&](int64_t first, int64_t n) {
      labels.push_back(rp->labels(beats::preprocess(in.wave.narrow(0, first, n))));
    });
  }
  Tensor result = cat(labels, 0);
  save_npy(out, result);
  std::printf("%s -> %s: %s int64 labels\n", input.c_str(), out.c_str(), shape_str(result.shape()).c_str());
  return 0;
}

}  // namespace

SONAR_COMMAND("tokenize", "BEATs tokenizer labels of audio", kUsage, run_tokenize);
