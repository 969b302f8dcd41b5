// fastmlr_classify: multi-label classification of images with an exported fastmlr model.
//
//   fastmlr_classify MODEL.pt2|MODEL.plan [--sidecar FILE] [--device cuda:N] [--json] [--top K] INPUT...
//   fastmlr_classify --serve MODEL.pt2|MODEL.plan [--sidecar FILE] [--device cuda:N]   (or MODEL --stdin)
//   fastmlr_classify --decode IMAGE OUT.ppm [--decode IMAGE2 OUT2.ppm ...]
//
// INPUT: a JPEG, PNG or binary PPM/PGM image (decoded as Pillow does, EXIF orientation applied, resized
// and normalised as the sidecar says), or a .npy float32 tensor [N, 3, S, S] / [3, S, S] already
// normalised. Prints, per image, the labels at or above their threshold (the sidecar's per-class
// "thresholds", else its "threshold" for every class).
//
// --json and --serve write JSON Lines, one record per image, the layout fastmlr's `predict --json` and
// Python runtime write (export/README.md, "Prediction output"; fastmlr/results.py):
//   {"image": PATH, "labels": [NAME, ...], "probabilities": {NAME: P, ...}, "thresholds": {NAME: T, ...}}
// or {"image": PATH, "error": "..."} when the file cannot be read. --serve keeps the model loaded, reads
// image paths from standard input, one per line, answers each with one record, flushed at once, and
// exits 0 at end of input.
// --decode IMAGE OUT.ppm writes the RGB pixels the classifier would see (before resizing) as a binary PPM;
// it takes its two arguments as a pair and may be repeated.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "fastmlr/classifier.h"

namespace {

void usage() {
  std::cerr << "usage: fastmlr_classify MODEL.pt2|MODEL.plan [--sidecar FILE] [--device cuda:N] [--json] [--top K] "
               "IMAGE.jpg|IMAGE.png|IMAGE.ppm|TENSOR.npy ...\n"
               "       fastmlr_classify --serve MODEL.pt2|MODEL.plan [--sidecar FILE] [--device cuda:N]  "
               "(image paths on stdin, one JSON line each on stdout)\n"
               "       fastmlr_classify --decode IMAGE OUT.ppm\n";
}

// Length of the valid UTF-8 sequence at s[i] (RFC 3629: no overlongs, surrogates or code points past
// U+10FFFF), or 0 when the bytes there are not UTF-8.
size_t utf8_len(const std::string& s, size_t i) {
  const auto b = [&](size_t k) { return k < s.size() ? static_cast<unsigned char>(s[k]) : 0u; };
  const unsigned c = b(i);
  const auto cont = [&](size_t k) { return (b(k) & 0xC0) == 0x80; };
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(i + 1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    const unsigned lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    return b(i + 1) >= lo && b(i + 1) <= hi && cont(i + 2) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    const unsigned lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    return b(i + 1) >= lo && b(i + 1) <= hi && cont(i + 2) && cont(i + 3) ? 4 : 0;
  }
  return 0;
}

// A JSON string; bytes that are not UTF-8 (a file name may hold any) become U+FFFD, so every line is JSON.
std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (size_t i = 0; i < s.size();) {
    const char c = s[i];
    const size_t n = utf8_len(s, i);
    if (n == 0) {
      o += "\\ufffd";
      ++i;
      continue;
    }
    if (c == '"' || c == '\\') {
      o += '\\';
      o += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
      o += buf;
    } else {
      o.append(s, i, n);
    }
    i += n;
  }
  return o + "\"";
}

std::string json_num(float v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(v));
  return buf;
}

// The one record of a prediction (fastmlr/results.py writes the same in Python).
std::string record_json(const std::string& image, const fastmlr::Prediction& pred, const fastmlr::Sidecar& side) {
  std::string o = "{\"image\": " + json_str(image) + ", \"labels\": [";
  for (size_t k = 0; k < pred.labels.size(); ++k) o += (k ? ", " : "") + json_str(pred.labels[k].name);
  o += "], \"probabilities\": {";
  for (size_t c = 0; c < pred.scores.size(); ++c)
    o += (c ? ", " : "") + json_str(side.class_names[c]) + ": " + json_num(pred.scores[c]);
  o += "}, \"thresholds\": {";
  for (size_t c = 0; c < pred.scores.size(); ++c)
    o += (c ? ", " : "") + json_str(side.class_names[c]) + ": " + json_num(side.threshold_for(c));
  return o + "}}";
}

std::string error_json(const std::string& image, const std::string& error) {
  return "{\"image\": " + json_str(image) + ", \"error\": " + json_str(error) + "}";
}

int parse_count(const std::string& flag, const std::string& v) {
  if (v.empty() || v.size() > 6 || v.find_first_not_of("0123456789") != std::string::npos)
    throw std::invalid_argument(flag + ": expected a whole number from 0 to 999999, got '" + v + "'");
  return std::stoi(v);
}

int parse_device(const std::string& d) {
  if (d.rfind("cuda:", 0) == 0 && d.size() > 5 && d.size() <= 8 && d.find_first_not_of("0123456789", 5) == std::string::npos)
    return std::stoi(d.substr(5));
  if (d == "cuda") return 0;
  throw std::invalid_argument("--device: expected cuda or cuda:N, got '" + d + "'");
}

