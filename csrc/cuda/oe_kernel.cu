// CUDA kernels of object erasing (SRDL eq. 7-10, docs/srdl.md "Object erasing").
// Same rule as the CPU kernel: both call oe_axis_run from csrc/car_math.h.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "car_math.h"
#include "checks.h"

namespace fastmlr {
namespace {

constexpr int kThreads = 256;
constexpr int kBoxThreads = 128;
// Both marginals of one map live in shared memory.
constexpr int64_t kMaxMarginalBytes = 48 * 1024;

// One block per map: the threads build the marginals, one thread runs the rule
// (a scan of H + W values, sequential by nature and tiny).
template <typename scalar_t>
__global__ void oe_boxes_kernel(const scalar_t* __restrict__ sa, int64_t H, int64_t W, double alpha,
                                int64_t* __restrict__ boxes) {
  using op_t = at::opmath_type<scalar_t>;
  extern __shared__ unsigned char smem[];
  scalar_t* mx = reinterpret_cast<scalar_t*>(smem);
  scalar_t* my = mx + W;
  __shared__ int non_finite;  // a map holding a NaN or an infinity gets no box (the documented rule)
  const int64_t m = blockIdx.x;
  const scalar_t* map = sa + m * H * W;
  if (threadIdx.x == 0) non_finite = 0;
  __syncthreads();
  for (int64_t x = threadIdx.x; x < W; x += blockDim.x) {
    scalar_t best = map[x];
    bool finite = is_finite(static_cast<op_t>(best));
    for (int64_t y = 1; y < H; ++y) {
      const scalar_t v = map[y * W + x];
      finite = finite && is_finite(static_cast<op_t>(v));
      best = static_cast<op_t>(v) > static_cast<op_t>(best) ? v : best;
    }
    mx[x] = best;
    if (!finite) non_finite = 1;  // every writer stores the same value
  }
  for (int64_t y = threadIdx.x; y < H; y += blockDim.x) {
    scalar_t best = map[y * W];
    for (int64_t x = 1; x < W; ++x) {
      const scalar_t v = map[y * W + x];
      best = static_cast<op_t>(v) > static_cast<op_t>(best) ? v : best;
    }
    my[y] = best;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t x0, x1, y0, y1;
    bool fx, fy;
    oe_axis_run<scalar_t, op_t>(mx, W, alpha, &x0, &x1, &fx);
    oe_axis_run<scalar_t, op_t>(my, H, alpha, &y0, &y1, &fy);
    const bool flat = fx || fy || non_finite;
    int64_t* box = boxes + m * 4;
    box[0] = flat ? -1 : x0;
    box[1] = flat ? -1 : x1;
    box[2] = flat ? -1 : y0;
    box[3] = flat ? -1 : y1;
  }
}

template <typename scalar_t>
__global__ void oe_erase_kernel(const scalar_t* __restrict__ sa, const int64_t* __restrict__ boxes, int64_t total,
                                int64_t H, int64_t W, scalar_t* __restrict__ out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t x = i % W, y = (i / W) % H, m = i / (H * W);
    out[i] = in_box(x, y, boxes + m * 4) ? scalar_t(0) : sa[i];
  }
}

at::Tensor oe_boxes_cuda(const at::Tensor& sa_, double alpha) {
  check_maps("oe_boxes", sa_);
  TORCH_CHECK(alpha > 0.0 && alpha <= 1.0, "oe_boxes: alpha must be in (0, 1], got ", alpha);
  const int64_t N = sa_.size(0), K = sa_.size(1), H = sa_.size(2), W = sa_.size(3);
  TORCH_CHECK(H >= 1 && W >= 1, "oe_boxes: sa must have H, W >= 1, got shape ", sa_.sizes());
  const int64_t smem = (H + W) * static_cast<int64_t>(sa_.element_size());
  TORCH_CHECK(smem <= kMaxMarginalBytes, "oe_boxes: maps of H + W = ", H + W, " exceed the CUDA kernel's limit of ",
              kMaxMarginalBytes / sa_.element_size(), " (shape ", sa_.sizes(), ")");
  c10::cuda::CUDAGuard guard(sa_.device());
  const auto sa = sa_.contiguous();
  auto boxes = at::empty({N, K, 4}, sa.options().dtype(at::kLong));
  if (boxes.numel() == 0) return boxes;
  TORCH_CHECK(N * K <= 0x7fffffff, "oe_boxes: N * K = ", N * K, " maps exceed the CUDA grid");
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sa.scalar_type(), "oe_boxes_cuda", [&] {
    oe_boxes_kernel<scalar_t><<<static_cast<unsigned int>(N * K), kBoxThreads, smem, stream>>>(
        sa.const_data_ptr<scalar_t>(), H, W, alpha, boxes.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return boxes;
}

at::Tensor oe_erase_cuda(const at::Tensor& sa_, const at::Tensor& boxes_) {
  check_maps("oe_erase", sa_);
  check_boxes("oe_erase", sa_, boxes_);
  c10::cuda::CUDAGuard guard(sa_.device());
  const int64_t H = sa_.size(2), W = sa_.size(3);
  const auto sa = sa_.contiguous();
  const auto boxes = boxes_.contiguous();
  auto out = at::empty_like(sa, at::MemoryFormat::Contiguous);
  const int64_t total = out.numel();
  if (total == 0) return out;
  const auto blocks = static_cast<unsigned int>(std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t(1) << 30));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sa.scalar_type(), "oe_erase_cuda", [&] {
    oe_erase_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(sa.const_data_ptr<scalar_t>(),
                                                              boxes.const_data_ptr<int64_t>(), total, H, W,
                                                              out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmlr, CUDA, m) {
  m.impl("oe_boxes", &oe_boxes_cuda);
  m.impl("oe_erase", &oe_erase_cuda);
}

}  // namespace fastmlr
