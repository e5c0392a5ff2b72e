// PyValue and the pickle reader (binary opcodes of protocols 2 to 5 plus the few text ones that carry
// plain data). It executes nothing: class references, calls, BUILD and persistent ids go to the caller's
// hooks. Not here: anything torch-specific (nn/torch_checkpoint.cpp).
#include "nn/pickle.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace sonar {

// ------------------------------------------------------------------------------------------------------
// PyValue

PyValue PyValue::boolean(bool b) {
  PyValue v;
  v.kind_ = Kind::Bool;
  v.b_ = b;
  return v;
}
PyValue PyValue::integer(int64_t i) {
  PyValue v;
  v.kind_ = Kind::Int;
  v.i_ = i;
  return v;
}
PyValue PyValue::floating(double f) {
  PyValue v;
  v.kind_ = Kind::Float;
  v.f_ = f;
  return v;
}
PyValue PyValue::string(std::string s) {
  PyValue v;
  v.kind_ = Kind::String;
  v.s_ = std::make_shared<const std::string>(std::move(s));
  return v;
}
PyValue PyValue::bytes(std::string b) {
  PyValue v;
  v.kind_ = Kind::Bytes;
  v.s_ = std::make_shared<const std::string>(std::move(b));
  return v;
}
PyValue PyValue::sequence(Kind kind, std::vector<PyValue> items) {
  PyValue v;
  v.kind_ = kind;
  v.seq_ = std::make_shared<PySeqData>();
  for (const PyValue& e : items) v.adopt(e, kind == Kind::List ? "list" : "tuple");
  v.seq_->items = std::move(items);
  return v;
}
PyValue PyValue::list(std::vector<PyValue> items) { return sequence(Kind::List, std::move(items)); }
PyValue PyValue::tuple(std::vector<PyValue> items) { return sequence(Kind::Tuple, std::move(items)); }
PyValue PyValue::dict() {
  PyValue v;
  v.kind_ = Kind::Dict;
  v.dict_ = std::make_shared<PyDictData>();
  return v;
}
PyValue PyValue::tensor(Tensor t) {
  PyValue v;
  v.kind_ = Kind::Tensor;
  v.tensor_ = std::make_shared<const Tensor>(std::move(t));
  return v;
}
PyValue PyValue::global(std::string module, std::string name) {
  PyValue v;
  v.kind_ = Kind::Global;
  v.s_ = std::make_shared<const std::string>(module + "." + name);
  return v;
}
PyValue PyValue::object(std::string type, std::shared_ptr<void> payload) {
  PyValue v;
  v.kind_ = Kind::Object;
  v.s_ = std::make_shared<const std::string>(std::move(type));
  v.payload_ = std::move(payload);
  return v;
}

const char* PyValue::type_name() const {
  switch (kind_) {
    case Kind::None: return "NoneType";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::List: return "list";
    case Kind::Tuple: return "tuple";
    case Kind::Dict: return "dict";
    case Kind::Tensor: return "Tensor";
    case Kind::Global: return "class reference";
    case Kind::Object: return s_->c_str();
  }
  return "?";
}

PyValue PyValue::with_path(std::string path) const {
  PyValue v = *this;
  v.path_ = std::move(path);
  return v;
}

void PyValue::type_error(const char* expected) const {
  SONAR_FAIL(path_.empty() ? "(root)" : path_, ": expected ", expected, ", got ", type_name());
}

bool PyValue::as_bool() const {
  if (kind_ != Kind::Bool) type_error("bool");
  return b_;
}
int64_t PyValue::as_int() const {
  if (kind_ != Kind::Int) type_error("int");
  return i_;
}
double PyValue::as_float() const {
  if (kind_ == Kind::Int) return static_cast<double>(i_);
  if (kind_ != Kind::Float) type_error("float");
  return f_;
}
const std::string& PyValue::as_string() const {
  if (kind_ != Kind::String) type_error("str");
  return *s_;
}
const std::string& PyValue::as_bytes() const {
  if (kind_ != Kind::Bytes) type_error("bytes");
  return *s_;
}
const Tensor& PyValue::as_tensor() const {
  if (kind_ != Kind::Tensor) type_error("Tensor");
  return *tensor_;
}
const std::string& PyValue::global_name() const {
  if (kind_ != Kind::Global) type_error("class reference");
  return *s_;
}
const std::string& PyValue::object_type() const {
  if (kind_ != Kind::Object) type_error("object");
  return *s_;
}
const std::shared_ptr<void>& PyValue::object_payload() const {
  if (kind_ != Kind::Object) type_error("object");
  return payload_;
}

