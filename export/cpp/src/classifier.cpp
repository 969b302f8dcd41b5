// The Classifier: a sidecar, a model backend (AOTInductor package through libtorch; TensorRT engine
// when built with TensorRT), batching and the per-class decision.
// ATen only (not torch/torch.h): the package needs tensors, not the autograd or nn front end,
// and the lighter headers compile much faster.
#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "fastmlr/classifier.h"

#ifdef FASTMLR_WITH_TENSORRT
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <fstream>
#include <iostream>
#include <iterator>
#endif

namespace fastmlr {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string shape_str(const std::vector<int64_t>& d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

class Backend {
 public:
  virtual ~Backend() = default;
  // Normalised float32 [n, 3, S, S] -> probabilities [n][C]; n is within the artefact's batch range.
  virtual std::vector<std::vector<float>> run(const std::vector<float>& batch, int n) = 0;
  virtual std::string provider() const = 0;
};

// The package's outputs are (logits, probs), in the order fastmlr.export wrote them.
class AotiBackend : public Backend {
 public:
  AotiBackend(const std::string& path, const Sidecar& side) : loader_(path), side_(side) {}

  std::vector<std::vector<float>> run(const std::vector<float>& batch, int n) override {
    const int64_t S = side_.image_size;
    // from_blob does not own the memory; clone so the model may keep or modify its input.
    at::Tensor x = at::from_blob(const_cast<float*>(batch.data()), {n, 3, S, S}, at::kFloat).clone();
    std::vector<at::Tensor> out = loader_.run({x});
    if (out.size() != 2) throw std::runtime_error("expected 2 outputs (logits, probs), got " + std::to_string(out.size()));
    at::Tensor p = out[1].to(at::kCPU, at::kFloat).contiguous();
    const int64_t C = static_cast<int64_t>(side_.class_names.size());
    if (p.dim() != 2 || p.size(0) != n || p.size(1) != C)
      throw std::runtime_error("the package returned probs of shape " + shape_str(p.sizes().vec()) + ", expected [" +
                               std::to_string(n) + ", " + std::to_string(C) + "] (the sidecar's class count)");
    const float* d = p.data_ptr<float>();
    std::vector<std::vector<float>> rows(n);
    for (int64_t i = 0; i < n; ++i) rows[i].assign(d + i * C, d + (i + 1) * C);
    return rows;
  }
  std::string provider() const override { return "aotinductor:cpu"; }

 private:
  torch::inductor::AOTIModelPackageLoader loader_;
  Sidecar side_;
};

#ifdef FASTMLR_WITH_TENSORRT
class Logger : public nvinfer1::ILogger {
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "TensorRT: " << msg << "\n";
  }
};

void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// Makes DEVICE current for its lifetime and restores the caller's device after, so a service that
// runs other CUDA work on another GPU keeps its own current device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    cuda_check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device) cuda_check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

std::vector<int64_t> dims(const nvinfer1::Dims& d) {
  return std::vector<int64_t>(d.d, d.d + std::max(d.nbDims, 0));
}

const char* dtype_name(nvinfer1::DataType t) {
  switch (t) {
    case nvinfer1::DataType::kFLOAT: return "float32";
    case nvinfer1::DataType::kHALF: return "float16";
    case nvinfer1::DataType::kBF16: return "bfloat16";
    case nvinfer1::DataType::kINT8: return "int8";
    case nvinfer1::DataType::kINT32: return "int32";
    case nvinfer1::DataType::kINT64: return "int64";
    case nvinfer1::DataType::kBOOL: return "bool";
    default: return "another type";
  }
}

// Device buffers freed on every path out of run().
struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) { cuda_check(cudaMalloc(&ptr, bytes), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

// TensorRT 10/11 I/O by tensor name: setInputShape, setTensorAddress, enqueueV3. The engine's I/O is
// checked once at load (names, directions, float32 types, device location, a batch profile), and each
// call's batch against the profile, so a mismatch is reported as such and not as a CUDA fault.
class TrtBackend : public Backend {
 public:
  TrtBackend(const std::string& path, const Sidecar& side, int device) : side_(side), device_(device) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count < 1)
      throw std::runtime_error("TensorRT engine " + path + " needs an NVIDIA GPU; none was found");
    if (device < 0 || device >= count)
      throw std::runtime_error(path + ": device cuda:" + std::to_string(device) + " requested, but " +
                               std::to_string(count) + " GPU(s) are visible (cuda:0 .. cuda:" +
                               std::to_string(count - 1) + ")");
    DeviceGuard guard(device_);
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open engine " + path);
    std::vector<char> blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) throw std::runtime_error("TensorRT could not create a runtime");
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) throw std::runtime_error("TensorRT could not deserialize " + path);
    check_io(path);
    context_.reset(engine_->createExecutionContext());
    if (!context_) throw std::runtime_error("TensorRT could not create an execution context for " + path);
    cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }
  ~TrtBackend() override {
    if (stream_) {
      cudaSetDevice(device_);
      cudaStreamDestroy(stream_);
    }
  }

  std::vector<std::vector<float>> run(const std::vector<float>& batch, int n) override {
    const int S = side_.image_size;
    const size_t C = side_.class_names.size();
    if (n < min_batch_ || n > max_batch_)
      throw std::runtime_error("batch of " + std::to_string(n) + " is outside the engine's profile (" +
                               std::to_string(min_batch_) + " .. " + std::to_string(max_batch_) + ")");
    DeviceGuard guard(device_);
    if (!context_->setInputShape("images", nvinfer1::Dims4{n, 3, S, S}))
      throw std::runtime_error("TensorRT refused input shape [" + std::to_string(n) + ", 3, " + std::to_string(S) +
                               ", " + std::to_string(S) + "] for 'images'");
    for (const char* name : {"logits", "probs"}) {
      const std::vector<int64_t> got = dims(context_->getTensorShape(name));
      if (got != std::vector<int64_t>{n, static_cast<int64_t>(C)})
        throw std::runtime_error(std::string("engine output '") + name + "' has shape " + shape_str(got) +
                                 ", expected [" + std::to_string(n) + ", " + std::to_string(C) +
                                 "] (the sidecar's class count)");
    }
    std::vector<float> probs(static_cast<size_t>(n) * C);
    DeviceBuffer d_in(batch.size() * sizeof(float)), d_logits(probs.size() * sizeof(float)),
        d_probs(probs.size() * sizeof(float));
    cuda_check(cudaMemcpyAsync(d_in.ptr, batch.data(), batch.size() * sizeof(float), cudaMemcpyHostToDevice, stream_),
               "copy in");
    if (!context_->setTensorAddress("images", d_in.ptr) || !context_->setTensorAddress("logits", d_logits.ptr) ||
        !context_->setTensorAddress("probs", d_probs.ptr))
      throw std::runtime_error("TensorRT refused a tensor address (images, logits or probs)");
    if (!context_->allInputDimensionsSpecified()) throw std::runtime_error("TensorRT: input dimensions not all set");
    if (!context_->enqueueV3(stream_)) throw std::runtime_error("TensorRT enqueueV3 failed");
    cuda_check(cudaMemcpyAsync(probs.data(), d_probs.ptr, probs.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_),
               "copy out");
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    std::vector<std::vector<float>> out(n);
    for (int i = 0; i < n; ++i) out[i].assign(probs.begin() + i * C, probs.begin() + (i + 1) * C);
    return out;
  }
  std::string provider() const override { return "tensorrt:cuda:" + std::to_string(device_); }

 private:
  void check_io(const std::string& path) {
    struct Want {
      const char* name;
      nvinfer1::TensorIOMode mode;
    };
    const Want wants[] = {{"images", nvinfer1::TensorIOMode::kINPUT},
                          {"logits", nvinfer1::TensorIOMode::kOUTPUT},
                          {"probs", nvinfer1::TensorIOMode::kOUTPUT}};
    for (const Want& w : wants) {
      bool found = false;
      for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i)
        found = found || std::string(engine_->getIOTensorName(i)) == w.name;
      if (!found) throw std::runtime_error(path + ": engine has no tensor '" + w.name + "' (expected images -> logits, probs)");
      if (engine_->getTensorIOMode(w.name) != w.mode)
        throw std::runtime_error(path + ": engine tensor '" + w.name + "' is not an " +
                                 (w.mode == nvinfer1::TensorIOMode::kINPUT ? "input" : "output"));
      const nvinfer1::DataType t = engine_->getTensorDataType(w.name);
      if (t != nvinfer1::DataType::kFLOAT)
        throw std::runtime_error(path + ": engine tensor '" + w.name + "' is " + dtype_name(t) +
                                 ", expected float32 (export keeps float32 I/O; rebuild the engine from its ONNX graph)");
      if (engine_->getTensorLocation(w.name) != nvinfer1::TensorLocation::kDEVICE)
        throw std::runtime_error(path + ": engine tensor '" + w.name + "' is not in device memory");
    }
    const int S = side_.image_size;
    const std::vector<int64_t> lo = dims(engine_->getProfileShape("images", 0, nvinfer1::OptProfileSelector::kMIN));
    const std::vector<int64_t> hi = dims(engine_->getProfileShape("images", 0, nvinfer1::OptProfileSelector::kMAX));
    if (lo.size() != 4 || hi.size() != 4 || lo[1] != 3 || lo[2] != S || lo[3] != S || hi[2] != S || hi[3] != S)
      throw std::runtime_error(path + ": engine's 'images' profile is " + shape_str(lo) + " .. " + shape_str(hi) +
                               ", expected [N, 3, " + std::to_string(S) + ", " + std::to_string(S) +
                               "] (the sidecar's image size)");
    min_batch_ = static_cast<int>(lo[0]);
    max_batch_ = static_cast<int>(hi[0]);
  }

  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  cudaStream_t stream_ = nullptr;
  Sidecar side_;
  int device_ = 0;
  int min_batch_ = 1, max_batch_ = 1;
};
#endif

