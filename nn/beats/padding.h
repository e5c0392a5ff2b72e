// Padding masks for BEATs: from sample level to frame level to patch level, in two modes.
//
// Official (the default, for parity): BEATs' forward_padding_mask. A mask [B, N] is trimmed to a multiple of
// the target length L (the last N % L entries dropped), viewed as [B, L, N / L] and reduced with `all`. It is
// applied twice, samples -> fbank frames and then frames -> patches, the second time as if the patch index
// were a time axis even though patches are time-major over (time, frequency). For a padded clip the patch
// mask therefore marks the wrong patches (too few, and not aligned to its last full time patch).
//
// Exact: each clip's true length decides. A clip with n real samples has fbank_num_frames(n) real frames and
// frames / patch_size real time patches; every patch of a later time patch (all its frequency patches) is
// padding. A clip then gives the same features alone as zero-padded in a batch.
//
// Not here: applying masks (the encoder and the heads do).
#pragma once
#include <cstdint>
#include <vector>

#include "tensor/tensor.h"

namespace sonar::beats {

enum class PaddingMode { Official, Exact };

// forward_padding_mask of the official code: mask [B, N] bool/uint8 (nonzero = padding) -> bool [B, L].
// Throws when N < L (there is nothing to reduce).
Tensor official_downsample_mask(const Tensor& mask, int64_t target_len);

// Real length of each row of a padding mask [B, N] whose padding is trailing (0...0 1...1). Throws naming the
// row and position when a row has a real sample after padding.
std::vector<int64_t> lengths_from_mask(const Tensor& mask);

// Exact patch-level mask bool [B, time_patches * freq_patches] (patch index = time * freq_patches + freq)
// from each clip's real frame count.
Tensor exact_patch_mask(const std::vector<int64_t>& real_frames, int64_t time_patches, int64_t freq_patches,
                        int64_t patch_size);

}  // namespace sonar::beats
