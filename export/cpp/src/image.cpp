// Image decoding (binary PNM), Pillow-compatible bilinear resizing and normalisation.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "fastmlr/classifier.h"

namespace fastmlr {
namespace {

int pnm_int(std::istream& in, const std::string& path) {
  int c = in.peek();
  while (c != EOF && (std::isspace(c) || c == '#')) {
    if (c == '#') {
      std::string comment;
      std::getline(in, comment);
    } else {
      in.get();
    }
    c = in.peek();
  }
  int v = -1;
  if (!(in >> v) || v < 0) throw std::runtime_error(path + ": malformed PNM header");
  return v;
}

// Pillow's resampling weights for one axis (Resample.c, precompute_coeffs with the bilinear
// filter), then quantised to fixed point as its 8-bit path does.
constexpr int kPrecisionBits = 32 - 8 - 2;

struct Coeffs {
  std::vector<int> start, count;
  std::vector<int32_t> weights;  // count.max() per output pixel
  int stride = 0;
};

Coeffs coefficients(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;  // the triangle filter's support is 1
  Coeffs c;
  c.stride = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.start.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<size_t>(out_size) * c.stride, 0);
  std::vector<double> w(c.stride);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double total = 0.0;
    for (int x = 0; x < xmax; ++x) {
      double t = std::fabs((x + xmin - center + 0.5) * ss);
      w[x] = t < 1.0 ? 1.0 - t : 0.0;
      total += w[x];
    }
    for (int x = 0; x < xmax; ++x) {
      double k = total != 0.0 ? w[x] / total : 0.0;
      c.weights[static_cast<size_t>(xx) * c.stride + x] =
          static_cast<int32_t>(k < 0 ? -0.5 + k * (1 << kPrecisionBits) : 0.5 + k * (1 << kPrecisionBits));
    }
    c.start[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

uint8_t clip8(int64_t v) {
  v >>= kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

Image pass(const Image& in, int out_w, int out_h, bool horizontal) {
  const Coeffs c = horizontal ? coefficients(in.width, out_w) : coefficients(in.height, out_h);
  Image out{out_w, out_h, in.channels, std::vector<uint8_t>(static_cast<size_t>(out_w) * out_h * in.channels)};
  const int ch = in.channels;
  for (int y = 0; y < out_h; ++y) {
    for (int x = 0; x < out_w; ++x) {
      const int o = horizontal ? x : y;
      const int32_t* k = &c.weights[static_cast<size_t>(o) * c.stride];
      for (int b = 0; b < ch; ++b) {
        int64_t acc = 1 << (kPrecisionBits - 1);
        for (int i = 0; i < c.count[o]; ++i) {
          const int sx = horizontal ? c.start[o] + i : x;
          const int sy = horizontal ? y : c.start[o] + i;
          acc += static_cast<int64_t>(in.pixels[(static_cast<size_t>(sy) * in.width + sx) * ch + b]) * k[i];
        }
        out.pixels[(static_cast<size_t>(y) * out_w + x) * ch + b] = clip8(acc);
      }
    }
  }
  return out;
}

}  // namespace

Image read_pnm(const std::string& path) {
  check_regular_file(path, "image");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open image " + path);
  std::string magic(2, '\0');
  in.read(magic.data(), 2);
  if (magic != "P5" && magic != "P6")
    throw std::runtime_error(path + ": expected a binary PGM/PPM image (P5/P6), found magic '" + magic +
                             "' (convert other formats first, e.g. with PIL or ImageMagick)");
  Image img;
  img.channels = magic == "P6" ? 3 : 1;
  img.width = pnm_int(in, path);
  img.height = pnm_int(in, path);
  const int maxval = pnm_int(in, path);
  if (maxval != 255) throw std::runtime_error(path + ": expected maxval 255, found " + std::to_string(maxval));
  if (img.width < 1 || img.height < 1) throw std::runtime_error(path + ": empty image");
  if (static_cast<int64_t>(img.width) * img.height > kMaxImagePixels)  // before allocating what the header claims
    throw std::runtime_error(path + ": header claims " + std::to_string(img.width) + " x " + std::to_string(img.height) +
                             " pixels, over the limit of " + std::to_string(kMaxImagePixels));
  in.get();  // the single whitespace after maxval
  img.pixels.resize(static_cast<size_t>(img.width) * img.height * img.channels);
  in.read(reinterpret_cast<char*>(img.pixels.data()), static_cast<std::streamsize>(img.pixels.size()));
  if (in.gcount() != static_cast<std::streamsize>(img.pixels.size()))
    throw std::runtime_error(path + ": truncated pixel data");
  return img;
}

Image resize_bilinear(const Image& img, int size) {
  // Pillow 13 runs the vertical pass first when the width grows and the height shrinks (checked against
  // it on 700 size pairs: always so). When both shrink it also sometimes goes vertical first, by a rule
  // not reproduced here; the order moves a few pixels by one 8-bit level.
  const bool vertical_first = img.width < size && img.height > size;
  Image out = img;
  if (vertical_first) out = pass(out, out.width, size, false);
  if (out.width != size) out = pass(out, size, out.height, true);
  if (out.height != size) out = pass(out, out.width, size, false);
  return out;
}

std::vector<float> preprocess(const Image& img, const Sidecar& side) {
  const int S = side.image_size;
  const Image r = resize_bilinear(img, S);
  std::vector<float> chw(static_cast<size_t>(3) * S * S);
  for (int c = 0; c < 3; ++c) {
    const int src = r.channels == 1 ? 0 : c;
    for (int i = 0; i < S * S; ++i) {
      const float v = static_cast<float>(r.pixels[static_cast<size_t>(i) * r.channels + src]) / 255.0f;
      chw[static_cast<size_t>(c) * S * S + i] = (v - side.mean[c]) / side.std[c];
    }
  }
  return chw;
}

std::vector<float> read_npy_f32(const std::string& path, std::vector<int64_t>& shape) {
  check_regular_file(path, "tensor file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open tensor file " + path);
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path + ": not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    uint16_t n = 0;
    in.read(reinterpret_cast<char*>(&n), 2);
    header_len = n;
  } else {
    in.read(reinterpret_cast<char*>(&header_len), 4);
  }
  if (!in || header_len > (1u << 16))
    throw std::runtime_error(path + ": .npy header length " + std::to_string(header_len) + " is not plausible");
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  if (header.find("'descr': '<f4'") == std::string::npos)
    throw std::runtime_error(path + ": expected dtype float32 ('<f4'), header is " + header);
  if (header.find("'fortran_order': False") == std::string::npos)
    throw std::runtime_error(path + ": expected a C-ordered array");
  const size_t open = header.find("'shape': (");
  const size_t close = header.find(')', open);
  if (open == std::string::npos || close == std::string::npos) throw std::runtime_error(path + ": no shape in header");
  std::stringstream dims(header.substr(open + 10, close - open - 10));
  shape.clear();
  // The file's own size bounds what the header may claim: nothing is allocated beyond it.
  const std::streamoff here = in.tellg();
  in.seekg(0, std::ios::end);
  const uint64_t available = static_cast<uint64_t>(in.tellg() - here) / sizeof(float);
  in.seekg(here);
  uint64_t total = 1;
  for (std::string d; std::getline(dims, d, ',');) {
    if (d.find_first_not_of(' ') == std::string::npos) continue;
    const size_t first = d.find_first_not_of(' ');
    if (d.find_first_not_of("0123456789 ", first) != std::string::npos || d.size() - first > 12)
      throw std::runtime_error(path + ": shape entry '" + d + "' is not a dimension");
    shape.push_back(std::stoll(d));
    total *= static_cast<uint64_t>(shape.back());
    if (total > available)
      throw std::runtime_error(path + ": header claims more values than the file holds (" + std::to_string(available) +
                               " float32 values)");
  }
  std::vector<float> data(total);
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(total * sizeof(float)));
  if (in.gcount() != static_cast<std::streamsize>(total * sizeof(float))) throw std::runtime_error(path + ": truncated data");
  return data;
}

}  // namespace fastmlr