std::unique_ptr<Backend> load_backend(const std::string& model_path, const Sidecar& side, int cuda_device) {
  if (ends_with(model_path, ".pt2")) {
    if (side.format != "aoti") throw std::runtime_error(model_path + ": sidecar says format '" + side.format + "', not 'aoti'");
    try {
      return std::make_unique<AotiBackend>(model_path, side);
    } catch (const std::exception& e) {  // c10::Error: a multi-line C++ stack; its first line says what failed
      std::string what = e.what();
      throw std::runtime_error("cannot load the AOTInductor package " + model_path + ": " +
                               what.substr(0, what.find('\n')));
    }
  }
  if (ends_with(model_path, ".plan") || ends_with(model_path, ".engine")) {
#ifdef FASTMLR_WITH_TENSORRT
    if (side.format != "tensorrt")
      throw std::runtime_error(model_path + ": sidecar says format '" + side.format + "', not 'tensorrt'");
    return std::make_unique<TrtBackend>(model_path, side, cuda_device);
#else
    (void)cuda_device;
    throw std::runtime_error(model_path + ": this build has no TensorRT (CMake did not find it); rebuild with "
                             "-DTENSORRT_ROOT=... on a host with TensorRT, or use the .pt2 package");
#endif
  }
  throw std::runtime_error(model_path + ": unknown model type; expected .pt2 (AOTInductor) or .plan/.engine (TensorRT)");
}

}  // namespace

