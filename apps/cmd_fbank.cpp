// `sonar fbank`: one audio file or .npy waveform array -> a .npy of Kaldi fbank features (BEATs' front end).
// Thin: flag parsing and file handling only; the work is audio/decode and audio/fbank.
#include <cstdio>
#include <string>

#include "apps/beats_common.h"
#include "apps/command.h"
#include "audio/decode.h"
#include "audio/fbank.h"
#include "tensor/error.h"
#include "tensor/io.h"

namespace {

const char* kUsage = R"(usage: sonar fbank --input IN --output OUT.npy [--normalize] [--mean M] [--std S] [--threads N]

Computes the 128-bin Kaldi fbank that BEATs uses (torchaudio.compliance.kaldi.fbank of the waveform times 2^15:
25 ms frames every 10 ms, povey window, pre-emphasis 0.97, DC removal, 512-point FFT, mel filters from 20 Hz
to 8 kHz, log floored at the float epsilon) and saves it as float32 .npy.

  --input IN      an audio file (WAV, FLAC, OGG/Vorbis/Opus, MP3, AIFF, ... any rate or channel count; it is
                  mixed to mono and resampled to 16 kHz), or a float32 .npy of 16 kHz samples, shape
                  [samples] or [clips, samples]
  --output OUT    the .npy to write: [frames, 128] for one clip, [clips, frames, 128] for a [clips, samples]
                  array (every clip's fbank is computed on its whole row, as BEATs does for a padded batch).
                  frames = 1 + (samples - 400) / 160; a clip shorter than 400 samples (25 ms) is an error.
                  Written atomically: on any error no file is left behind.
  --normalize     apply BEATs' normalisation (fbank - mean) / (2 * std)
  --mean M        normalisation mean (default 15.41663, BEATs' AudioSet value); implies --normalize
  --std S         normalisation std (default 6.55582); implies --normalize. `sonar fbank-stats` computes
                  both for your own data.
  --threads N     OpenMP threads (default: all); results do not depend on it
  --help          this text
)";

int run_fbank(int argc, char** argv) {
  using namespace sonar;
  app::Args args(argc, argv, {"input", "output", "mean", "std", "threads"}, {"normalize"});
  if (args.help()) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  SONAR_CHECK(args.positional().empty(), "unexpected argument '", args.positional().front(), "' (see --help)");
  const std::string in = args.require("input");
  const std::string out = args.require("output");
  app::require_npy_name(out, "output");
  const bool normalize = args.has("normalize") || args.has("mean") || args.has("std");
  const double mean = args.get_double("mean", audio::kBeatsFbankMean);
  const double std_dev = args.get_double("std", audio::kBeatsFbankStd);
  SONAR_CHECK(std_dev > 0, "--std must be positive, got ", std_dev);
  audio::FbankOptions opts;
  opts.num_threads = static_cast<int>(args.get_int("threads", 0));
  SONAR_CHECK(opts.num_threads >= 0, "--threads must be >= 0");

  Tensor features;
  const int64_t frame = opts.window_size();
  if (audio::has_npy_extension(in)) {
    Tensor wave = audio::load_wave_npy(in);
    SONAR_CHECK(wave.size(-1) >= frame, in, ": clips of ", wave.size(-1), " samples are shorter than one ", frame,
                "-sample frame (25 ms at 16 kHz)");
    features = wave.dim() == 1 ? audio::fbank(wave, opts) : audio::fbank_batch(wave, opts);
  } else {
    Tensor wave = audio::load_audio(in);
    SONAR_CHECK(wave.numel() >= frame, in, ": ", wave.numel(), " samples at 16 kHz are shorter than one ", frame,
                "-sample frame (25 ms)");
    features = audio::fbank(wave, opts);
  }
  if (normalize) audio::normalize_fbank_(features, mean, std_dev);
  save_npy(out, features);
  std::printf("%s -> %s: %s%s\n", in.c_str(), out.c_str(), shape_str(features.shape()).c_str(),
              normalize ? " (normalised)" : "");
  return 0;
}

}  // namespace

SONAR_COMMAND("fbank", "Kaldi fbank features of an audio file or .npy waveforms", kUsage, run_fbank);
