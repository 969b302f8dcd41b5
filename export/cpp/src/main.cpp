// fastmlr_classify: multi-label classification of images with an exported fastmlr model.
//
//   fastmlr_classify MODEL.pt2|MODEL.plan [--sidecar FILE] [--json] [--top K] INPUT...
//
// INPUT: a binary PPM/PGM image (resized and normalised as the sidecar says), or a .npy float32
// tensor [N, 3, S, S] / [3, S, S] already normalised (what a service with its own decoder sends).
// Prints, per image, the labels at or above the sidecar's threshold; --json prints every probability.
#include <algorithm>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <numeric>
#include <sstream>

#include "fastmlr/classifier.h"

namespace {

void usage() {
  std::cerr << "usage: fastmlr_classify MODEL.pt2|MODEL.plan [--sidecar FILE] [--json] [--top K] "
               "IMAGE.ppm|IMAGE.pgm|TENSOR.npy ...\n";
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
    } else {
      o += c;
    }
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, sidecar;
  bool json = false;
  int top = 5;
  std::vector<std::string> inputs;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--sidecar" && i + 1 < argc) sidecar = argv[++i];
    else if (a == "--json") json = true;
    else if (a == "--top" && i + 1 < argc) top = std::stoi(argv[++i]);
    else if (a == "-h" || a == "--help") { usage(); return 0; }
    else if (model.empty()) model = a;
    else inputs.push_back(a);
  }
  if (model.empty() || inputs.empty()) {
    usage();
    return 2;
  }
  try {
    const fastmlr::Sidecar side = fastmlr::read_sidecar(sidecar.empty() ? model + ".json" : sidecar);
    const int S = side.image_size;
    const size_t per_image = static_cast<size_t>(3) * S * S;
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
        std::vector<float> x = fastmlr::preprocess(fastmlr::read_pnm(in), side);
        batch.insert(batch.end(), x.begin(), x.end());
        names.push_back(in);
      }
    }
    auto clf = fastmlr::load_classifier(model, side);
    const int n = static_cast<int>(names.size());
    const int step = side.max_batch > 0 ? side.max_batch : n;
    std::vector<std::vector<float>> probs;
    for (int start = 0; start < n; start += step) {
      const int m = std::min(step, n - start);
      std::vector<float> chunk(batch.begin() + start * per_image, batch.begin() + (start + m) * per_image);
      auto p = clf->predict(chunk, m);
      probs.insert(probs.end(), p.begin(), p.end());
    }
    std::cout << std::setprecision(9);
    for (int i = 0; i < n; ++i) {
      const auto& p = probs[i];
      std::vector<size_t> order(p.size());
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] > p[b]; });
      if (json) {
        std::cout << "{\"input\": \"" << json_escape(names[i]) << "\", \"provider\": \"" << clf->provider()
                  << "\", \"probs\": [";
        for (size_t c = 0; c < p.size(); ++c) std::cout << (c ? ", " : "") << p[c];
        std::cout << "], \"labels\": [";
        bool first = true;
        for (size_t c : order)
          if (p[c] >= side.threshold) {
            std::cout << (first ? "" : ", ") << "\"" << json_escape(side.class_names[c]) << "\"";
            first = false;
          }
        std::cout << "]}\n";
      } else {
        std::cout << names[i] << ":";
        bool any = false;
        for (size_t c : order)
          if (p[c] >= side.threshold) {
            std::cout << " " << side.class_names[c] << " (" << std::setprecision(3) << p[c] << ")";
            any = true;
          }
        if (!any) std::cout << " (none above threshold " << side.threshold << ")";
        std::cout << "\n    top:";
        for (int k = 0; k < top && k < static_cast<int>(order.size()); ++k)
          std::cout << " " << side.class_names[order[k]] << " " << std::setprecision(3) << p[order[k]];
        std::cout << std::setprecision(9) << "\n";
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