struct Classifier::Impl {
  Sidecar side;
  std::unique_ptr<Backend> backend;
};

Classifier::Classifier(const std::string& artefact, const std::string& sidecar, int cuda_device)
    : impl_(std::make_unique<Impl>()) {
  check_regular_file(artefact, "artefact");
  const std::string side_path = sidecar.empty() ? artefact + ".json" : sidecar;
  impl_->side = read_sidecar(side_path);
  // As fastmlr.runtime.load: the sidecar must be the one written for this very file.
  if (!impl_->side.sha256.empty() && file_sha256(artefact) != impl_->side.sha256)
    throw std::runtime_error(artefact + ": sha256 differs from its sidecar's (" + impl_->side.sha256.substr(0, 12) +
                             "...): the sidecar " + side_path + " was written for another file (re-export, or copy "
                             "the sidecar that came with it)");
  impl_->backend = load_backend(artefact, impl_->side, cuda_device);
}
Classifier::~Classifier() = default;
Classifier::Classifier(Classifier&&) noexcept = default;
Classifier& Classifier::operator=(Classifier&&) noexcept = default;

const Sidecar& Classifier::sidecar() const { return impl_->side; }
const std::vector<std::string>& Classifier::class_names() const { return impl_->side.class_names; }
std::string Classifier::provider() const { return impl_->backend->provider(); }

