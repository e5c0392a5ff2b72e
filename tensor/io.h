// Tensor files: .npy (float32, int64, uint8, bool; the layout numpy writes, C or Fortran order on read),
// .npz archives (read), and safetensors (read/write, with the string metadata map). Writers go through a
// temporary file and rename, so a failed write never leaves a half-written file.
#pragma once
#include <map>
#include <string>

#include "tensor/tensor.h"

namespace sonar {

Tensor load_npy(const std::string& path);
void save_npy(const std::string& path, const Tensor& t);
// Every array in a .npz (zip of .npy files, stored or deflated), keyed by name without ".npy".
std::map<std::string, Tensor> load_npz(const std::string& path);

struct SafeTensorsFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;  // the "__metadata__" entry
};
SafeTensorsFile load_safetensors(const std::string& path);
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Writes `bytes` to `path` via a temporary file in the same folder and an atomic rename.
void write_file_atomic(const std::string& path, const std::string& bytes);
std::string read_file(const std::string& path);

}  // namespace sonar