const std::vector<PyValue>& PyValue::seq(const char* op) const {
  if (kind_ != Kind::List && kind_ != Kind::Tuple) type_error("list or tuple");
  return seq_->items;
}

const PyDictData& PyValue::dict_data(const char* op) const {
  if (kind_ != Kind::Dict) type_error("dict");
  return *dict_;
}

size_t PyValue::size() const {
  if (kind_ == Kind::Dict) return dict_->items.size();
  if (kind_ == Kind::List || kind_ == Kind::Tuple) return seq_->items.size();
  type_error("list, tuple or dict");
}

PyValue PyValue::at(size_t index) const {
  const auto& s = seq("at");
  SONAR_CHECK(index < s.size(), path_.empty() ? "(root)" : path_, ": index ", index, " out of range for a ",
              type_name(), " of ", s.size(), " elements");
  return s[index].with_path(path_ + "[" + std::to_string(index) + "]");
}

std::vector<PyValue> PyValue::elements() const {
  const auto& s = seq("elements");
  std::vector<PyValue> out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) out.push_back(s[i].with_path(path_ + "[" + std::to_string(i) + "]"));
  return out;
}

std::string PyValue::child_path(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

const PyValue* PyValue::find_item(const PyValue& key) const {
  const PyDictData& d = dict_data("find");
  if (key.kind_ == Kind::String) {
    auto it = d.str_index.find(*key.s_);
    return it == d.str_index.end() ? nullptr : &d.items[it->second].value;
  }
  if (key.kind_ == Kind::Int) {
    auto it = d.int_index.find(key.i_);
    return it == d.int_index.end() ? nullptr : &d.items[it->second].value;
  }
  return nullptr;
}

bool PyValue::contains(const std::string& key) const { return find_item(PyValue::string(key)) != nullptr; }
bool PyValue::contains(int64_t key) const { return find_item(PyValue::integer(key)) != nullptr; }

PyValue PyValue::at(const std::string& key) const {
  const PyValue* v = find_item(PyValue::string(key));
  SONAR_CHECK(v != nullptr, path_.empty() ? "(root)" : path_, ": no key '", key, "'");
  return v->with_path(child_path(key));
}

PyValue PyValue::at(int64_t key) const {
  const PyValue* v = find_item(PyValue::integer(key));
  SONAR_CHECK(v != nullptr, path_.empty() ? "(root)" : path_, ": no key ", key);
  return v->with_path(path_ + "[" + std::to_string(key) + "]");
}

std::vector<PyItem> PyValue::items() const {
  const PyDictData& d = dict_data("items");
  std::vector<PyItem> out;
  out.reserve(d.items.size());
  for (const PyItem& it : d.items) {
    const std::string p =
        it.key.kind_ == Kind::String ? child_path(*it.key.s_) : path_ + "[" + std::to_string(it.key.i_) + "]";
    out.push_back({it.key, it.value.with_path(p)});
  }
  return out;
}

PyItem PyValue::item(size_t index) const {
  const PyDictData& d = dict_data("item");
  SONAR_CHECK(index < d.items.size(), path_.empty() ? "(root)" : path_, ": item ", index, " out of range for a dict of ",
              d.items.size(), " items");
  const PyItem& it = d.items[index];
  const std::string p =
      it.key.kind_ == Kind::String ? child_path(*it.key.s_) : path_ + "[" + std::to_string(it.key.i_) + "]";
  return {it.key, it.value.with_path(p)};
}

std::vector<std::string> PyValue::keys() const {
  const PyDictData& d = dict_data("keys");
  std::vector<std::string> out;
  out.reserve(d.items.size());
  for (const PyItem& it : d.items) out.push_back(it.key.with_path(path_ + " (a key)").as_string());
  return out;
}

const PyValue* PyValue::attributes() const { return dict_data("attributes").attributes.get(); }

int PyValue::depth() const {
  if (kind_ == Kind::List || kind_ == Kind::Tuple) return seq_->depth;
  if (kind_ == Kind::Dict) return dict_->depth;
  return 0;
}

void PyValue::check_mutable(const char* op) const {
  const bool nested = kind_ == Kind::Dict ? dict_->nested : seq_->nested;
  SONAR_CHECK(!nested, path_.empty() ? "(root)" : path_, ": ", op, " on a ", type_name(),
              " that already sits inside another container (a recursive structure?), which checkpoints never hold");
}

void PyValue::adopt(const PyValue& child, const char* op) {
  if (!child.is_container()) return;
  const bool self = (child.seq_ && child.seq_ == seq_) || (child.dict_ && child.dict_ == dict_);
  SONAR_CHECK(!self, path_.empty() ? "(root)" : path_, ": ", op, " would put a ", type_name(),
              " inside itself (a recursive structure), which checkpoints never hold");
  const int d = child.depth() + 1;
  SONAR_CHECK(d <= kMaxPickleDepth, path_.empty() ? "(root)" : path_, ": ", op, " nests containers more than ",
              kMaxPickleDepth, " deep (kMaxPickleDepth)");
  if (child.kind_ == Kind::Dict) child.dict_->nested = true;
  else child.seq_->nested = true;
  int& mine = kind_ == Kind::Dict ? dict_->depth : seq_->depth;
  if (d > mine) mine = d;
}

void PyValue::append(PyValue v) {
  if (kind_ != Kind::List) type_error("list");
  check_mutable("append");
  adopt(v, "append");
  seq_->items.push_back(std::move(v));
}

void PyValue::set_item(PyValue key, PyValue value) {
  if (kind_ != Kind::Dict) type_error("dict");
  check_mutable("set item");
  PyDictData& d = *dict_;
  key.path_.clear();
  value.path_.clear();
  if (key.kind_ == Kind::String || key.kind_ == Kind::Int) adopt(value, "set item");
  if (key.kind_ == Kind::String) {
    auto [it, inserted] = d.str_index.emplace(*key.s_, d.items.size());
    if (!inserted) { d.items[it->second].value = std::move(value); return; }
  } else if (key.kind_ == Kind::Int) {
    auto [it, inserted] = d.int_index.emplace(key.i_, d.items.size());
    if (!inserted) { d.items[it->second].value = std::move(value); return; }
  } else {
    SONAR_FAIL(path_.empty() ? "(root)" : path_, ": dict keys must be str or int, got ", key.type_name());
  }
  d.items.push_back({std::move(key), std::move(value)});
}

void PyValue::set_attributes(PyValue state) {
  if (kind_ != Kind::Dict) type_error("dict");
  check_mutable("set attributes");
  adopt(state, "set attributes");
  state.path_.clear();
  dict_->attributes = std::make_shared<PyValue>(std::move(state));
}

namespace {

// Quoted, and cut after `max_chars` characters (a message never copies a huge string whole).
std::string quote(const std::string& s, size_t max_chars) {
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < max_chars; ++i) {
    if (s[i] == '\'' || s[i] == '\\') out += '\\';
    out += s[i];
  }
  return out + (s.size() > max_chars ? "...'" : "'");
}

void repr_into(const PyValue& v, std::string& out, size_t max_chars) {
  if (out.size() > max_chars) return;
  switch (v.kind()) {
    case PyValue::Kind::None: out += "None"; break;
    case PyValue::Kind::Bool: out += v.as_bool() ? "True" : "False"; break;
    case PyValue::Kind::Int: out += std::to_string(v.as_int()); break;
    case PyValue::Kind::Float: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.17g", v.as_float());
      out += buf;
      break;
    }
    case PyValue::Kind::String: out += quote(v.as_string(), max_chars); break;
    case PyValue::Kind::Bytes: out += "b" + quote(v.as_bytes(), max_chars); break;
    case PyValue::Kind::List:
    case PyValue::Kind::Tuple: {
      const bool list = v.kind() == PyValue::Kind::List;
      out += list ? "[" : "(";
      const size_t n = v.size();
      for (size_t i = 0; i < n; ++i) {  // at() copies one element at a time, never the whole list
        if (i) out += ", ";
        repr_into(v.at(i), out, max_chars);
        if (out.size() > max_chars) return;
      }
      if (!list && n == 1) out += ",";
      out += list ? "]" : ")";
      break;
    }
    case PyValue::Kind::Dict: {
      out += "{";
      bool first = true;
      for (size_t i = 0; i < v.size(); ++i) {  // one item at a time, never a copy of the whole dict
        const PyItem it = v.item(i);
        if (!first) out += ", ";
        first = false;
        repr_into(it.key, out, max_chars);
        out += ": ";
        repr_into(it.value, out, max_chars);
        if (out.size() > max_chars) return;
      }
      out += "}";
      break;
    }
    case PyValue::Kind::Tensor: out += v.as_tensor().str(); break;
    case PyValue::Kind::Global: out += "<" + v.global_name() + ">"; break;
    case PyValue::Kind::Object: out += "<" + v.object_type() + ">"; break;
  }
}

}  // namespace

