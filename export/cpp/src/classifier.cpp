// Model loading: AOTInductor packages through libtorch; TensorRT engines when built with TensorRT.
// ATen only (not torch/torch.h): the package needs tensors, not the autograd or nn front end,
// and the lighter headers compile much faster.
#include <ATen/ATen.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include "fastmlr/classifier.h"

#ifdef FASTMLR_WITH_TENSORRT
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <fstream>
#include <iostream>
#endif

namespace fastmlr {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::vector<std::vector<float>> rows(const at::Tensor& probs) {
  at::Tensor p = probs.to(at::kCPU, at::kFloat).contiguous();
  const int64_t n = p.size(0), c = p.size(1);
  const float* d = p.data_ptr<float>();
  std::vector<std::vector<float>> out(n);
  for (int64_t i = 0; i < n; ++i) out[i].assign(d + i * c, d + (i + 1) * c);
  return out;
}

// The package's outputs are (logits, probs), in the order fastmlr.export wrote them.
class AotiClassifier : public Classifier {
 public:
  AotiClassifier(const std::string& path, const Sidecar& side) : loader_(path), side_(side) {}

  std::vector<std::vector<float>> predict(const std::vector<float>& batch, int n) override {
    const int64_t S = side_.image_size;
    if (batch.size() != static_cast<size_t>(n) * 3 * S * S)
      throw std::runtime_error("batch holds " + std::to_string(batch.size()) + " values, expected " +
                               std::to_string(n) + " x 3 x " + std::to_string(S) + " x " + std::to_string(S));
    // from_blob does not own the memory; clone so the model may keep or modify its input.
    at::Tensor x = at::from_blob(const_cast<float*>(batch.data()), {n, 3, S, S}, at::kFloat).clone();
    std::vector<at::Tensor> out = loader_.run({x});
    if (out.size() != 2) throw std::runtime_error("expected 2 outputs (logits, probs), got " + std::to_string(out.size()));
    return rows(out[1]);
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

// TensorRT 10/11 I/O by tensor name: setInputShape, setTensorAddress, enqueueV3.
class TrtClassifier : public Classifier {
 public:
  TrtClassifier(const std::string& path, const Sidecar& side) : side_(side) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count < 1)
      throw std::runtime_error("TensorRT engine " + path + " needs an NVIDIA GPU; none was found");
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open engine " + path);
    std::vector<char> blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) throw std::runtime_error("TensorRT could not deserialize " + path);
    context_.reset(engine_->createExecutionContext());
    cuda_check(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }
  ~TrtClassifier() override {
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::vector<std::vector<float>> predict(const std::vector<float>& batch, int n) override {
    const int S = side_.image_size;
    const size_t C = side_.class_names.size();
    context_->setInputShape("images", nvinfer1::Dims4{n, 3, S, S});
    void *d_in = nullptr, *d_logits = nullptr, *d_probs = nullptr;
    std::vector<float> probs(static_cast<size_t>(n) * C);
    try {
      cuda_check(cudaMalloc(&d_in, batch.size() * sizeof(float)), "cudaMalloc");
      cuda_check(cudaMalloc(&d_logits, probs.size() * sizeof(float)), "cudaMalloc");
      cuda_check(cudaMalloc(&d_probs, probs.size() * sizeof(float)), "cudaMalloc");
      cuda_check(cudaMemcpyAsync(d_in, batch.data(), batch.size() * sizeof(float), cudaMemcpyHostToDevice, stream_),
                 "copy in");
      context_->setTensorAddress("images", d_in);
      context_->setTensorAddress("logits", d_logits);
      context_->setTensorAddress("probs", d_probs);
      if (!context_->enqueueV3(stream_)) throw std::runtime_error("TensorRT enqueueV3 failed");
      cuda_check(cudaMemcpyAsync(probs.data(), d_probs, probs.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_),
                 "copy out");
      cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    } catch (...) {
      cudaFree(d_in), cudaFree(d_logits), cudaFree(d_probs);
      throw;
    }
    cudaFree(d_in), cudaFree(d_logits), cudaFree(d_probs);
    std::vector<std::vector<float>> out(n);
    for (int i = 0; i < n; ++i) out[i].assign(probs.begin() + i * C, probs.begin() + (i + 1) * C);
    return out;
  }
  std::string provider() const override { return "tensorrt"; }

 private:
  Logger logger_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  cudaStream_t stream_ = nullptr;
  Sidecar side_;
};
#endif

}  // namespace

std::unique_ptr<Classifier> load_classifier(const std::string& model_path, const Sidecar& side) {
  if (ends_with(model_path, ".pt2")) {
    if (side.format != "aoti") throw std::runtime_error(model_path + ": sidecar says format '" + side.format + "', not 'aoti'");
    return std::make_unique<AotiClassifier>(model_path, side);
  }
  if (ends_with(model_path, ".plan") || ends_with(model_path, ".engine")) {
#ifdef FASTMLR_WITH_TENSORRT
    if (side.format != "tensorrt")
      throw std::runtime_error(model_path + ": sidecar says format '" + side.format + "', not 'tensorrt'");
    return std::make_unique<TrtClassifier>(model_path, side);
#else
    throw std::runtime_error(model_path + ": this build has no TensorRT (CMake did not find it); rebuild with "
                             "-DTENSORRT_ROOT=... on a host with TensorRT, or use the .pt2 package");
#endif
  }
  throw std::runtime_error(model_path + ": unknown model type; expected .pt2 (AOTInductor) or .plan/.engine (TensorRT)");
}

}  // namespace fastmlr