std::vector<std::vector<float>> Classifier::predict(const std::vector<float>& batch, int n) {
  const int64_t S = impl_->side.image_size;
  const size_t per_image = static_cast<size_t>(3) * S * S;
  if (n < 1 || batch.size() != static_cast<size_t>(n) * per_image)
    throw std::runtime_error("batch holds " + std::to_string(batch.size()) + " values, expected " + std::to_string(n) +
                             " x 3 x " + std::to_string(S) + " x " + std::to_string(S) + " (n >= 1)");
  // As the Python runners: NaN or inf pixels would give NaN probabilities and no label without a word.
  for (size_t k = 0; k < batch.size(); ++k)
    if (!std::isfinite(batch[k]))
      throw std::runtime_error("image " + std::to_string(k / per_image) + " of the batch holds NaN/inf values; its "
                               "probabilities would be NaN: fix the input or its normalisation");
  const int step = impl_->side.max_batch > 0 ? impl_->side.max_batch : std::max(n, 1);
  std::vector<std::vector<float>> probs;
  probs.reserve(n);
  for (int start = 0; start < n; start += step) {
    const int m = std::min(step, n - start);
    std::vector<float> chunk(batch.begin() + start * per_image, batch.begin() + (start + m) * per_image);
    auto p = impl_->backend->run(chunk, m);
    probs.insert(probs.end(), std::make_move_iterator(p.begin()), std::make_move_iterator(p.end()));
  }
  return probs;
}

Prediction Classifier::decide(std::vector<float> scores) const {
  const Sidecar& s = impl_->side;
  if (scores.size() != s.class_names.size())
    throw std::runtime_error("got " + std::to_string(scores.size()) + " scores for " +
                             std::to_string(s.class_names.size()) + " classes");
  std::vector<size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
  Prediction out;
  for (size_t c : order)
    if (scores[c] >= s.threshold_for(c)) out.labels.push_back({s.class_names[c], scores[c]});
  out.scores = std::move(scores);
  return out;
}

std::vector<Prediction> Classifier::classify(const std::vector<Image>& images) {
  std::vector<float> batch;
  for (size_t i = 0; i < images.size(); ++i) {
    const Image& im = images[i];
    if ((im.channels != 3 && im.channels != 1) || im.width < 1 || im.height < 1 ||
        im.pixels.size() != static_cast<size_t>(im.width) * im.height * im.channels)
      throw std::runtime_error("image " + std::to_string(i) + ": expected width x height x 3 (or 1) bytes, got " +
                               std::to_string(im.pixels.size()) + " bytes for " + std::to_string(im.width) + " x " +
                               std::to_string(im.height) + " x " + std::to_string(im.channels));
    std::vector<float> x = preprocess(im, impl_->side);
    batch.insert(batch.end(), x.begin(), x.end());
  }
  std::vector<Prediction> out;
  for (auto& p : predict(batch, static_cast<int>(images.size()))) out.push_back(decide(std::move(p)));
  return out;
}

std::vector<FileResult> Classifier::classify_files(const std::vector<std::string>& paths) {
  std::vector<FileResult> results(paths.size());
  std::vector<Image> images;
  std::vector<size_t> where;
  for (size_t i = 0; i < paths.size(); ++i) {
    results[i].path = paths[i];
    try {
      images.push_back(read_image(paths[i]));
      where.push_back(i);
    } catch (const std::exception& e) {
      results[i].error = e.what();
    }
  }
  if (images.empty()) return results;
  try {
    std::vector<Prediction> preds = classify(images);
    for (size_t k = 0; k < where.size(); ++k) results[where[k]].prediction = std::move(preds[k]);
  } catch (const std::exception& e) {
    for (size_t i : where) results[i].error = std::string("model: ") + e.what();
  }
  return results;
}

}  // namespace fastmlr
