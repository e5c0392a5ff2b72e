// Reader for official PyTorch checkpoint files (torch.save's zip format, PyTorch >= 1.6): the zip
// container (<prefix>/data.pkl, <prefix>/data/<key>, <prefix>/byteorder) and the pickle inside, turned into
// a PyValue tree whose tensors are views (offset, sizes, strides) onto shared storages.
// Accepted classes: torch._utils._rebuild_tensor_v2, _rebuild_parameter, _rebuild_parameter_with_state,
// collections.OrderedDict, and the storages Float/Long/Byte/Bool (kept as float32/int64/uint8/bool),
// Double/Half/BFloat16 (converted to float32) and Int (converted to int64). Anything else is an error that
// names the class or the opcode.
// Hostile files: nothing is allocated from a size the file claims before it is checked. data.pkl is at most
// kMaxTorchPickleBytes and unpickled within the limits of nn/pickle.h; a storage record is read only when
// its declared size equals numel x element size from the pickle, and that size is possible for the
// record's compressed bytes (tensor/zip_reader.h). docs/reliability.md has the threat model.
// Not here: writing .pt files (checkpoints this project writes are
// safetensors), the legacy pre-1.6 format, TorchScript archives.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "nn/pickle.h"
#include "tensor/tensor.h"

namespace sonar {

constexpr uint64_t kMaxTorchPickleBytes = uint64_t{64} << 20;  // data.pkl (BEATs-base: 30 kB)
constexpr uint64_t kMaxByteorderBytes = 16;                     // the "byteorder" record ("little")
constexpr uint64_t kMaxStorageBytes = uint64_t{1} << 40;        // one storage, in the file and in memory (1 TiB)

// The whole object that torch.save wrote, e.g. {"cfg": dict, "model": state_dict}.
PyValue load_torch_checkpoint(const std::string& path);

// The same for a checkpoint held in memory; `name` labels it in error messages.
PyValue load_torch_checkpoint_bytes(const std::string& bytes, const std::string& name);

// Returns the bytes of storage `key` (data/<key> in the zip), which must be `need` bytes long; it may refuse
// (throw) before reading when the record declares another size.
using RecordReader = std::function<std::string(const std::string& key, uint64_t need)>;

// Unpickles a torch data.pkl, reading storages through `read_record`. `source` labels the data in errors.
PyValue unpickle_torch(const std::string& pickle, const RecordReader& read_record, const std::string& source);

// The state dict in a checkpoint: `v` itself when it is a dict of tensors, otherwise v["model"],
// v["state_dict"] or v["module"] (the first present), which must then be a dict of tensors.
// Throws naming the offending key when a value is not a tensor.
std::map<std::string, Tensor> state_dict_from(const PyValue& v);
// The same in the file's order.
std::vector<std::pair<std::string, Tensor>> state_dict_items(const PyValue& v);

}  // namespace sonar
