// fastmlr C++ service library, its one public header.
//
//   fastmlr::Classifier clf("out/srdl.pt2");                     // sidecar: out/srdl.pt2.json
//   for (const auto& r : clf.classify_files({"a.jpg", "b.png"}))  // per-file errors, never throws for one
//     if (r.ok()) for (const auto& l : r.prediction.labels) std::cout << l.name << " " << l.score << "\n";
//
// Images are decoded as fastmlr's Python runtime reads them (Pillow's open + convert("RGB")): JPEG
// through libjpeg-turbo with its default decoder settings, PNG through libpng, binary PPM/PGM; EXIF
// orientation is applied (as Pillow's ImageOps.exif_transpose would). They are resized with Pillow's
// antialiased bilinear filter and normalised with the sidecar's mean and std. A class is a label when
// its probability is at or above its threshold: the sidecar's "thresholds" (one per class) when present,
// else its single "threshold". The model runs through libtorch (AOTInductor .pt2 package, CPU) or
// TensorRT (.plan/.engine, where the library was built with TensorRT).
#pragma once

#include <array>
#include <cstddef>
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
  float threshold = 0.5f;          // the single decision threshold
  std::vector<float> thresholds;   // one per class when the sidecar has "thresholds", else empty
  std::string format;              // "aoti" | "tensorrt" | "onnx"
  std::string precision;           // "fp32" | "fp16"
  int max_batch = 0;
  std::string sha256;              // the artefact's, from "artifact": checked by the Classifier when present

  // The threshold class C is decided with.
  float threshold_for(size_t c) const { return thresholds.empty() ? threshold : thresholds.at(c); }
};

// Bounds on what a file may claim: the model's input side (as fastmlr.engine.MAX_IMAGE_SIZE), and an
// image's decoded pixels (Pillow's DecompressionBombError limit), checked before anything is allocated.
constexpr int kMaxImageSize = 4096;
constexpr int64_t kMaxImagePixels = 2 * 89478485;

// Reads PATH (JSON), checks its integrity record (a sidecar edited after export is refused, naming the
// fields, as fastmlr.runtime does). Throws std::runtime_error naming the file and what is wrong.
Sidecar read_sidecar(const std::string& path);

// The hex sha256 of a file's bytes; throws naming the file when it is missing or not a regular file.
std::string file_sha256(const std::string& path);
// Throws std::runtime_error naming PATH (and WHAT it is) unless it is an existing regular file (a FIFO
// would block the reader).
void check_regular_file(const std::string& path, const std::string& what);

// An 8-bit image, interleaved channels, row-major. Decoders return channels == 3 (RGB); classify()
// also takes channels == 1 (grey, copied to R, G and B).
struct Image {
  int width = 0, height = 0, channels = 3;
  std::vector<uint8_t> pixels;  // width * height * channels bytes
};

// Reads a JPEG, PNG or binary PPM/PGM file (chosen by its first bytes, not its name) as RGB with EXIF
// orientation applied. Throws std::runtime_error naming the file and what is wrong with it.
Image read_image(const std::string& path);
// The same from bytes in memory (what a service receives); NAME is used in error messages.
Image decode_image(const uint8_t* data, size_t size, const std::string& name = "image");

// Binary PNM: P5 (grey, returned with 1 channel) or P6 (RGB), maxval 255.
Image read_pnm(const std::string& path);

// Resize to size x size with Pillow's antialiased bilinear filter (what torchvision's Resize does to
// PIL images), 8-bit fixed point as Pillow computes it, in the order of passes Pillow 13 uses except
// for some downscales in both directions (a few pixels then differ by one level).
Image resize_bilinear(const Image& img, int size);

// Image -> float32 [3, S, S]: grey is copied to 3 channels, x/255, then (x - mean) / std per channel.
std::vector<float> preprocess(const Image& img, const Sidecar& side);

// A float32 NumPy array file (.npy, little-endian '<f4', C order); returns data and shape.
std::vector<float> read_npy_f32(const std::string& path, std::vector<int64_t>& shape);

struct Label {
  std::string name;
  float score = 0;
};

struct Prediction {
  std::vector<float> scores;  // the model's probability per class, in class_names order
  std::vector<Label> labels;  // classes at or above their threshold, highest score first
};

struct FileResult {
  std::string path;
  std::string error;  // empty when the file was read and classified
  Prediction prediction;
  bool ok() const { return error.empty(); }
};

class Classifier {
 public:
  // ARTEFACT: .pt2 (AOTInductor, runs on the CPU) or .plan/.engine (TensorRT, on GPU CUDA_DEVICE,
  // which is made current around each call). SIDECAR: empty = ARTEFACT + ".json".
  // Throws std::runtime_error naming the file when either cannot be loaded.
  explicit Classifier(const std::string& artefact, const std::string& sidecar = "", int cuda_device = 0);
  ~Classifier();
  Classifier(Classifier&&) noexcept;
  Classifier& operator=(Classifier&&) noexcept;

  const Sidecar& sidecar() const;
  const std::vector<std::string>& class_names() const;
  std::string provider() const;  // "aotinductor:cpu" | "tensorrt:cuda:N"

  // Decoded images (any size; resized here), in batches of at most the sidecar's max batch.
  std::vector<Prediction> classify(const std::vector<Image>& images);
  // Files: one result per path, in order; an unreadable file gets an error, the others still run.
  std::vector<FileResult> classify_files(const std::vector<std::string>& paths);
  // Already normalised float32 [n, 3, S, S] -> probabilities [n][C].
  std::vector<std::vector<float>> predict(const std::vector<float>& batch, int n);
  // Scores of one image -> labels, with the sidecar's thresholds.
  Prediction decide(std::vector<float> scores) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fastmlr
