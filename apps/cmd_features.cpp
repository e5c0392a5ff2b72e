// `sonar features`: BEATs encoder features (or one layer's output) of waveforms, with the patch-level padding
// mask when a sample-level mask is given. Thin: input reading in apps/beats_common, the model in nn/beats.
#include <cstdio>
#include <string>
#include <vector>

#include "apps/beats_common.h"
#include "apps/command.h"
#include "nn/beats/checkpoint.h"
#include "tensor/index.h"
#include "tensor/io.h"
#include "tensor/precision.h"

namespace {

const char* kUsage = R"(usage: sonar features --checkpoint CKPT --input IN [--padding-mask M.npy] [--layer N]
                      [--exact-padding] [--precision f32|bf16] --output OUT.npy

Runs a BEATs model (pretrained or fine-tuned; official .pt or sonar safetensors) in eval mode without
gradients and saves its features as float32 [clips, patches, dim]. Patches are time-major: patch
t * 8 + f covers frames 16t..16t+15 and mel bins 16f..16f+15 (a leftover of fewer than 16 frames is dropped).

  --checkpoint CKPT   the model
  --input IN          an audio file (any format libsndfile reads, any rate: mixed to mono, resampled to
                      16 kHz) or a float32 .npy of 16 kHz samples in [-1, 1], [samples] or [clips, samples]
  --padding-mask M    uint8 .npy [clips, samples], 1 = padding. Also writes OUT.mask.npy, uint8
                      [clips, patches], the patch-level mask (1 = padded patch)
  --layer N           save the output of transformer block N (1..layers) instead of the final features;
                      0 = the encoder input (after the positional convolution)
  --exact-padding     derive the patch mask from each clip's true length (a clip gives the same features
                      alone and padded in a batch) instead of the official downsampling (the default,
                      identical to the official code; see docs/beats.md)
  --precision P       f32 (default) or bf16: matrix products with bfloat16 operands and float32
                      accumulation (needs AVX512-BF16; features differ from float32 by ~0.5%, see
                      docs/performance.md); everything else stays float32
  --output OUT.npy    written atomically
)";

int run_features(int argc, char** argv) {
  using namespace sonar;
  app::Args args(argc, argv, {"checkpoint", "input", "padding-mask", "layer", "output", "precision"}, {"exact-padding"});
  if (args.help()) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  SONAR_CHECK(args.positional().empty(), "unexpected argument '", args.positional().front(), "' (see --help)");
  const std::string ckpt = args.require("checkpoint"), input = args.require("input"), out = args.require("output");
  app::require_npy_name(out, "output");
  const Precision precision = parse_precision(args.get("precision", "f32"));
  require_precision_supported(precision);
  auto model = beats::load_beats(ckpt);
  const int64_t L = model->cfg.encoder_layers;
  const int64_t layer = args.get_int("layer", -1);
  SONAR_CHECK(!args.has("layer") || (layer >= 0 && layer <= L), "--layer must be in 0..", L, " for this model, got ",
              layer);
  app::WaveInput in = app::read_wave_input(input, args.get("padding-mask"));

  beats::FeatureOptions opts;
  opts.padding = args.has("exact-padding") ? beats::PaddingMode::Exact : beats::PaddingMode::Official;
  if (layer == 0) {
    opts.layer_results = true;
    opts.num_layers = 1;
  } else if (layer > 0) {
    opts.num_layers = layer;
  }
  model->eval();
  ag::NoGradGuard no_grad;
  PrecisionGuard precision_scope(precision);
  Bf16WeightCache bf16_weights(beats::parameter_values(*model));  // converted once for every chunk (bf16 only)
  std::vector<Tensor> feats, masks;
  const int64_t clips = in.wave.size(0);
  app::for_each_chunk(clips, app::kClipsPerChunk, [&](int64_t first, int64_t n) {
    Tensor mask = in.mask_rows(first, n);
    beats::Features f = model->extract_features(in.wave.narrow(0, first, n), mask, opts);
    feats.push_back(layer == 0 ? f.layer_results[0].value() : f.x.value());
    if (mask.defined()) masks.push_back(f.padding_mask.to(DType::UInt8));
  });
  Tensor result = cat(feats, 0);
  save_npy(out, result);
  std::printf("%s -> %s: %s float32 (%s%s)\n", input.c_str(), out.c_str(), shape_str(result.shape()).c_str(),
              layer < 0 ? "final features" : layer == 0 ? "encoder input" : ("block " + std::to_string(layer)).c_str(),
              args.has("exact-padding") ? ", exact padding" : "");
  if (!masks.empty()) {
    const std::string mpath = app::mask_path_for(out);
    Tensor m = cat(masks, 0);
    save_npy(mpath, m);
    std::printf("patch padding mask -> %s: %s uint8\n", mpath.c_str(), shape_str(m.shape()).c_str());
  }
  return 0;
}

}  // namespace

SONAR_COMMAND("features", "BEATs features (or one layer's output) of audio", kUsage, run_features);
