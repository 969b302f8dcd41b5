// Host-side argument checks shared by the CPU and CUDA kernels of fastmlr's
// ops. Each message names the op, the argument, what was expected and what
// was found, e.g. "car_pool: ca must have shape [N, C, D] = [2, 3, 7], got
// [2, 3, 5]".
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <vector>

namespace fastmlr {

inline void check_shape(const char* op, const char* name, const at::Tensor& t, const char* dims,
                        std::vector<int64_t> expected) {
  TORCH_CHECK(t.sizes() == c10::IntArrayRef(expected), op, ": ", name, " must have shape ", dims, " = ",
              c10::IntArrayRef(expected), ", got ", t.sizes());
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim, const char* dims) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must have shape ", dims, " (", dim, " dims), got ", t.sizes());
}

// Every tensor on `device` with `dtype`; `ref` names the tensor they are held to.
inline void check_same(const char* op, const char* ref, const at::Tensor& r,
                       std::initializer_list<std::pair<const char*, const at::Tensor*>> others) {
  TORCH_CHECK(at::isFloatingType(r.scalar_type()), op, ": ", ref, " must be floating point, got ", r.scalar_type());
  for (const auto& [name, t] : others) {
    TORCH_CHECK(t->device() == r.device(), op, ": ", name, " is on ", t->device(), " but ", ref, " is on ",
                r.device());
    TORCH_CHECK(t->scalar_type() == r.scalar_type(), op, ": ", name, " has dtype ", t->scalar_type(), " but ", ref,
                " has ", r.scalar_type());
  }
}

inline void check_car_spatial_attention(const at::Tensor& u, const at::Tensor& wc, const at::Tensor& s,
                                        const at::Tensor& b) {
  const char* op = "car_spatial_attention";
  check_dim(op, "u", u, 3, "[N, P, D]");
  check_dim(op, "wc", wc, 2, "[C, D]");
  const int64_t D = u.size(2);
  check_shape(op, "wc", wc, "[C, D]", {wc.size(0), D});
  check_shape(op, "s", s, "[D]", {D});
  TORCH_CHECK(b.numel() == 1 && b.dim() <= 1, op, ": b must be a scalar tensor (shape [] or [1]), got ", b.sizes());
  check_same(op, "u", u, {{"wc", &wc}, {"s", &s}, {"b", &b}});
}

inline void check_car_pool(const at::Tensor& f, const at::Tensor& sa, const at::Tensor& ca) {
  const char* op = "car_pool";
  check_dim(op, "f", f, 3, "[N, D, P]");
  check_dim(op, "sa", sa, 3, "[N, C, P]");
  const int64_t N = f.size(0), D = f.size(1), P = f.size(2), C = sa.size(1);
  check_shape(op, "sa", sa, "[N, C, P]", {N, C, P});
  check_shape(op, "ca", ca, "[N, C, D]", {N, C, D});
  TORCH_CHECK(P >= 1, op, ": f has no spatial positions (P = 0), got shape ", f.sizes());
  check_same(op, "f", f, {{"sa", &sa}, {"ca", &ca}});
}

inline void check_boxes(const char* op, const at::Tensor& sa, const at::Tensor& boxes) {
  check_shape(op, "boxes", boxes, "[N, K, 4]", {sa.size(0), sa.size(1), 4});
  TORCH_CHECK(boxes.scalar_type() == at::kLong, op, ": boxes must be int64, got ", boxes.scalar_type());
  TORCH_CHECK(boxes.device() == sa.device(), op, ": boxes is on ", boxes.device(), " but sa is on ", sa.device());
}

inline void check_maps(const char* op, const at::Tensor& sa) {
  check_dim(op, "sa", sa, 4, "[N, K, H, W]");
  TORCH_CHECK(at::isFloatingType(sa.scalar_type()), op, ": sa must be floating point, got ", sa.scalar_type());
}

}  // namespace fastmlr