std::string PyValue::repr(size_t max_chars) const {
  std::string out;
  repr_into(*this, out, max_chars);
  if (out.size() > max_chars) out = out.substr(0, max_chars) + "...";
  return out;
}

// ------------------------------------------------------------------------------------------------------
// Opcodes

namespace {

enum Op : uint8_t {
  MARK = '(', STOP = '.', POP = '0', POP_MARK = '1', DUP = '2', FLOAT = 'F', INT = 'I', BININT = 'J',
  BININT1 = 'K', LONG = 'L', BININT2 = 'M', NONE = 'N', PERSID = 'P', BINPERSID = 'Q', REDUCE = 'R',
  STRING = 'S', BINSTRING = 'T', SHORT_BINSTRING = 'U', UNICODE = 'V', BINUNICODE = 'X', APPEND = 'a',
  BUILD = 'b', GLOBAL = 'c', DICT = 'd', EMPTY_DICT = '}', APPENDS = 'e', GET = 'g', BINGET = 'h', INST = 'i',
  LONG_BINGET = 'j', LIST = 'l', EMPTY_LIST = ']', OBJ = 'o', PUT = 'p', BINPUT = 'q', LONG_BINPUT = 'r',
  SETITEM = 's', TUPLE = 't', EMPTY_TUPLE = ')', SETITEMS = 'u', BINFLOAT = 'G',
  // protocol 2
  PROTO = 0x80, NEWOBJ = 0x81, EXT1 = 0x82, EXT2 = 0x83, EXT4 = 0x84, TUPLE1 = 0x85, TUPLE2 = 0x86,
  TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89, LONG1 = 0x8a, LONG4 = 0x8b,
  // protocol 3
  BINBYTES = 'B', SHORT_BINBYTES = 'C',
  // protocol 4
  SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d, BINBYTES8 = 0x8e, EMPTY_SET = 0x8f, ADDITEMS = 0x90,
  FROZENSET = 0x91, NEWOBJ_EX = 0x92, STACK_GLOBAL = 0x93, MEMOIZE = 0x94, FRAME = 0x95,
  // protocol 5
  BYTEARRAY8 = 0x96, NEXT_BUFFER = 0x97, READONLY_BUFFER = 0x98,
};

constexpr int kHighestProtocol = 5;

}  // namespace

