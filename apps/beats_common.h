// Shared pieces of the BEATs commands (info, features, tokenize, classify, convert): reading the input
// waveforms and padding mask from the command line's files, output naming, and running a model over clips in
// chunks. Apps only: the libraries never read files given on a command line.
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "tensor/tensor.h"

namespace sonar::app {

// Waveforms [clips, samples] at 16 kHz and an optional uint8 padding mask of the same shape (1 = padding).
struct WaveInput {
  Tensor wave;
  Tensor padding_mask;  // undefined without --padding-mask

  // Rows [first, first + n) of the mask, or an undefined tensor when there is no mask.
  Tensor mask_rows(int64_t first, int64_t n) const {
    return padding_mask.defined() ? padding_mask.narrow(0, first, n) : Tensor();
  }
};

// IN is an audio file (decoded, mixed to mono, resampled to 16 kHz: one clip) or a float32 .npy of 16 kHz
// samples, [samples] or [clips, samples]. The mask file must be a uint8 (or bool) .npy of the same shape.
// Throws one-line errors naming the file: missing, unreadable, wrong dtype or shape, samples that are
// clearly not [-1, 1] floats (integer PCM stored as float), clips shorter than one BEATs patch.
WaveInput read_wave_input(const std::string& input, const std::string& mask_path);

// OUT.npy -> OUT.mask.npy (the patch-level mask written next to features).
std::string mask_path_for(const std::string& output);

// Checks that `path` ends in ".npy" (naming the flag in the error). Also used by `sonar fbank`.
void require_npy_name(const std::string& path, const char* flag);

// Runs `f(first_clip, count)` over consecutive chunks of at most `chunk` clips.
void for_each_chunk(int64_t clips, int64_t chunk, const std::function<void(int64_t, int64_t)>& f);

// Number of clips processed at once: bounds memory for long inputs; the results do not depend on it.
constexpr int64_t kClipsPerChunk = 8;

}  // namespace sonar::app
