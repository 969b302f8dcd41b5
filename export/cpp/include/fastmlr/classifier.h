// fastmlr C++ service library: read an exported model's sidecar, decode and preprocess images the
// way fastmlr's Python runtime does, and run the model (AOTInductor package on the CPU through
// libtorch; TensorRT engine where TensorRT was found at configure time).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace fastmlr {

// What fastmlr.export writes beside every artefact (ARTEFACT.json), reduced to what a service needs.
struct Sidecar {
  std::vector<std::string> class_names;
  int image_size = 0;
  std::array<float, 3> mean{};
  std::array<float, 3> std{};
  float threshold = 0.5f;
  std::string format;     // "aoti" | "tensorrt" | "onnx"
  std::string precision;  // "fp32" | "fp16"
  int max_batch = 0;
};

// Reads PATH (JSON). Throws std::runtime_error naming the file and the missing or malformed field.
Sidecar read_sidecar(const std::string& path);

// An 8-bit image, interleaved channels (1 = grey, 3 = RGB), row-major.
struct Image {
  int width = 0, height = 0, channels = 0;
  std::vector<uint8_t> pixels;
};

// Binary PNM: P5 (grey) or P6 (RGB), maxval 255. Throws naming the file on anything else.
Image read_pnm(const std::string& path);

// Resize to size x size with Pillow's antialiased bilinear filter (what torchvision's Resize does to
// PIL images), 8-bit fixed point as Pillow computes it, horizontal pass then vertical.
Image resize_bilinear(const Image& img, int size);

// Image -> float32 [3, S, S]: grey is copied to 3 channels, x/255, then (x - mean) / std per channel.
std::vector<float> preprocess(const Image& img, const Sidecar& side);

// A float32 NumPy array file (.npy, little-endian '<f4', C order); returns data and shape.
std::vector<float> read_npy_f32(const std::string& path, std::vector<int64_t>& shape);

// A loaded model: batch [N, 3, S, S] float32 (N * 3 * S * S values) -> probabilities [N, C].
class Classifier {
 public:
  virtual ~Classifier() = default;
  virtual std::vector<std::vector<float>> predict(const std::vector<float>& batch, int n) = 0;
  virtual std::string provider() const = 0;
};

// Chooses by extension: .pt2 (AOTInductor) or .plan/.engine (TensorRT, if built with it).
std::unique_ptr<Classifier> load_classifier(const std::string& model_path, const Sidecar& side);

}  // namespace fastmlr