const char* pickle_opcode_name(uint8_t op) {
  switch (op) {
    case MARK: return "MARK"; case STOP: return "STOP"; case POP: return "POP"; case POP_MARK: return "POP_MARK";
    case DUP: return "DUP"; case FLOAT: return "FLOAT"; case INT: return "INT"; case BININT: return "BININT";
    case BININT1: return "BININT1"; case LONG: return "LONG"; case BININT2: return "BININT2";
    case NONE: return "NONE"; case PERSID: return "PERSID"; case BINPERSID: return "BINPERSID";
    case REDUCE: return "REDUCE"; case STRING: return "STRING"; case BINSTRING: return "BINSTRING";
    case SHORT_BINSTRING: return "SHORT_BINSTRING"; case UNICODE: return "UNICODE";
    case BINUNICODE: return "BINUNICODE"; case APPEND: return "APPEND"; case BUILD: return "BUILD";
    case GLOBAL: return "GLOBAL"; case DICT: return "DICT"; case EMPTY_DICT: return "EMPTY_DICT";
    case APPENDS: return "APPENDS"; case GET: return "GET"; case BINGET: return "BINGET"; case INST: return "INST";
    case LONG_BINGET: return "LONG_BINGET"; case LIST: return "LIST"; case EMPTY_LIST: return "EMPTY_LIST";
    case OBJ: return "OBJ"; case PUT: return "PUT"; case BINPUT: return "BINPUT";
    case LONG_BINPUT: return "LONG_BINPUT"; case SETITEM: return "SETITEM"; case TUPLE: return "TUPLE";
    case EMPTY_TUPLE: return "EMPTY_TUPLE"; case SETITEMS: return "SETITEMS"; case BINFLOAT: return "BINFLOAT";
    case PROTO: return "PROTO"; case NEWOBJ: return "NEWOBJ"; case EXT1: return "EXT1"; case EXT2: return "EXT2";
    case EXT4: return "EXT4"; case TUPLE1: return "TUPLE1"; case TUPLE2: return "TUPLE2";
    case TUPLE3: return "TUPLE3"; case NEWTRUE: return "NEWTRUE"; case NEWFALSE: return "NEWFALSE";
    case LONG1: return "LONG1"; case LONG4: return "LONG4"; case BINBYTES: return "BINBYTES";
    case SHORT_BINBYTES: return "SHORT_BINBYTES"; case SHORT_BINUNICODE: return "SHORT_BINUNICODE";
    case BINUNICODE8: return "BINUNICODE8"; case BINBYTES8: return "BINBYTES8"; case EMPTY_SET: return "EMPTY_SET";
    case ADDITEMS: return "ADDITEMS"; case FROZENSET: return "FROZENSET"; case NEWOBJ_EX: return "NEWOBJ_EX";
    case STACK_GLOBAL: return "STACK_GLOBAL"; case MEMOIZE: return "MEMOIZE"; case FRAME: return "FRAME";
    case BYTEARRAY8: return "BYTEARRAY8"; case NEXT_BUFFER: return "NEXT_BUFFER";
    case READONLY_BUFFER: return "READONLY_BUFFER";
    default: return "unknown";
  }
}

