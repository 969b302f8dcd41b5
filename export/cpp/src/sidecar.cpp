// A small JSON reader: enough of RFC 8259 to read fastmlr's sidecars (objects, arrays, strings with
// escapes, numbers, true/false/null), with errors that name the file and the offset; nesting is bounded
// (kMaxDepth) so a hostile file cannot exhaust the stack. The sidecar's integrity record is checked as
// fastmlr.artifact.contract does: the sha256 of each top-level field's canonical JSON (sorted keys, no
// spaces, UTF-8 as is; numbers as written in the file, which is how Python's json writes them), and the
// artefact's sha256 (file_sha256) is compared by the Classifier.
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>

#include "fastmlr/classifier.h"

namespace fastmlr {
namespace {

constexpr int kMaxDepth = 64;                       // a sidecar nests 3 deep
constexpr std::streamsize kMaxSidecarBytes = 16 << 20;  // a sidecar is a few kB

struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool b = false;
  double num = 0;
  std::string str;  // a string's value, or a number's text as written
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
  int depth_ = 0;

  Json value() {
    skip();
    if (i_ >= s_.size()) fail("unexpected end");
    if (++depth_ > kMaxDepth) fail("nested deeper than " + std::to_string(kMaxDepth) + " levels");
    Json v = value_at();
    --depth_;
    return v;
  }
  Json value_at() {
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
      v.str.assign(start, static_cast<size_t>(end - start));
      i_ += static_cast<size_t>(end - start);
    }
    return v;
  }
};

// -- SHA-256 (FIPS 180-4) ----------------------------------------------------------------------------
class Sha256 {
 public:
  void update(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    bits_ += static_cast<uint64_t>(n) * 8;
    while (n > 0) {
      size_t k = std::min(n, sizeof(buf_) - used_);
      std::memcpy(buf_ + used_, p, k);
      used_ += k, p += k, n -= k;
      if (used_ == sizeof(buf_)) block(buf_), used_ = 0;
    }
  }
  std::string hex() {
    uint64_t bits = bits_;
    uint8_t pad = 0x80;
    update(&pad, 1);
    pad = 0;
    while (used_ != 56) update(&pad, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
    update(len, 8);
    char out[65];
    for (int i = 0; i < 8; ++i) std::snprintf(out + 8 * i, 9, "%08x", h_[i]);
    return std::string(out, 64);
  }

 private:
  uint32_t h_[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  uint8_t buf_[64];
  size_t used_ = 0;
  uint64_t bits_ = 0;

  static uint32_t rotr(uint32_t x, int r) { return (x >> r) | (x << (32 - r)); }
  void block(const uint8_t* b) {
    static const uint32_t K[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = (uint32_t(b[4 * i]) << 24) | (uint32_t(b[4 * i + 1]) << 16) | (uint32_t(b[4 * i + 2]) << 8) | b[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], b2 = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; ++i) {
      uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
      uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b2) ^ (a & c) ^ (b2 & c));
      h = g, g = f, f = e, e = d + t1, d = c, c = b2, b2 = a, a = t1 + t2;
    }
    h_[0] += a, h_[1] += b2, h_[2] += c, h_[3] += d, h_[4] += e, h_[5] += f, h_[6] += g, h_[7] += h;
  }
};

std::string sha256_hex(const std::string& bytes) {
  Sha256 h;
  h.update(bytes.data(), bytes.size());
  return h.hex();
}

// Python's json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).
void canonical(const Json& v, std::string& out) {
  switch (v.kind) {
    case Json::Null: out += "null"; break;
    case Json::Bool: out += v.b ? "true" : "false"; break;
    case Json::Number: out += v.str; break;
    case Json::String: {
      out += '"';
      for (char ch : v.str) {
        const auto u = static_cast<unsigned char>(ch);
        switch (ch) {
          case '"': out += "\\\""; break;
          case '\\': out += "\\\\"; break;
          case '\n': out += "\\n"; break;
          case '\r': out += "\\r"; break;
          case '\t': out += "\\t"; break;
          case '\b': out += "\\b"; break;
          case '\f': out += "\\f"; break;
          default:
            if (u < 0x20) {
              char buf[8];
              std::snprintf(buf, sizeof buf, "\\u%04x", u);
              out += buf;
            } else {
              out += ch;
            }
        }
      }
      out += '"';
      break;
    }
    case Json::Array:
      out += '[';
      for (size_t k = 0; k < v.items.size(); ++k) {
        if (k) out += ',';
        canonical(v.items[k], out);
      }
      out += ']';
      break;
    case Json::Object: {
      out += '{';
      bool first = true;
      for (const auto& [key, val] : v.fields) {  // std::map: byte order of UTF-8 = code point order
        if (!first) out += ',';
        first = false;
        Json k;
        k.kind = Json::String;
        k.str = key;
        canonical(k, out);
        out += ':';
        canonical(val, out);
      }
      out += '}';
      break;
    }
  }
}

