// Synthetic labelled audio corpus: four small domains whose classes differ by a known acoustic structure
// (harmonic tones and chords, frequency-modulated chirps and trills, filtered noise textures, amplitude-
// modulated formant sounds), plus a multi-label "prior" pool of mixtures. It needs no downloads and builds in
// seconds, so tests and the built-in demo can run anywhere. Output: 16 kHz mono WAV files and one CSV manifest
// per task (header `path,label,split,group,source,license`, the format docs/corpus.md describes and the
// Debian benchmark builder also writes).
//
// What this is not: a stand-in for real recordings when judging a model. The sounds are designed to be
// separable; numbers measured on them say that the pipeline works, not how well a model hears.
//
// Randomness: every clip is a pure function of (corpus seed, domain, class, group, clip index). Seeds are
// derived with splitmix64 and numbers drawn from a private splitmix64 stream (not std:: distributions, whose
// output differs between standard libraries), so a seed gives the same samples with any compiler and library.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace sonar::audio {

// One synthetic domain: its task (manifest) name, the structure that defines it and its classes.
struct SynthDomain {
  std::string name;       // "music", "birds", "noise", "speech"; the manifest is <name>.csv
  std::string structure;  // one sentence for the datasheet and `--help`
  std::vector<std::string> classes;
};

// The four domains, in a fixed order.
const std::vector<SynthDomain>& synth_domains();

// One rendered clip and the parameters that were drawn for it (named, for tests and for debugging, e.g.
// "f0" of a tone, "f_lo"/"f_hi" of a chirp, "cutoff" of a noise texture).
struct SynthClip {
  std::vector<float> samples;  // mono, peak-normalised to a random level in [0.3, 0.9]
  std::map<std::string, double> params;
};

// Renders one clip of `cls` in `domain`. `source_seed` fixes what the clips of one group share (a "voice",
// an "instrument", a "species": register, timbre, rate); `clip_seed` varies the rest (exact pitch, timing,
// phases, noise). Throws sonar::Error for an unknown domain or class, seconds outside (0, 60] or a sample rate
// outside [8000, 96000].
SynthClip synth_render(const std::string& domain, const std::string& cls, uint64_t source_seed, uint64_t clip_seed,
                       double seconds, int sample_rate = 16000);

struct SynthCorpusOptions {
  int64_t clips_per_class = 20;  // >= 3 so that train, val and test each get a group
  int64_t clips_per_group = 2;   // clips that share one source (the leakage unit); capped so a class has >= 3 groups
  int64_t prior_clips = -1;      // size of the prior pool; -1 means 4 x clips_per_class
  double seconds = 2.0;          // clip length
  uint64_t seed = 0;
  int sample_rate = 16000;
  bool float_wav = false;  // 32-bit float WAV instead of 16-bit PCM
  bool force = false;      // rebuild even when the stamp says the same corpus is already there
};

// counts[manifest file name][label][split] = number of clips.
using SynthCounts = std::map<std::string, std::map<std::string, std::map<std::string, int64_t>>>;

struct SynthCorpusResult {
  std::vector<std::string> manifests;  // paths of the task manifests, then prior.csv, prior_fine.csv, tasks.csv
  SynthCounts counts;
  int64_t clips_written = 0;  // 0 when up to date
  bool up_to_date = false;    // the stamp matched and every listed file existed, so nothing was written
};

// Builds the corpus into `out_dir` (created if needed): <domain>/<class>/*.wav, prior/*.wav, one manifest per
// domain, prior.csv (multi-label: ';'-joined domain names of the mixed sources), prior_fine.csv (the same clips
// labelled with the classes of their sources, "domain:class", 16 labels: the fine prior task that forgetting is
// measured on, as AudioSet's 527 classes are) and tasks.csv (task, manifest, type, splits). Splits are train/val/test assigned per class by group, so no source is on two sides.
// Every file is written to a temporary name and renamed. A stamp file records the options; a second call with
// the same options finds it and writes nothing, a changed option or a missing file rebuilds. `progress`, when
// given, receives one line per finished domain.
SynthCorpusResult build_synth_corpus(const std::string& out_dir, const SynthCorpusOptions& options,
                                     const std::function<void(const std::string&)>& progress = {});

// Writes mono samples as a WAV file (16-bit PCM or 32-bit float) through a temporary name and a rename.
// Throws sonar::Error naming the path when the file cannot be written.
void synth_write_wav(const std::string& path, const std::vector<float>& samples, int sample_rate, bool float_wav);

// A CSV field, quoted (with doubled quotes) when it contains a comma, a quote or a line break.
std::string synth_csv_field(const std::string& field);

}  // namespace sonar::audio
