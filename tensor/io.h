// Tensor files: .npy (float32, int64, uint8, bool; the layout numpy writes, C or Fortran order on read),
// .npz archives (read), and safetensors (read/write, with the string metadata map). Writers go through a
// temporary file and rename, so a failed write never leaves a half-written file.
// float64 data ('<f8' in .npy/.npz, "F64" in safetensors) is accepted on read and rounded to float32;
// load_npy_f64 reads a float64 .npy exactly. Other dtypes and big-endian data are errors.
// Hostile files: a size a file claims is checked against the file's real size before anything is allocated
// from it (a .npy shape against its data bytes, a safetensors header length against the cap of 100 MB and
// the file size before the file is read, .npz entries through tensor/zip_reader.h); the *_bytes forms
// parse bytes already in memory (`name` labels them in messages). See docs/reliability.md.
// Not here: PyTorch .pt checkpoints (nn/torch_checkpoint.h).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace sonar {

Tensor load_npy(const std::string& path);
Tensor load_npy_bytes(const std::string& bytes, const std::string& name);
void save_npy(const std::string& path, const Tensor& t);  // any strides; written C-order, format 1.0 (2.0 for huge headers)

// A float64 .npy read without rounding (e.g. the fbank64_*.npy references): values in row-major order.
struct NpyF64 {
  Shape shape;
  std::vector<double> values;
};
NpyF64 load_npy_f64(const std::string& path);  // throws unless the file holds '<f8' data
// Every array in a .npz (zip of .npy files, stored or deflated), keyed by name without ".npy".
std::map<std::string, Tensor> load_npz(const std::string& path);
std::map<std::string, Tensor> load_npz_bytes(const std::string& bytes, const std::string& name);

struct SafeTensorsFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;  // the "__metadata__" entry
};
SafeTensorsFile load_safetensors(const std::string& path);
SafeTensorsFile load_safetensors_bytes(const std::string& bytes, const std::string& name);
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});
// The bytes save_safetensors writes (tensors sorted by name, header padded with spaces to 8 bytes).
std::string safetensors_bytes(const std::map<std::string, Tensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Writes `bytes` to `path` via a temporary file in the same folder and an atomic rename.
void write_file_atomic(const std::string& path, const std::string& bytes);
std::string read_file(const std::string& path);

}  // namespace sonar