// The fields edited after export (added, removed or changed), as fastmlr.artifact.contract.edited_fields.
void check_integrity(const Json& root, const std::string& path) {
  static const std::string kScheme = "sha256 of each top-level field's canonical JSON";
  auto rec = root.fields.find("integrity");
  if (rec == root.fields.end()) {
    std::cerr << "fastmlr: sidecar " << path << " has no 'integrity' record (written by an older fastmlr): its fields "
              << "are used unchecked; re-export to add one\n";
    return;
  }
  std::string edited;
  auto add = [&](const std::string& k) { edited += (edited.empty() ? "" : ", ") + k; };
  const Json& r = rec->second;
  auto scheme = r.fields.find("scheme");
  auto fields = r.fields.find("fields");
  if (r.kind != Json::Object || scheme == r.fields.end() || scheme->second.kind != Json::String ||
      scheme->second.str != kScheme || fields == r.fields.end() || fields->second.kind != Json::Object) {
    add("integrity");
  } else {
    const auto& want = fields->second.fields;
    for (const auto& [key, val] : root.fields) {
      if (key == "integrity") continue;
      std::string text;
      canonical(val, text);
      auto w = want.find(key);
      if (w == want.end() || w->second.kind != Json::String || w->second.str != sha256_hex(text)) add(key);
    }
    for (const auto& [key, val] : want)
      if (!root.fields.count(key)) add(key);
  }
  if (!edited.empty())
    throw std::runtime_error("sidecar " + path + " was edited after export: " + edited + " no longer match its " +
                             "'integrity' record; re-export the artefact (python -m fastmlr.export), or change "
                             "thresholds with fastmlr.deploy.set_thresholds");
}

const Json& field(const Json& obj, const std::string& key, Json::Kind kind, const std::string& where) {
  auto it = obj.fields.find(key);
  if (it == obj.fields.end()) throw std::runtime_error(where + ": sidecar lacks \"" + key + "\"");
  if (it->second.kind != kind) throw std::runtime_error(where + ": sidecar field \"" + key + "\" has the wrong type");
  return it->second;
}

}  // namespace

void check_regular_file(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw std::runtime_error("cannot open " + what + " " + path + " (it does not exist)");
  if (!S_ISREG(st.st_mode))
    throw std::runtime_error(what + " " + path + ": not a regular file (" +
                             (S_ISFIFO(st.st_mode) ? "a FIFO" : S_ISDIR(st.st_mode) ? "a folder" : "a device") + ")");
}

std::string file_sha256(const std::string& path) {
  check_regular_file(path, "file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  Sha256 h;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    h.update(buf.data(), static_cast<size_t>(in.gcount()));
  }
  return h.hex();
}

Sidecar read_sidecar(const std::string& path) {
  check_regular_file(path, "sidecar");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open sidecar " + path);
  std::string text(static_cast<size_t>(kMaxSidecarBytes) + 1, '\0');
  in.read(text.data(), kMaxSidecarBytes + 1);
  text.resize(static_cast<size_t>(in.gcount()));
  if (static_cast<std::streamsize>(text.size()) > kMaxSidecarBytes)
    throw std::runtime_error("sidecar " + path + " is larger than " + std::to_string(kMaxSidecarBytes >> 20) +
                             " MiB; a fastmlr sidecar is a few kB");
  Json root = Parser(text, path).parse();
  if (root.kind != Json::Object) throw std::runtime_error(path + ": sidecar is not a JSON object");
  check_integrity(root, path);
  Sidecar s;
  if (field(root, "format", Json::String, path).str != "fastmlr-artifact-v1")
    throw std::runtime_error(path + ": not a fastmlr sidecar (format is not \"fastmlr-artifact-v1\")");
  for (const Json& n : field(root, "class_names", Json::Array, path).items) {
    if (n.kind != Json::String) throw std::runtime_error(path + ": class_names must hold strings");
    s.class_names.push_back(n.str);
  }
  const double size = field(root, "image_size", Json::Number, path).num;  // bounded before the cast (1e999 is inf)
  s.image_size = size >= 1 && size <= kMaxImageSize ? static_cast<int>(size) : 0;
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
  const Json& artifact = field(root, "artifact", Json::Object, path);
  s.format = field(artifact, "format", Json::String, path).str;
  auto sha = artifact.fields.find("sha256");
  if (sha != artifact.fields.end() && sha->second.kind == Json::String) s.sha256 = sha->second.str;
  auto p = root.fields.find("precision");
  if (p != root.fields.end() && p->second.kind == Json::String) s.precision = p->second.str;
  auto b = root.fields.find("batch");
  if (b != root.fields.end() && b->second.kind == Json::Object) {
    auto m = b->second.fields.find("max");
    if (m != b->second.fields.end() && m->second.kind == Json::Number) {
      if (!(m->second.num >= 1 && m->second.num <= 1 << 20))
        throw std::runtime_error(path + ": \"batch\" \"max\" must be a number from 1 to " + std::to_string(1 << 20));
      s.max_batch = static_cast<int>(m->second.num);
    }
  }
  if (s.image_size < 1 || s.image_size > kMaxImageSize || s.class_names.empty())
    throw std::runtime_error(path + ": empty class_names or image_size outside 1 .. " + std::to_string(kMaxImageSize));
  return s;
}

}  // namespace fastmlr
