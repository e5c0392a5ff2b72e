// A Python pickle reader for the subset that PyTorch checkpoints use (protocols 2 to 5, binary opcodes),
// and PyValue, the tree of values it produces. It never runs code: a GLOBAL is only accepted when the
// caller's hooks know it, and REDUCE/NEWOBJ/BUILD/persistent ids are handed to the hooks.
// Not here: the .pt zip container and the torch classes (nn/torch_checkpoint.h).
//
// Pickles come from strangers (model hubs), so the reader bounds what one can make it build (each limit is
// an error naming the source, the opcode and its byte position; docs/reliability.md):
//   - containers nest at most kMaxPickleDepth deep (and MARKs open at most that many at once), so nothing
//     that later walks or frees the tree can overflow the C++ stack;
//   - a container is never modified once it sits inside another one (only a recursive structure needs that,
//     and checkpoints hold none), so the tree is acyclic and the depth recorded at insertion stays exact;
//   - at most kMaxPickleStack values on the stack at once, kMaxPickleMemo memo entries and kMaxPickleValues
//     values pushed in all; strings are shared, not copied, by DUP and memo gets.
// PyTorch checkpoints stay far below every limit (BEATs: depth 6, a few hundred stack entries).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace sonar {

// A Python value: None, bool, int (64-bit), float, str, bytes, list, tuple, dict (str or int keys,
// insertion order kept), a tensor, or the two kinds that only live inside the unpickler and its hooks:
// a class reference ("module.name") and an opaque object the hooks made (e.g. a storage).
// Containers are shared (copying a PyValue copies a handle), like Python references.
// Accessors throw sonar::Error naming the value's path, e.g. "cfg.encoder_layers: expected int, got str".
struct PyItem;
struct PyDictData;
struct PySeqData;

constexpr int kMaxPickleDepth = 1000;           // Python's default recursion limit: torch.save cannot go deeper
// Python's pickler sends at most 1000 items per APPENDS/SETITEMS, so a checkpoint's stack holds about 2000
// values per container being built; 32768 values of ~140 bytes are ~6 MB.
constexpr size_t kMaxPickleStack = size_t{1} << 15;   // values on the stack at once
constexpr size_t kMaxPickleMemo = size_t{1} << 20;    // memo entries
constexpr size_t kMaxPickleValues = size_t{1} << 22;  // values pushed in all (~1 GB of PyValues at most)

class PyValue {
 public:
  enum class Kind { None, Bool, Int, Float, String, Bytes, List, Tuple, Dict, Tensor, Global, Object };
  using Item = PyItem;

  PyValue() = default;  // None
  static PyValue none() { return PyValue(); }
  static PyValue boolean(bool b);
  static PyValue integer(int64_t i);
  static PyValue floating(double f);
  static PyValue string(std::string s);
  static PyValue bytes(std::string b);
  static PyValue list(std::vector<PyValue> items = {});
  static PyValue tuple(std::vector<PyValue> items = {});
  static PyValue dict();
  static PyValue tensor(Tensor t);
  static PyValue global(std::string module, std::string name);  // a class or function reference
  // An object made by a hook; `type` names it in messages ("storage"), `payload` is the hook's data.
  static PyValue object(std::string type, std::shared_ptr<void> payload);

  Kind kind() const { return kind_; }
  const char* type_name() const;  // Python-style: "NoneType", "bool", "int", "float", "str", "dict", ...
  const std::string& path() const { return path_; }  // where this value sits in the tree ("" for the root)
  PyValue with_path(std::string path) const;  // the same value, labelled for error messages

