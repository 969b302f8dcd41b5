// CPU kernels of object erasing (SRDL eq. 7-10, docs/srdl.md "Object erasing").
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "car_math.h"
#include "checks.h"
#include "parallel.h"

namespace fastmlr {
namespace {

// Maps per task: whole small batches (e.g. 16 x 3 maps of 14 x 14) run inline
// on the calling thread, since waking the thread pool costs far more than them.
inline int64_t map_grain(int64_t H, int64_t W) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, H * W)); }

at::Tensor oe_boxes_cpu(const at::Tensor& sa_, double alpha) {
  check_maps("oe_boxes", sa_);
  TORCH_CHECK(alpha > 0.0 && alpha <= 1.0, "oe_boxes: alpha must be in (0, 1], got ", alpha);
  const int64_t N = sa_.size(0), K = sa_.size(1), H = sa_.size(2), W = sa_.size(3);
  TORCH_CHECK(H >= 1 && W >= 1, "oe_boxes: sa must have H, W >= 1, got shape ", sa_.sizes());
  const auto sa = sa_.contiguous();
  auto boxes = at::empty({N, K, 4}, sa.options().dtype(at::kLong));
  if (boxes.numel() == 0) return boxes;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sa.scalar_type(), "oe_boxes_cpu", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const scalar_t* sp = sa.const_data_ptr<scalar_t>();
    int64_t* bp = boxes.mutable_data_ptr<int64_t>();
    cpu::parallel_for(0, N * K, map_grain(H, W), [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> mx(W), my(H);
      for (int64_t m = begin; m < end; ++m) {
        const scalar_t* map = sp + m * H * W;
        // mx[x] = max over y, my[y] = max over x (exact: max never rounds).
        // A map holding a NaN or an infinity gets no box (the documented rule).
        bool finite = true;
        for (int64_t x = 0; x < W; ++x) mx[x] = map[x];
        for (int64_t y = 0; y < H; ++y) {
          const scalar_t* row = map + y * W;
          scalar_t rmax = row[0];
          for (int64_t x = 0; x < W; ++x) {
            const op_t v = static_cast<op_t>(row[x]);
            finite = finite && is_finite(v);
            if (v > static_cast<op_t>(mx[x])) mx[x] = row[x];
            if (v > static_cast<op_t>(rmax)) rmax = row[x];
          }
          my[y] = rmax;
        }
        int64_t x0, x1, y0, y1;
        bool fx, fy;
        oe_axis_run<scalar_t, op_t>(mx.data(), W, alpha, &x0, &x1, &fx);
        oe_axis_run<scalar_t, op_t>(my.data(), H, alpha, &y0, &y1, &fy);
        int64_t* box = bp + m * 4;
        const bool flat = fx || fy || !finite;
        box[0] = flat ? -1 : x0;
        box[1] = flat ? -1 : x1;
        box[2] = flat ? -1 : y0;
        box[3] = flat ? -1 : y1;
      }
    });
  });
  return boxes;
}

at::Tensor oe_erase_cpu(const at::Tensor& sa_, const at::Tensor& boxes_) {
  check_maps("oe_erase", sa_);
  check_boxes("oe_erase", sa_, boxes_);
  const int64_t N = sa_.size(0), K = sa_.size(1), H = sa_.size(2), W = sa_.size(3);
  const auto sa = sa_.contiguous();
  const auto boxes = boxes_.contiguous();
  auto out = at::empty_like(sa, at::MemoryFormat::Contiguous);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sa.scalar_type(), "oe_erase_cpu", [&] {
    const scalar_t* sp = sa.const_data_ptr<scalar_t>();
    const int64_t* bp = boxes.const_data_ptr<int64_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    cpu::parallel_for(0, N * K, map_grain(H, W), [&](int64_t begin, int64_t end) {
      for (int64_t m = begin; m < end; ++m) {
        const int64_t* box = bp + m * 4;
        for (int64_t y = 0; y < H; ++y) {
          for (int64_t x = 0; x < W; ++x) {
            const int64_t i = (m * H + y) * W + x;
            op[i] = in_box(x, y, box) ? scalar_t(0) : sp[i];
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmlr, CPU, m) {
  m.impl("oe_boxes", &oe_boxes_cpu);
  m.impl("oe_erase", &oe_erase_cpu);
}

}  // namespace fastmlr