int serve(fastmlr::Classifier& clf) {
  std::cerr << "fastmlr_classify: " << clf.provider() << ", " << clf.class_names().size()
            << " classes; reading image paths from standard input\n";
  for (std::string line; std::getline(std::cin, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    std::string out;
    try {
      fastmlr::FileResult r = std::move(clf.classify_files({line}).front());
      out = r.ok() ? record_json(line, r.prediction, clf.sidecar()) : error_json(line, r.error);
    } catch (const std::exception& e) {
      out = error_json(line, e.what());
    }
    std::cout << out << "\n" << std::flush;
  }
  return 0;
}

int decode(const std::string& in, const std::string& out) {
  std::error_code ec;
  if (std::filesystem::equivalent(in, out, ec))  // false (with ec set) when OUT does not exist yet
    throw std::runtime_error("--decode " + in + " " + out + ": the output is the input image; it would be overwritten");
  const fastmlr::Image img = fastmlr::read_image(in);
  const std::string tmp = out + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary);
    f << "P6\n" << img.width << " " << img.height << "\n255\n";
    f.write(reinterpret_cast<const char*>(img.pixels.data()), static_cast<std::streamsize>(img.pixels.size()));
    if (!f) throw std::runtime_error("cannot write " + out);
  }
  if (std::rename(tmp.c_str(), out.c_str()) != 0) throw std::runtime_error("cannot write " + out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, sidecar;
  std::vector<std::pair<std::string, std::string>> decodes;
  bool json = false, serving = false;
  int top = 5, device = 0;
  std::vector<std::string> inputs;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--sidecar" && i + 1 < argc) sidecar = argv[++i];
      else if (a == "--device" && i + 1 < argc) device = parse_device(argv[++i]);
      else if (a == "--json") json = true;
      else if (a == "--serve" || a == "--stdin") serving = true;
      else if (a == "--decode" && i + 2 < argc) decodes.emplace_back(argv[i + 1], argv[i + 2]), i += 2;
      else if (a == "--top" && i + 1 < argc) top = parse_count("--top", argv[++i]);
      else if (a == "-h" || a == "--help") { usage(); return 0; }
      else if (a.rfind("--", 0) == 0) throw std::invalid_argument("unknown or incomplete option " + a);
      else if (model.empty()) model = a;
      else inputs.push_back(a);
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    usage();
    return 2;
  }
  if (!decodes.empty()) {
    try {
      for (const auto& [in, out] : decodes) decode(in, out);
      return 0;
    } catch (const std::exception& e) {
      std::cerr << "error: " << e.what() << "\n";
      return 1;
    }
  }
  if (model.empty() || (inputs.empty() && !serving) || (serving && !inputs.empty())) {
    usage();
    return 2;
  }
  try {
    fastmlr::Classifier clf(model, sidecar, device);
    if (serving) return serve(clf);
    if (json) std::cerr << "fastmlr_classify: " << clf.provider() << "\n";
    const fastmlr::Sidecar& side = clf.sidecar();
    const int S = side.image_size;
    std::vector<float> batch;
    std::vector<std::string> names;
    for (const std::string& in : inputs) {
      if (in.size() > 4 && in.compare(in.size() - 4, 4, ".npy") == 0) {
        std::vector<int64_t> shape;
        std::vector<float> t = fastmlr::read_npy_f32(in, shape);
        if (shape.size() == 3) shape.insert(shape.begin(), 1);
        if (shape.size() != 4 || shape[1] != 3 || shape[2] != S || shape[3] != S) {
          std::ostringstream msg;
          msg << in << ": expected a float32 tensor [N, 3, " << S << ", " << S << "] (the sidecar's image size), found [";
          for (size_t k = 0; k < shape.size(); ++k) msg << (k ? ", " : "") << shape[k];
          throw std::runtime_error(msg.str() + "]");
        }
        batch.insert(batch.end(), t.begin(), t.end());
        for (int64_t k = 0; k < shape[0]; ++k) names.push_back(in + "[" + std::to_string(k) + "]");
      } else {
        std::vector<float> x = fastmlr::preprocess(fastmlr::read_image(in), side);
        batch.insert(batch.end(), x.begin(), x.end());
        names.push_back(in);
      }
    }
    const int n = static_cast<int>(names.size());
    std::vector<std::vector<float>> probs = clf.predict(batch, n);
    for (int i = 0; i < n; ++i) {
      const fastmlr::Prediction pred = clf.decide(probs[i]);
      if (json) {
        std::cout << record_json(names[i], pred, side) << "\n";
      } else {
        std::cout << names[i] << ":";
        for (const auto& l : pred.labels) std::cout << " " << l.name << " (" << std::setprecision(3) << l.score << ")";
        if (pred.labels.empty()) std::cout << " (no class at or above its threshold)";
        std::vector<size_t> order(pred.scores.size());
        for (size_t c = 0; c < order.size(); ++c) order[c] = c;
        std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return pred.scores[a] > pred.scores[b]; });
        std::cout << "\n    top:";
        for (int k = 0; k < top && k < static_cast<int>(order.size()); ++k)
          std::cout << " " << side.class_names[order[k]] << " " << std::setprecision(3) << pred.scores[order[k]];
        std::cout << "\n";
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
