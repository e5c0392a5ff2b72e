// Tests of tensor file I/O: .npy (numpy-written fixtures, hand-made headers, round trips), .npz, safetensors
// and the atomic writer. Not tested here: PyTorch .pt checkpoints (tests/nn/test_torch_checkpoint.cpp).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <unistd.h>

#include "tensor/io.h"

using namespace sonar;
namespace fs = std::filesystem;

static const std::string kFix = std::string(SONAR_FIXTURES_DIR) + "/beats_tiny/";

TEST(NpyFixtures, WaveIsFloat32TwoClips) {
  Tensor w = load_npy(kFix + "wave.npy");
  EXPECT_EQ(w.dtype(), DType::Float32);
  EXPECT_EQ(w.shape(), (Shape{2, 16000}));
}
