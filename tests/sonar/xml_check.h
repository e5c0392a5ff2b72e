// A minimal XML well-formedness checker for the SVG tests: elements nest and close in order, attribute values
// are quoted, names are well formed, '&' starts a known entity or a character reference, '<' never appears in
// text or attribute values, and there is exactly one root element. It also returns the elements (name,
// attributes, direct text) so tests can read the drawn coordinates. Test-only (not a test program itself: only
// tests/*/test_*.cpp become programs); not a general XML parser (no DTD, no CDATA, no namespaces).
#pragma once
#include <cctype>
#include <map>
#include <string>
#include <vector>

namespace sonar::testutil {

struct XmlElement {
  std::string name;
  std::map<std::string, std::string> attrs;  // values with entities decoded
  std::string text;                          // direct text content, entities decoded
  int depth = 0;
};

struct XmlCheck {
  bool ok = false;
  std::string error;  // the first problem and its offset
  std::vector<XmlElement> elements;  // in document order
};

inline XmlCheck check_xml(const std::string& s) {
  XmlCheck r;
  std::vector<size_t> open;  // indices into r.elements
  int roots = 0;
  size_t i = 0;
  auto fail = [&](const std::string& what) {
    r.ok = false;
    r.error = what + " at offset " + std::to_string(i);
    return r;
  };
  auto name_char = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == ':' || c == '.'; };
  auto decode = [&](const std::string& raw, std::string& out) -> bool {
    out.clear();
    for (size_t k = 0; k < raw.size(); ++k) {
      if (raw[k] == '<') return false;
      if (raw[k] != '&') {
        out += raw[k];
        continue;
      }
      const size_t semi = raw.find(';', k);
      if (semi == std::string::npos) return false;
      const std::string ent = raw.substr(k + 1, semi - k - 1);
      if (ent == "amp") out += '&';
      else if (ent == "lt") out += '<';
      else if (ent == "gt") out += '>';
      else if (ent == "quot") out += '"';
      else if (ent == "apos") out += '\'';
      else if (ent.size() > 1 && ent[0] == '#') {
        for (size_t q = 1; q < ent.size(); ++q)
          if (!std::isxdigit(static_cast<unsigned char>(ent[q])) && !(q == 1 && ent[q] == 'x')) return false;
        out += '?';
      } else {
        return false;
      }
      k = semi;
    }
    return true;
  };
  // Optional declaration.
  if (s.compare(0, 5, "<?xml") == 0) {
    const size_t e = s.find("?>");
    if (e == std::string::npos) return fail("unterminated declaration");
    i = e + 2;
  }
  while (i < s.size()) {
    if (s[i] != '<') {
      const size_t e = s.find('<', i);
      const std::string raw = s.substr(i, (e == std::string::npos ? s.size() : e) - i);
      std::string txt;
      if (!decode(raw, txt)) return fail("bad character or entity in text");
      bool blank = true;
      for (char c : raw) blank = blank && std::isspace(static_cast<unsigned char>(c));
      if (open.empty() && !blank) return fail("text outside the root element");
      if (!open.empty()) r.elements[open.back()].text += txt;
      i = e == std::string::npos ? s.size() : e;
      continue;
    }
    if (s.compare(i, 4, "<!--") == 0) {
      const size_t e = s.find("-->", i);
      if (e == std::string::npos) return fail("unterminated comment");
      i = e + 3;
      continue;
    }
    if (i + 1 < s.size() && s[i + 1] == '/') {  // closing tag
      size_t k = i + 2;
      std::string name;
      while (k < s.size() && name_char(s[k])) name += s[k++];
      while (k < s.size() && std::isspace(static_cast<unsigned char>(s[k]))) ++k;
      if (k >= s.size() || s[k] != '>') return fail("bad closing tag");
      if (open.empty() || r.elements[open.back()].name != name) return fail("closing </" + name + "> does not match");
      open.pop_back();
      i = k + 1;
      continue;
    }
    size_t k = i + 1;
    XmlElement el;
    while (k < s.size() && name_char(s[k])) el.name += s[k++];
    if (el.name.empty() || std::isdigit(static_cast<unsigned char>(el.name[0]))) return fail("bad element name");
    bool self_closing = false;
    for (;;) {
      const size_t before = k;
      while (k < s.size() && std::isspace(static_cast<unsigned char>(s[k]))) ++k;
      if (k >= s.size()) return fail("unterminated tag <" + el.name);
      if (s[k] == '>') {
        ++k;
        break;
      }
      if (s[k] == '/' && k + 1 < s.size() && s[k + 1] == '>') {
        self_closing = true;
        k += 2;
        break;
      }
      if (k == before) return fail("no space before an attribute of <" + el.name);
      std::string an;
      while (k < s.size() && name_char(s[k])) an += s[k++];
      if (an.empty()) return fail("bad attribute name in <" + el.name);
      if (k >= s.size() || s[k] != '=') return fail("attribute " + an + " without '='");
      ++k;
      if (k >= s.size() || (s[k] != '"' && s[k] != '\'')) return fail("attribute " + an + " not quoted");
      const char q = s[k++];
      const size_t e = s.find(q, k);
      if (e == std::string::npos) return fail("unterminated attribute " + an);
      std::string val;
      if (!decode(s.substr(k, e - k), val)) return fail("bad character or entity in attribute " + an);
      if (el.attrs.count(an)) return fail("duplicate attribute " + an);
      el.attrs[an] = val;
      k = e + 1;
    }
    if (open.empty()) ++roots;
    if (roots > 1) return fail("more than one root element");
    el.depth = static_cast<int>(open.size());
    r.elements.push_back(el);
    if (!self_closing) open.push_back(r.elements.size() - 1);
    i = k;
  }
  if (!open.empty()) return fail("<" + r.elements[open.back()].name + "> is never closed");
  if (roots != 1) return fail("no root element");
  r.ok = true;
  return r;
}

}  // namespace sonar::testutil
