// A small JSON reader: enough of RFC 8259 to read fastmlr's sidecars (objects, arrays, strings with
// escapes, numbers, true/false/null), with errors that name the file and the offset.
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include "fastmlr/classifier.h"

namespace fastmlr {
namespace {

struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<Json> items;
  std::map<std::string, Json> fields;
};

class Parser {
 public:
  Parser(const std::string& text, const std::string& where) : s_(text), where_(where) {}

  Json parse() {
    Json v = value();
    skip();
    if (i_ != s_.size()) fail("trailing characters after the JSON value");
    return v;
  }

 private:
  const std::string& s_;
  std::string where_;
  size_t i_ = 0;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(where_ + ": invalid JSON at offset " + std::to_string(i_) + ": " + what);
  }
  void skip() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool eat(char c) {
    skip();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) fail(std::string("expected '") + c + "'");
  }
  bool word(const char* w) {
    size_t n = std::char_traits<char>::length(w);
    if (s_.compare(i_, n, w) == 0) {
      i_ += n;
      return true;
    }
    return false;
  }
  static void utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  unsigned hex4() {
    if (i_ + 4 > s_.size()) fail("short \\u escape");
    unsigned v = std::stoul(s_.substr(i_, 4), nullptr, 16);
    i_ += 4;
    return v;
  }
  std::string string() {
    expect('"');
    std::string out;
    while (true) {
      if (i_ >= s_.size()) fail("unterminated string");
      char c = s_[i_++];
      if (c == '"') return out;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= s_.size()) fail("unterminated escape");
      char e = s_[i_++];
      switch (e) {
        case '"': case '\\': case '/': out += e; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && word("\\u")) cp = 0x10000 + ((cp - 0xD800) << 10) + (hex4() - 0xDC00);
          utf8(out, cp);
          break;
        }
        default: fail(std::string("bad escape \\") + e);
      }
    }
  }
  Json value() {
    skip();
    if (i_ >= s_.size()) fail("unexpected end");
    Json v;
    char c = s_[i_];
    if (c == '{') {
      ++i_;
      v.kind = Json::Object;
      if (eat('}')) return v;
      do {
        skip();
        std::string k = string();
        expect(':');
        v.fields[k] = value();
      } while (eat(','));
      expect('}');
    } else if (c == '[') {
      ++i_;
      v.kind = Json::Array;
      if (eat(']')) return v;
      do v.items.push_back(value());
      while (eat(','));
      expect(']');
    } else if (c == '"') {
      v.kind = Json::String;
      v.str = string();
    } else if (word("true")) {
      v.kind = Json::Bool, v.b = true;
    } else if (word("false")) {
      v.kind = Json::Bool;
    } else if (word("null")) {
      v.kind = Json::Null;
    } else {
      const char* start = s_.c_str() + i_;
      char* end = nullptr;
      v.num = std::strtod(start, &end);
      if (end == start) fail("unexpected character");
      v.kind = Json::Number;
      i_ += static_cast<size_t>(end - start);
    }
    return v;
  }
};

const Json& field(const Json& obj, const std::string& key, Json::Kind kind, const std::string& where) {
  auto it = obj.fields.find(key);
  if (it == obj.fields.end()) throw std::runtime_error(where + ": sidecar lacks \"" + key + "\"");
  if (it->second.kind != kind) throw std::runtime_error(where + ": sidecar field \"" + key + "\" has the wrong type");
  return it->second;
}

}  // namespace

Sidecar read_sidecar(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open sidecar " + path);
  std::stringstream buf;
  buf << in.rdbuf();
  std::string text = buf.str();
  Json root = Parser(text, path).parse();
  if (root.kind != Json::Object) throw std::runtime_error(path + ": sidecar is not a JSON object");
  Sidecar s;
  if (field(root, "format", Json::String, path).str != "fastmlr-artifact-v1")
    throw std::runtime_error(path + ": not a fastmlr sidecar (format is not \"fastmlr-artifact-v1\")");
  for (const Json& n : field(root, "class_names", Json::Array, path).items) {
    if (n.kind != Json::String) throw std::runtime_error(path + ": class_names must hold strings");
    s.class_names.push_back(n.str);
  }
  s.image_size = static_cast<int>(field(root, "image_size", Json::Number, path).num);
  const Json& mean = field(root, "mean", Json::Array, path);
  const Json& stdv = field(root, "std", Json::Array, path);
  if (mean.items.size() != 3 || stdv.items.size() != 3)
    throw std::runtime_error(path + ": mean and std must hold 3 numbers each");
  for (int c = 0; c < 3; ++c) {
    s.mean[c] = static_cast<float>(mean.items[c].num);
    s.std[c] = static_cast<float>(stdv.items[c].num);
  }
  s.threshold = static_cast<float>(field(root, "threshold", Json::Number, path).num);
  auto th = root.fields.find("thresholds");
  if (th != root.fields.end() && th->second.kind != Json::Null) {
    if (th->second.kind != Json::Array || th->second.items.size() != s.class_names.size())
      throw std::runtime_error(path + ": \"thresholds\" must be a list of " + std::to_string(s.class_names.size()) +
                               " numbers (one per class)");
    for (const Json& t : th->second.items) {
      if (t.kind != Json::Number || !(t.num >= 0.0 && t.num <= 1.0))
        throw std::runtime_error(path + ": \"thresholds\" must hold numbers in [0, 1]");
      s.thresholds.push_back(static_cast<float>(t.num));
    }
  }
  s.format = field(field(root, "artifact", Json::Object, path), "format", Json::String, path).str;
  auto p = root.fields.find("precision");
  if (p != root.fields.end() && p->second.kind == Json::String) s.precision = p->second.str;
  auto b = root.fields.find("batch");
  if (b != root.fields.end() && b->second.kind == Json::Object) {
    auto m = b->second.fields.find("max");
    if (m != b->second.fields.end() && m->second.kind == Json::Number) s.max_batch = static_cast<int>(m->second.num);
  }
  if (s.image_size < 1 || s.class_names.empty()) throw std::runtime_error(path + ": empty class_names or bad image_size");
  return s;
}

}  // namespace fastmlr