  bool is_none() const { return kind_ == Kind::None; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_int() const { return kind_ == Kind::Int; }
  bool is_float() const { return kind_ == Kind::Float; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_tuple() const { return kind_ == Kind::Tuple; }
  bool is_dict() const { return kind_ == Kind::Dict; }
  bool is_tensor() const { return kind_ == Kind::Tensor; }
  bool is_global() const { return kind_ == Kind::Global; }
  bool is_object() const { return kind_ == Kind::Object; }
  bool is_container() const { return kind_ == Kind::List || kind_ == Kind::Tuple || kind_ == Kind::Dict; }
  // Nesting depth: 0 for a scalar, 1 for an empty container, 1 + the deepest element otherwise.
  int depth() const;

  bool as_bool() const;
  int64_t as_int() const;             // an int (a bool is not accepted)
  double as_float() const;            // a float, or an int converted
  const std::string& as_string() const;  // a str
  const std::string& as_bytes() const;   // bytes
  const Tensor& as_tensor() const;
  const std::string& global_name() const;  // "module.name" of a Global
  const std::string& object_type() const;  // type of an Object
  const std::shared_ptr<void>& object_payload() const;

  // Lists and tuples.
  size_t size() const;  // elements of a list/tuple, items of a dict
  PyValue at(size_t index) const;  // element of a list or tuple (path "x[3]")
  std::vector<PyValue> elements() const;  // all elements of a list or tuple, with paths

  // Dicts (str or int keys). at() throws "cfg: no key 'foo'" when the key is missing.
  bool contains(const std::string& key) const;
  bool contains(int64_t key) const;
  PyValue at(const std::string& key) const;
  PyValue at(int64_t key) const;
  PyValue at(const char* key) const { return at(std::string(key)); }
  std::vector<Item> items() const;  // key/value pairs in insertion order, values with paths
  Item item(size_t index) const;    // the index-th of them
  std::vector<std::string> keys() const;  // string keys in insertion order (throws on an int key)
  const PyValue* attributes() const;  // BUILD state of a dict, or nullptr

  // Mutation (used by the unpickler and by hooks). Each throws if this container already sits inside another
  // one, if `v` is this container itself, or if the result would nest deeper than kMaxPickleDepth.
  void append(PyValue v);                  // list
  void set_item(PyValue key, PyValue value);  // dict: str or int key; replaces an existing key in place
  void set_attributes(PyValue state);      // dict

  // Short human-readable rendering (for messages and debugging), e.g. "{'a': 1, 'b': [2, 3]}".
  std::string repr(size_t max_chars = 200) const;

 private:
  [[noreturn]] void type_error(const char* expected) const;
  const std::vector<PyValue>& seq(const char* op) const;
  const PyDictData& dict_data(const char* op) const;
  std::string child_path(const std::string& key) const;
  const PyValue* find_item(const PyValue& key) const;
  void check_mutable(const char* op) const;
  void adopt(const PyValue& child, const char* op);  // records `child` as an element: depth, nesting, cycles
  static PyValue sequence(Kind kind, std::vector<PyValue> items);

  Kind kind_ = Kind::None;
  bool b_ = false;
  int64_t i_ = 0;
  double f_ = 0.0;
  std::shared_ptr<const std::string> s_;  // str, bytes, global name, object type (shared: copies are cheap)
  std::shared_ptr<PySeqData> seq_;
  std::shared_ptr<PyDictData> dict_;
  std::shared_ptr<const Tensor> tensor_;  // (a pointer keeps PyValue small: the unpickler's stack holds many)
  std::shared_ptr<void> payload_;
  std::string path_;
};

struct PyItem {
  PyValue key, value;
};

struct PySeqData {
  std::vector<PyValue> items;
  int depth = 1;        // see PyValue::depth
  bool nested = false;  // placed inside another container: no longer modifiable
};

struct PyDictData {
  std::vector<PyItem> items;                          // insertion order
  std::unordered_map<std::string, size_t> str_index;  // key -> position in items
  std::unordered_map<int64_t, size_t> int_index;
  std::shared_ptr<PyValue> attributes;  // state set by BUILD (e.g. an OrderedDict's _metadata), or null
  int depth = 1;
  bool nested = false;
};

// What the unpickler asks its caller. Each hook may be empty, in which case the construct is an error.
struct UnpickleHooks {
  // GLOBAL / STACK_GLOBAL: return true if "module.name" may be referenced.
  std::function<bool(const std::string& module, const std::string& name)> allow_global;
  // REDUCE (callable(*args)) and NEWOBJ (cls.__new__(cls, *args)): `callable` is a Global.
  std::function<PyValue(const PyValue& callable, const PyValue& args)> call;
  // BUILD on a value that is not a dict (a dict takes the state as its attributes).
  std::function<void(PyValue& target, const PyValue& state)> build;
  // BINPERSID: the persistent id (for torch, a tuple ('storage', type, key, location, numel)).
  std::function<PyValue(const PyValue& pid)> persistent_load;
};

// Unpickles `data`. `source` names the data in error messages (e.g. "beats.pt:archive/data.pkl").
// Errors name the opcode (hex and name) and its byte position.
PyValue unpickle(const std::string& data, const UnpickleHooks& hooks, const std::string& source);

// Name of a pickle opcode, e.g. "BINPUT" for 0x71, or "unknown".
const char* pickle_opcode_name(uint8_t op);

}  // namespace sonar