// ------------------------------------------------------------------------------------------------------
// The machine

namespace {

class Unpickler {
 public:
  Unpickler(const std::string& data, const UnpickleHooks& hooks, const std::string& source)
      : d_(data), hooks_(hooks), src_(source) {}

  PyValue run() {
    while (true) {
      SONAR_CHECK(pos_ < d_.size(), "unpickle: '", src_, "' ends at byte ", pos_, " without STOP (truncated?)");
      op_pos_ = pos_;
      op_ = static_cast<uint8_t>(d_[pos_++]);
      if (op_ == STOP) {
        if (stack_.empty()) fail("STOP with an empty stack");
        return stack_.back();
      }
      try {
        step();
      } catch (const Error& e) {
        // Messages from the hooks and from PyValue (a depth limit, a bad key) get the source and position;
        // ours already have them.
        if (!own_error_) fail(e.what());
        throw;
      }
    }
  }

 private:
  [[noreturn]] void fail(const std::string& why) const {
    own_error_ = true;
    char hex[8];
    std::snprintf(hex, sizeof hex, "0x%02x", op_);
    SONAR_FAIL("unpickle: '", src_, "': opcode ", hex, " (", pickle_opcode_name(op_), ") at byte ", op_pos_, ": ",
               why);
  }

  const char* take(size_t n) {
    if (d_.size() - pos_ < n) fail("truncated: needs " + std::to_string(n) + " bytes, " +
                                   std::to_string(d_.size() - pos_) + " left");
    const char* p = d_.data() + pos_;
    pos_ += n;
    return p;
  }
  uint64_t uint_le(size_t n) {
    const char* p = take(n);
    uint64_t v = 0;
    for (size_t k = 0; k < n; ++k) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[k])) << (8 * k);
    return v;
  }
  std::string line() {
    const size_t end = d_.find('\n', pos_);
    if (end == std::string::npos) fail("truncated: missing end of line");
    std::string s = d_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return s;
  }
  std::string counted(uint64_t n) {
    if (n > d_.size() - pos_) fail("truncated: a string of " + std::to_string(n) + " bytes, " +
                                   std::to_string(d_.size() - pos_) + " left");
    return std::string(take(static_cast<size_t>(n)), static_cast<size_t>(n));
  }
  // Little-endian two's complement integer of n bytes (LONG1 / LONG4).
  int64_t long_le(uint64_t n) {
    if (n == 0) return 0;
    if (n > 8) {
      // Python writes the shortest form, so more than 8 bytes means more than 64 bits... unless it is a
      // sign extension; accept those.
      const char* p = take(static_cast<size_t>(n));
      const uint8_t top = static_cast<uint8_t>(p[7]) & 0x80 ? 0xff : 0x00;
      for (uint64_t k = 8; k < n; ++k)
        if (static_cast<uint8_t>(p[k]) != top) fail("integer of " + std::to_string(n) + " bytes does not fit in 64 bits");
      uint64_t v = 0;
      for (int k = 0; k < 8; ++k) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[k])) << (8 * k);
      return static_cast<int64_t>(v);
    }
    uint64_t v = uint_le(static_cast<size_t>(n));
    if (n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);  // sign-extend
    return static_cast<int64_t>(v);
  }

  PyValue pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) fail("stack underflow");
    PyValue v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  PyValue& top() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) fail("stack underflow");
    return stack_.back();
  }
  std::vector<PyValue> pop_mark() {
    if (marks_.empty()) fail("no MARK on the stack");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PyValue> items(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(m)),
                               std::make_move_iterator(stack_.end()));
    stack_.resize(m);
    return items;
  }
  void push(PyValue v) {
    if (stack_.size() >= kMaxPickleStack)
      fail("more than " + std::to_string(kMaxPickleStack) + " values on the stack (kMaxPickleStack)");
    if (++pushed_ > kMaxPickleValues)
      fail("more than " + std::to_string(kMaxPickleValues) + " values in all (kMaxPickleValues)");
    stack_.push_back(std::move(v));
  }

  void memo_put(uint64_t idx) {
    if (memo_.size() >= kMaxPickleMemo && memo_.find(idx) == memo_.end())
      fail("more than " + std::to_string(kMaxPickleMemo) + " memo entries (kMaxPickleMemo)");
    memo_[idx] = top();
  }
  void memo_get(uint64_t idx) {
    auto it = memo_.find(idx);
    if (it == memo_.end()) fail("memo key " + std::to_string(idx) + " was never stored");
    push(it->second);
  }

  void set_items(PyValue& dict, std::vector<PyValue>& kv) {
    if (kv.size() % 2 != 0) fail("odd number of items for a dict");
    if (!dict.is_dict()) fail(std::string("target is a ") + dict.type_name() + ", not a dict");
    for (size_t i = 0; i < kv.size(); i += 2) dict.set_item(std::move(kv[i]), std::move(kv[i + 1]));
  }

  void check_global(const std::string& module, const std::string& name) {
    if (!hooks_.allow_global || !hooks_.allow_global(module, name))
      fail("unsupported global '" + module + "." + name + "'");
  }

  template <class F>
  auto hook(F&& f) {
    return f();
  }

  void step() {
    switch (op_) {
      case PROTO: {
        const int p = static_cast<uint8_t>(*take(1));
        if (p > kHighestProtocol) fail("unsupported protocol " + std::to_string(p));
        break;
      }
      case FRAME: uint_le(8); break;  // frame length: a read-ahead hint only
      case MARK:
        if (marks_.size() >= static_cast<size_t>(kMaxPickleDepth))
          fail("more than " + std::to_string(kMaxPickleDepth) + " MARKs open at once (kMaxPickleDepth)");
        marks_.push_back(stack_.size());
        break;
      case POP: pop(); break;
      case POP_MARK: pop_mark(); break;
      case DUP: push(top()); break;

      case NONE: push(PyValue::none()); break;
      case NEWTRUE: push(PyValue::boolean(true)); break;
      case NEWFALSE: push(PyValue::boolean(false)); break;
      case BININT: push(PyValue::integer(static_cast<int32_t>(static_cast<uint32_t>(uint_le(4))))); break;
      case BININT1: push(PyValue::integer(static_cast<int64_t>(uint_le(1)))); break;
      case BININT2: push(PyValue::integer(static_cast<int64_t>(uint_le(2)))); break;
      case LONG1: push(PyValue::integer(long_le(uint_le(1)))); break;
      case LONG4: {
        const int32_t n = static_cast<int32_t>(static_cast<uint32_t>(uint_le(4)));
        if (n < 0) fail("negative length");
        push(PyValue::integer(long_le(static_cast<uint64_t>(n))));
        break;
      }
      case INT: {  // protocol 0: decimal text; "00"/"01" are False/True
        const std::string s = line();
        if (s == "00" || s == "01") { push(PyValue::boolean(s == "01")); break; }
        push(PyValue::integer(parse_int(s)));
        break;
      }
      case LONG: {
        std::string s = line();
        if (!s.empty() && s.back() == 'L') s.pop_back();
        push(PyValue::integer(parse_int(s)));
        break;
      }
      case BINFLOAT: {
        const char* p = take(8);
        uint64_t bits = 0;
        for (int k = 0; k < 8; ++k) bits = (bits << 8) | static_cast<uint8_t>(p[k]);  // big-endian
        double f;
        std::memcpy(&f, &bits, 8);
        push(PyValue::floating(f));
        break;
      }
      case FLOAT: {
        const std::string s = line();
        char* end = nullptr;
        const double f = std::strtod(s.c_str(), &end);
        if (s.empty() || *end != '\0') fail("bad float text '" + s + "'");
        push(PyValue::floating(f));
        break;
      }

      case SHORT_BINUNICODE: push(PyValue::string(counted(uint_le(1)))); break;
      case BINUNICODE: push(PyValue::string(counted(uint_le(4)))); break;
      case BINUNICODE8: push(PyValue::string(counted(uint_le(8)))); break;
      case SHORT_BINSTRING: push(PyValue::string(counted(uint_le(1)))); break;  // Python 2 str, read as str
      case BINSTRING: {
        const int32_t n = static_cast<int32_t>(static_cast<uint32_t>(uint_le(4)));
        if (n < 0) fail("negative length");
        push(PyValue::string(counted(static_cast<uint64_t>(n))));
        break;
      }
      case SHORT_BINBYTES: push(PyValue::bytes(counted(uint_le(1)))); break;
      case BINBYTES: push(PyValue::bytes(counted(uint_le(4)))); break;
      case BINBYTES8: push(PyValue::bytes(counted(uint_le(8)))); break;

      case EMPTY_DICT: push(PyValue::dict()); break;
      case EMPTY_LIST: push(PyValue::list()); break;
      case EMPTY_TUPLE: push(PyValue::tuple()); break;
      case DICT: {
        auto kv = pop_mark();
        PyValue d = PyValue::dict();
        set_items(d, kv);
        push(std::move(d));
        break;
      }
      case LIST: push(PyValue::list(pop_mark())); break;
      case TUPLE: push(PyValue::tuple(pop_mark())); break;
      case TUPLE1: {
        PyValue a = pop();
        push(PyValue::tuple({std::move(a)}));
        break;
      }
      case TUPLE2: {
        PyValue b = pop(), a = pop();
        push(PyValue::tuple({std::move(a), std::move(b)}));
        break;
      }
      case TUPLE3: {
        PyValue c = pop(), b = pop(), a = pop();
        push(PyValue::tuple({std::move(a), std::move(b), std::move(c)}));
        break;
      }
      case APPEND: {
        PyValue v = pop();
        PyValue& l = top();
        if (!l.is_list()) fail(std::string("target is a ") + l.type_name() + ", not a list");
        l.append(std::move(v));
        break;
      }
      case APPENDS: {
        auto items = pop_mark();
        PyValue& l = top();
        if (!l.is_list()) fail(std::string("target is a ") + l.type_name() + ", not a list");
        for (auto& v : items) l.append(std::move(v));
        break;
      }
      case SETITEM: {
        PyValue v = pop(), k = pop();
        std::vector<PyValue> kv = {std::move(k), std::move(v)};
        set_items(top(), kv);
        break;
      }
      case SETITEMS: {
        auto kv = pop_mark();
        set_items(top(), kv);
        break;
      }

      case BINPUT: memo_put(uint_le(1)); break;
      case LONG_BINPUT: memo_put(uint_le(4)); break;
      case MEMOIZE: memo_put(memo_.size()); break;
      case PUT: memo_put(static_cast<uint64_t>(parse_int(line()))); break;
      case BINGET: memo_get(uint_le(1)); break;
      case LONG_BINGET: memo_get(uint_le(4)); break;
      case GET: memo_get(static_cast<uint64_t>(parse_int(line()))); break;

      case GLOBAL: {
        const std::string module = line();
        const std::string name = line();
        check_global(module, name);
        push(PyValue::global(module, name));
        break;
      }
      case STACK_GLOBAL: {
        PyValue name = pop(), module = pop();
        if (!name.is_string() || !module.is_string()) fail("module and name must be str");
        check_global(module.as_string(), name.as_string());
        push(PyValue::global(module.as_string(), name.as_string()));
        break;
      }
      case REDUCE:
      case NEWOBJ: {
        PyValue args = pop(), callable = pop();
        if (!callable.is_global()) fail(std::string("cannot call a ") + callable.type_name());
        if (!args.is_tuple()) fail(std::string("arguments must be a tuple, got ") + args.type_name());
        if (!hooks_.call) fail("cannot call '" + callable.global_name() + "'");
        push(hook([&] { return hooks_.call(callable, args); }));
        break;
      }
      case BUILD: {
        PyValue state = pop();
        PyValue& target = top();
        if (target.is_dict()) {
          // A dict subclass (OrderedDict) whose instance __dict__ was pickled: keep it as attributes.
          target.set_attributes(std::move(state));
        } else {
          if (!hooks_.build) fail(std::string("cannot set the state of a ") + target.type_name());
          hook([&] { hooks_.build(target, state); return 0; });
        }
        break;
      }
      case BINPERSID: {
        PyValue pid = pop();
        if (!hooks_.persistent_load) fail("no persistent_load for id " + pid.repr());
        push(hook([&] { return hooks_.persistent_load(pid); }));
        break;
      }
      case PERSID: {
        PyValue pid = PyValue::string(line());
        if (!hooks_.persistent_load) fail("no persistent_load for id " + pid.repr());
        push(hook([&] { return hooks_.persistent_load(pid); }));
        break;
      }
      default: fail("unsupported opcode");
    }
  }

  int64_t parse_int(const std::string& s) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno == ERANGE) fail("bad integer text '" + s + "'");
    return v;
  }

  const std::string& d_;
  const UnpickleHooks& hooks_;
  const std::string& src_;
  size_t pos_ = 0, op_pos_ = 0;
  uint8_t op_ = 0;
  mutable bool own_error_ = false;  // the error in flight was made by fail()
  std::vector<PyValue> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PyValue> memo_;
  size_t pushed_ = 0;
};

}  // namespace

PyValue unpickle(const std::string& data, const UnpickleHooks& hooks, const std::string& source) {
  return Unpickler(data, hooks, source).run();
}

}  // namespace sonar
