// PyTorch .pt reader: opens the zip (libzip), finds <prefix>/data.pkl whatever the prefix folder is called,
// and unpickles it with hooks that know torch's tensor-rebuild functions and storage classes. Storages
// are read once per key and shared by every tensor that views them. Not here: the generic pickle machine
// (nn/pickle.cpp), writing checkpoints, the legacy (pre-1.6) and TorchScript formats.
#include "nn/torch_checkpoint.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <new>
#include <unordered_map>

#include "tensor/zip_reader.h"

namespace sonar {

namespace {

// One storage element type as torch pickles it, and what it becomes here.
struct StorageType {
  const char* name;  // class name in module torch
  size_t file_elem;  // bytes per element in the file
  DType dtype;       // dtype of the tensors built on it
};

constexpr StorageType kStorageTypes[] = {
    {"FloatStorage", 4, DType::Float32},    {"DoubleStorage", 8, DType::Float32},
    {"HalfStorage", 2, DType::Float32},     {"BFloat16Storage", 2, DType::Float32},
    {"LongStorage", 8, DType::Int64},       {"IntStorage", 4, DType::Int64},
    {"ByteStorage", 1, DType::UInt8},       {"BoolStorage", 1, DType::Bool},
};

const StorageType* find_storage_type(const std::string& module, const std::string& name) {
  if (module != "torch") return nullptr;
  for (const auto& t : kStorageTypes)
    if (name == t.name) return &t;
  return nullptr;
}

// What persistent_load hands back: a storage with its element count and dtype.
struct TorchStorage {
  std::shared_ptr<Storage> storage;
  DType dtype;
  int64_t numel;
  std::string key;
};

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      exp = 127 - 15 + 1;
      while ((mant & 0x400) == 0) { mant <<= 1; --exp; }
      mant &= 0x3ff;
      bits = sign | (exp << 23) | (mant << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf or nan
  } else {
    bits = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Builds the storage for `type` from the record bytes, converting to the dtype kept here.
std::shared_ptr<Storage> make_storage(const StorageType& type, const std::string& bytes, int64_t numel,
                                      const std::string& what) {
  auto st = std::make_shared<Storage>(static_cast<size_t>(numel) * dtype_size(type.dtype));
  const char* src = bytes.data();
  const std::string name = type.name;
  if (name == "FloatStorage" || name == "LongStorage" || name == "ByteStorage" || name == "BoolStorage") {
    if (numel > 0) std::memcpy(st->data(), src, bytes.size());
    if (name == "BoolStorage") {
      const uint8_t* b = static_cast<const uint8_t*>(st->data());
      for (int64_t i = 0; i < numel; ++i)
        SONAR_CHECK(b[i] <= 1, what, ": bool storage holds byte value ", int(b[i]), " at element ", i);
    }
  } else if (name == "DoubleStorage") {
    float* dst = static_cast<float*>(st->data());
    for (int64_t i = 0; i < numel; ++i) {
      double v;
      std::memcpy(&v, src + 8 * i, 8);
      dst[i] = static_cast<float>(v);
    }
  } else if (name == "HalfStorage" || name == "BFloat16Storage") {
    float* dst = static_cast<float*>(st->data());
    const bool bf16 = name == "BFloat16Storage";
    for (int64_t i = 0; i < numel; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      if (bf16) {
        const uint32_t bits = static_cast<uint32_t>(h) << 16;
        std::memcpy(&dst[i], &bits, 4);
      } else {
        dst[i] = half_to_float(h);
      }
    }
  } else if (name == "IntStorage") {
    int64_t* dst = static_cast<int64_t*>(st->data());
    for (int64_t i = 0; i < numel; ++i) {
      int32_t v;
      std::memcpy(&v, src + 4 * i, 4);
      dst[i] = v;
    }
  } else {
    SONAR_FAIL(what, ": no conversion for torch.", name);
  }
  return st;
}

Shape int_tuple(const PyValue& v, const char* what) {
  SONAR_CHECK(v.is_tuple() || v.is_list(), what, ": expected a tuple of ints, got ", v.type_name());
  Shape out;
  for (const PyValue& e : v.elements()) out.push_back(e.as_int());
  return out;
}

// torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[,
// metadata]): a view onto the storage.
PyValue rebuild_tensor(const PyValue& args) {
  SONAR_CHECK(args.size() == 6 || args.size() == 7, "_rebuild_tensor_v2: expected 6 or 7 arguments, got ",
              args.size(), ": ", args.repr());
  const PyValue sv = args.at(size_t{0}).with_path("_rebuild_tensor_v2 storage");
  SONAR_CHECK(sv.is_object() && sv.object_type() == "storage", "_rebuild_tensor_v2: first argument is a ",
              sv.type_name(), ", not a storage");
  const auto& ts = *std::static_pointer_cast<TorchStorage>(sv.object_payload());
  const int64_t offset = args.at(size_t{1}).with_path("_rebuild_tensor_v2 storage_offset").as_int();
  const Shape size = int_tuple(args.at(size_t{2}).with_path("_rebuild_tensor_v2 size"), "_rebuild_tensor_v2 size");
  const Shape stride =
      int_tuple(args.at(size_t{3}).with_path("_rebuild_tensor_v2 stride"), "_rebuild_tensor_v2 stride");
  const std::string where = "_rebuild_tensor_v2 (storage '" + ts.key + "' of " + std::to_string(ts.numel) +
                            " elements, offset " + std::to_string(offset) + ", size " + shape_str(size) +
                            ", stride " + shape_str(stride) + ")";
  SONAR_CHECK(size.size() == stride.size(), where, ": size and stride differ in rank");
  SONAR_CHECK(size.size() <= static_cast<size_t>(kMaxDims), where, ": more than ", kMaxDims, " dims");
  SONAR_CHECK(offset >= 0, where, ": negative storage offset");
  bool empty = false;
  int64_t nonzero = 1;  // product of the non-zero sizes: row-major strides of a copy must fit in int64
  for (size_t d = 0; d < size.size(); ++d) {
    SONAR_CHECK(size[d] >= 0 && stride[d] >= 0, where, ": negative size or stride");
    if (size[d] == 0) {
      empty = true;
      continue;
    }
    SONAR_CHECK(nonzero <= INT64_MAX / size[d], where, ": the sizes multiply past 2^63");
    nonzero *= size[d];
  }
  if (empty) {
    SONAR_CHECK(offset <= ts.numel, where, ": offset past the storage's end");
  } else {
    // `last` (the largest element index the view touches) stays below ts.numel at every step, so it cannot
    // overflow int64 whatever sizes and strides the file claims.
    SONAR_CHECK(offset < ts.numel, where, ": offset past the storage's end");
    int64_t last = offset;
    for (size_t d = 0; d < size.size(); ++d) {
      const int64_t span = size[d] - 1;
      SONAR_CHECK(stride[d] == 0 || span <= (ts.numel - 1 - last) / stride[d], where,
                  ": the view reaches past the storage's end");
      last += span * stride[d];
    }
  }
  return PyValue::tensor(Tensor(ts.storage, size, stride, offset, ts.dtype));
}

class TorchUnpickler {
 public:
  TorchUnpickler(const RecordReader& read_record, const std::string& source)
      : read_record_(read_record), source_(source) {
    hooks_.allow_global = [](const std::string& module, const std::string& name) {
      if (module == "torch._utils")
        return name == "_rebuild_tensor_v2" || name == "_rebuild_parameter" || name == "_rebuild_parameter_with_state";
      if (module == "collections") return name == "OrderedDict";
      return find_storage_type(module, name) != nullptr;
    };
    hooks_.call = [](const PyValue& callable, const PyValue& args) { return call(callable, args); };
    hooks_.persistent_load = [this](const PyValue& pid) { return persistent_load(pid); };
  }

  PyValue run(const std::string& pickle) { return unpickle(pickle, hooks_, source_); }

 private:
  static PyValue call(const PyValue& callable, const PyValue& args) {
    const std::string& f = callable.global_name();
    if (f == "collections.OrderedDict") {
      PyValue d = PyValue::dict();
      if (args.size() == 0) return d;
      SONAR_CHECK(args.size() == 1, "OrderedDict: expected at most one argument, got ", args.repr());
      for (const PyValue& kv : args.at(size_t{0}).with_path("OrderedDict argument").elements()) {
        SONAR_CHECK((kv.is_tuple() || kv.is_list()) && kv.size() == 2, "OrderedDict: expected (key, value) pairs, got ",
                    kv.repr());
        d.set_item(kv.at(size_t{0}), kv.at(size_t{1}));
      }
      return d;
    }
    if (f == "torch._utils._rebuild_tensor_v2") return rebuild_tensor(args);
    if (f == "torch._utils._rebuild_parameter" || f == "torch._utils._rebuild_parameter_with_state") {
      // (data, requires_grad, backward_hooks[, state]): a Parameter is its data here.
      SONAR_CHECK(args.size() >= 3, f, ": expected at least 3 arguments, got ", args.repr());
      const PyValue data = args.at(size_t{0}).with_path(f + " data");
      data.as_tensor();
      return data.with_path("");
    }
    SONAR_FAIL("cannot call '", f, "'");
  }

  // ('storage', torch.<T>Storage, key, location, numel)
  PyValue persistent_load(const PyValue& pid) {
    SONAR_CHECK(pid.is_tuple() && pid.size() == 5, "persistent id: expected ('storage', type, key, location, numel), got ",
                pid.repr());
    const PyValue p = pid.with_path("persistent id");
    SONAR_CHECK(p.at(size_t{0}).as_string() == "storage", "persistent id: unknown kind ", p.at(size_t{0}).repr());
    const std::string type_name = p.at(size_t{1}).global_name();
    const size_t dot = type_name.rfind('.');
    const StorageType* type = find_storage_type(type_name.substr(0, dot), type_name.substr(dot + 1));
    SONAR_CHECK(type != nullptr, "persistent id: unsupported storage type '", type_name, "'");
    const std::string key = p.at(size_t{2}).as_string();
    const int64_t numel = p.at(size_t{4}).as_int();
    SONAR_CHECK(numel >= 0, "persistent id: storage '", key, "' has negative size ", numel);
    // Both the record (file_elem bytes per element) and the storage kept here (dtype_size) must be countable.
    SONAR_CHECK(static_cast<uint64_t>(numel) <= kMaxStorageBytes / std::max(type->file_elem, dtype_size(type->dtype)),
                "persistent id: storage '", key, "' claims ", numel, " elements of torch.", type->name,
                ", more than the ", kMaxStorageBytes, " bytes a storage may hold (kMaxStorageBytes)");
    auto it = storages_.find(key);
    if (it != storages_.end()) {
      SONAR_CHECK(it->second.type == type && it->second.payload->numel == numel, "storage '", key,
                  "' is referenced as both ", it->second.type->name, " of ", it->second.payload->numel,
                  " and ", type->name, " of ", numel, " elements");
      return PyValue::object("storage", it->second.payload);
    }
    const uint64_t need = static_cast<uint64_t>(numel) * type->file_elem;
    const std::string bytes = read_record_(key, need);
    SONAR_CHECK(bytes.size() == need, "storage '", key, "' (torch.", type->name, " of ", numel, " elements) needs ",
                need, " bytes, the record has ", bytes.size());
    auto payload = std::make_shared<TorchStorage>();
    payload->storage = make_storage(*type, bytes, numel, "storage '" + key + "'");
    payload->dtype = type->dtype;
    payload->numel = numel;
    payload->key = key;
    storages_[key] = {type, payload};
    return PyValue::object("storage", payload);
  }

  struct Cached {
    const StorageType* type;
    std::shared_ptr<TorchStorage> payload;
  };
  const RecordReader& read_record_;
  const std::string& source_;
  UnpickleHooks hooks_;
  std::unordered_map<std::string, Cached> storages_;
};

// ------------------------------------------------------------------------------------------------------
// The zip container

// Pickle protocol 2 header followed by torch's legacy magic number (a LONG1 of 10 bytes).
constexpr char kLegacyMagic[] = "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";
constexpr size_t kLegacyMagicLen = sizeof(kLegacyMagic) - 1;

[[noreturn]] void not_a_zip(const std::string& name, const std::string& head, const std::string& zip_msg) {
  if (head.size() >= kLegacyMagicLen && std::memcmp(head.data(), kLegacyMagic, kLegacyMagicLen) == 0)
    SONAR_FAIL("load_torch_checkpoint: '", name,
               "' uses the legacy (pre-1.6) torch.save format, which is not supported; re-save it with a recent "
               "PyTorch");
  SONAR_FAIL("load_torch_checkpoint: '", name, "' is not a PyTorch zip checkpoint (", zip_msg,
             "; truncated, or another format?)");
}

PyValue load_from_archive(const ZipReader& za, const std::string& name) {
  // The records live under one top-level folder whose name varies ("archive", the file's stem, ...).
  std::string prefix;
  int found = 0;
  const int64_t n = za.num_entries();
  for (int64_t i = 0; i < n; ++i) {
    const std::string e = za.entry_name(i);
    const size_t slash = e.find('/');
    if (slash != std::string::npos && e.compare(slash, std::string::npos, "/data.pkl") == 0) {
      prefix = e.substr(0, slash + 1);
      ++found;
    }
  }
  SONAR_CHECK(found == 1, "load_torch_checkpoint: '", name, "' holds ", found,
              " '<folder>/data.pkl' entries, expected exactly one", found == 0 ? " (a TorchScript or foreign zip?)" : "");
  if (za.locate(prefix + "byteorder") >= 0) {
    const std::string order = za.read(prefix + "byteorder", kMaxByteorderBytes);
    SONAR_CHECK(order == "little", "load_torch_checkpoint: '", name, "' stores its tensors in '", order,
                "' byte order; only little-endian is supported");
  }
  const std::string pickle = za.read(prefix + "data.pkl", kMaxTorchPickleBytes);
  // A record is read only when its declared size is the one its storage needs (ZipReader checks before
  // allocating), so the pickle's claims and the zip's must agree with each other and with the file.
  RecordReader read_record = [&](const std::string& key, uint64_t need) {
    const int64_t idx = za.locate(prefix + "data/" + key);
    SONAR_CHECK(idx >= 0, "load_torch_checkpoint: '", name, "' has no entry '", prefix, "data/", key, "'");
    const uint64_t declared = za.declared_size(idx);
    SONAR_CHECK(declared == need, "load_torch_checkpoint: '", name, "': storage '", key, "' needs ", need,
                " bytes, its record '", prefix, "data/", key, "' declares ", declared);
    return za.read(idx, need);
  };
  return unpickle_torch(pickle, read_record, name + ":" + prefix + "data.pkl");
}

// std::bad_alloc says nothing of the file: name it (a legitimately large checkpoint on a small machine).
template <class F>
PyValue naming_out_of_memory(const std::string& name, F&& load) {
  try {
    return load();
  } catch (const std::bad_alloc&) {
    SONAR_FAIL("load_torch_checkpoint: out of memory while loading '", name, "'");
  }
}

}  // namespace

PyValue unpickle_torch(const std::string& pickle, const RecordReader& read_record, const std::string& source) {
  return TorchUnpickler(read_record, source).run(pickle);
}

PyValue load_torch_checkpoint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SONAR_CHECK(in.good(), "load_torch_checkpoint: cannot open '", path, "': ", std::strerror(errno));
  std::string head(kLegacyMagicLen, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  head.resize(static_cast<size_t>(in.gcount()));
  in.close();
  std::string zip_msg;
  std::unique_ptr<ZipReader> za = ZipReader::open_file(path, "load_torch_checkpoint", &zip_msg);
  if (!za) not_a_zip(path, head, zip_msg);
  return naming_out_of_memory(path, [&] { return load_from_archive(*za, path); });
}

PyValue load_torch_checkpoint_bytes(const std::string& bytes, const std::string& name) {
  std::string zip_msg;
  std::unique_ptr<ZipReader> za = ZipReader::open_memory(bytes, name, "load_torch_checkpoint", &zip_msg);
  if (!za) not_a_zip(name, bytes.substr(0, kLegacyMagicLen), zip_msg);
  return naming_out_of_memory(name, [&] { return load_from_archive(*za, name); });
}

std::vector<std::pair<std::string, Tensor>> state_dict_items(const PyValue& v) {
  SONAR_CHECK(v.is_dict(), v.path().empty() ? "(root)" : v.path(), ": expected a dict holding a state dict, got ",
              v.type_name());
  auto all_tensors = [](const PyValue& d) {
    for (const auto& it : d.items())
      if (!it.value.is_tensor()) return false;
    return true;
  };
  PyValue sd = v;
  if (!all_tensors(v)) {
    bool found = false;
    for (const char* k : {"model", "state_dict", "module"}) {
      if (v.contains(k)) {
        sd = v.at(k);
        found = true;
        break;
      }
    }
    if (!found) {
      std::string keys;
      for (const auto& it : v.items()) keys += (keys.empty() ? "" : ", ") + it.key.repr();
      SONAR_FAIL(v.path().empty() ? "(root)" : v.path(),
                 ": not a state dict (a value is not a tensor) and no 'model', 'state_dict' or 'module' key; keys: ",
                 keys);
    }
    SONAR_CHECK(sd.is_dict(), sd.path(), ": expected a dict of tensors, got ", sd.type_name());
  }
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& it : sd.items())
    out.emplace_back(it.key.with_path(sd.path() + " key").as_string(), it.value.as_tensor());
  return out;
}

std::map<std::string, Tensor> state_dict_from(const PyValue& v) {
  std::map<std::string, Tensor> out;
  for (auto& [k, t] : state_dict_items(v)) out.emplace(k, t);
  return out;
}

}  // namespace sonar
