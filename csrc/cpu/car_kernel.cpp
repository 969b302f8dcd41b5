// CPU kernels of the CAR ops (SRDL eq. 5 and eq. 6 + GMP).
//
// Nothing of size N x C x P x D is ever allocated: eq. 5 is a dot over k of
// s[k] tanh(u[n,p,k] wc[c,k]) computed on the fly per (n, c, p), and its
// backward recomputes tanh. The innermost loops run over D, contiguous in
// every operand, so the compiler vectorises them (see FMLR_CPU_CLONES).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "car_math.h"
#include "checks.h"

namespace fastmlr {
namespace {

// Lane-wise sum: independent partial sums let the loop vectorise without
// -ffast-math (which would be needed to reorder a single running sum).
template <typename T>
inline T lane_sum(const T* x, int64_t n) {
  constexpr int kLanes = 16;
  T acc[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += x[k + j];
  }
  T tail = 0;
  for (; k < n; ++k) tail += x[k];
  for (int w = kLanes / 2; w > 0; w /= 2) {
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  }
  return acc[0] + tail;
}

// out[c * P] = sigmoid(b + sum_k s[k] tanh(u[k] wc[c, k])) for one (n, p) row u.
template <typename T>
FMLR_CPU_CLONES void sa_forward_row(const T* __restrict__ u, const T* __restrict__ wc, const T* __restrict__ s, T b,
                                    int64_t C, int64_t D, int64_t P, T* __restrict__ out, T* __restrict__ tmp) {
  for (int64_t c = 0; c < C; ++c) {
    const T* w = wc + c * D;
    for (int64_t k = 0; k < D; ++k) tmp[k] = s[k] * tanh_fast(u[k] * w[k]);
    out[c * P] = sigmoid(b + lane_sum(tmp, D));
  }
}

// One (n, p) row of the backward: with dz = dL/dz[n, c, p] (z the pre-sigmoid
// logit) and t = tanh(u[k] wc[c, k]), a = dz s[k] (1 - t^2):
//   du[k] += a wc[c, k],  dwc[c, k] += a u[k],  ds[k] += dz t.
template <typename T>
FMLR_CPU_CLONES void sa_backward_row(const T* __restrict__ u, const T* __restrict__ wc, const T* __restrict__ s,
                                     const T* __restrict__ dz, int64_t C, int64_t D, int64_t P, T* __restrict__ du,
                                     T* __restrict__ dwc, T* __restrict__ ds) {
  for (int64_t c = 0; c < C; ++c) {
    const T g = dz[c * P];
    const T* w = wc + c * D;
    T* dw = dwc + c * D;
    for (int64_t k = 0; k < D; ++k) {
      const T t = tanh_fast(u[k] * w[k]);
      const T a = g * s[k] * (T(1) - t * t);
      du[k] += a * w[k];
      dw[k] += a * u[k];
      ds[k] += g * t;
    }
  }
}

at::Tensor car_spatial_attention_cpu(const at::Tensor& u_, const at::Tensor& wc_, const at::Tensor& s_,
                                     const at::Tensor& b_) {
  check_car_spatial_attention(u_, wc_, s_, b_);
  TORCH_CHECK(u_.device().is_cpu(), "car_spatial_attention: expected CPU tensors, got ", u_.device());
  const auto u = u_.contiguous();
  const auto wc = wc_.contiguous();
  const auto s = s_.contiguous();
  const int64_t N = u.size(0), P = u.size(1), D = u.size(2), C = wc.size(0);
  auto out = at::empty({N, C, P}, u.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "car_spatial_attention_cpu", [&] {
    const scalar_t b = b_.item<scalar_t>();
    const scalar_t* up = u.const_data_ptr<scalar_t>();
    const scalar_t* wp = wc.const_data_ptr<scalar_t>();
    const scalar_t* sp = s.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    // Grain: a few rows per task; each row is C x D tanh evaluations.
    at::parallel_for(0, N * P, 4, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> tmp(std::max<int64_t>(D, 1));
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / P, p = r % P;
        sa_forward_row<scalar_t>(up + r * D, wp, sp, b, C, D, P, op + n * C * P + p, tmp.data());
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> car_spatial_attention_backward_cpu(
    const at::Tensor& grad, const at::Tensor& u_, const at::Tensor& wc_, const at::Tensor& s_, const at::Tensor& b,
    const at::Tensor& out) {
  check_car_spatial_attention(u_, wc_, s_, b);
  const char* op = "car_spatial_attention_backward";
  const int64_t N = u_.size(0), P = u_.size(1), D = u_.size(2), C = wc_.size(0);
  check_shape(op, "grad", grad, "[N, C, P]", {N, C, P});
  check_shape(op, "out", out, "[N, C, P]", {N, C, P});
  check_same(op, "u", u_, {{"grad", &grad}, {"out", &out}});
  const auto u = u_.contiguous();
  const auto wc = wc_.contiguous();
  const auto s = s_.contiguous();
  // dL/dz through the sigmoid; N x C x P, small.
  const auto dz = (grad * out * (1 - out)).contiguous();
  auto db = dz.sum().reshape(b.sizes());
  auto du = at::zeros_like(u);
  const int64_t R = N * P;
  // Fixed chunks of rows, each with its own dwc/ds partial sums, reduced in
  // chunk order: deterministic for a given thread count, no atomics.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), R));
  auto dwc_part = at::zeros({chunks, C, D}, u.options());
  auto ds_part = at::zeros({chunks, D}, u.options());
  if (R > 0 && C > 0 && D > 0) {
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "car_spatial_attention_backward_cpu", [&] {
      const scalar_t* up = u.const_data_ptr<scalar_t>();
      const scalar_t* wp = wc.const_data_ptr<scalar_t>();
      const scalar_t* sp = s.const_data_ptr<scalar_t>();
      const scalar_t* dzp = dz.const_data_ptr<scalar_t>();
      scalar_t* dup = du.mutable_data_ptr<scalar_t>();
      scalar_t* dwp = dwc_part.mutable_data_ptr<scalar_t>();
      scalar_t* dsp = ds_part.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
        for (int64_t ch = cb; ch < ce; ++ch) {
          for (int64_t r = ch * R / chunks; r < (ch + 1) * R / chunks; ++r) {
            const int64_t n = r / P, p = r % P;
            sa_backward_row<scalar_t>(up + r * D, wp, sp, dzp + n * C * P + p, C, D, P, dup + r * D,
                                      dwp + ch * C * D, dsp + ch * D);
          }
        }
      });
    });
  }
  auto dwc = dwc_part[0].clone();
  auto ds = ds_part[0].clone();
  for (int64_t ch = 1; ch < chunks; ++ch) {
    dwc.add_(dwc_part[ch]);
    ds.add_(ds_part[ch]);
  }
  return {du, dwc, ds, db};
}

// feat[k] = max_p (0.5 f[p, k]) (sa[p] + ca[k]) for one (n, c), with ft the
// [P, D] transpose of f[n] so that k is contiguous; idx = first maximising p.
// NaN propagates (as torch.amax): the first NaN term wins and stays.
template <typename T>
FMLR_CPU_CLONES void pool_row(const T* __restrict__ ft, const T* __restrict__ sa, const T* __restrict__ ca, int64_t P,
                              int64_t D, T* __restrict__ best, int32_t* __restrict__ arg) {
  for (int64_t k = 0; k < D; ++k) {
    best[k] = (T(0.5) * ft[k]) * (sa[0] + ca[k]);
    arg[k] = 0;
  }
  for (int64_t p = 1; p < P; ++p) {
    const T* fp = ft + p * D;
    const T sp = sa[p];
    const int32_t pi = static_cast<int32_t>(p);
    for (int64_t k = 0; k < D; ++k) {
      const T v = (T(0.5) * fp[k]) * (sp + ca[k]);
      // strict: the first p wins ties; v != v: a NaN replaces a number, never another NaN
      const bool gt = v > best[k] || (v != v && best[k] == best[k]);
      best[k] = gt ? v : best[k];
      arg[k] = gt ? pi : arg[k];
    }
  }
}

std::tuple<at::Tensor, at::Tensor> car_pool_cpu(const at::Tensor& f_, const at::Tensor& sa_, const at::Tensor& ca_) {
  check_car_pool(f_, sa_, ca_);
  TORCH_CHECK(f_.device().is_cpu(), "car_pool: expected CPU tensors, got ", f_.device());
  const int64_t N = f_.size(0), D = f_.size(1), P = f_.size(2), C = sa_.size(1);
  TORCH_CHECK(P <= std::numeric_limits<int32_t>::max(), "car_pool: P = ", P, " exceeds the int32 range");
  // f transposed to [N, P, D] (the size of f, never N x C x P x D).
  const auto ft = f_.transpose(1, 2).contiguous();
  const auto sa = sa_.contiguous();
  const auto ca = ca_.contiguous();
  auto feat = at::empty({N, C, D}, f_.options());
  auto idx = at::empty({N, C, D}, f_.options().dtype(at::kLong));
  if (feat.numel() == 0) return {feat, idx};
  AT_DISPATCH_FLOATING_TYPES(f_.scalar_type(), "car_pool_cpu", [&] {
    const scalar_t* fp = ft.const_data_ptr<scalar_t>();
    const scalar_t* sp = sa.const_data_ptr<scalar_t>();
    const scalar_t* cp = ca.const_data_ptr<scalar_t>();
    scalar_t* op = feat.mutable_data_ptr<scalar_t>();
    int64_t* ip = idx.mutable_data_ptr<int64_t>();
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<int32_t> arg(D);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / C;
        pool_row<scalar_t>(fp + n * P * D, sp + r * P, cp + r * D, P, D, op + r * D, arg.data());
        for (int64_t k = 0; k < D; ++k) ip[r * D + k] = arg[k];
      }
    });
  });
  return {feat, idx};
}

// With p* = idx[n,c,k] and feat = (0.5 f[n,k,p*]) (sa[n,c,p*] + ca[n,c,k]):
//   dca[n,c,k] = g 0.5 f[n,k,p*],  dsa[n,c,p*] += g 0.5 f[n,k,p*],
//   df[n,k,p*] += g 0.5 (sa[n,c,p*] + ca[n,c,k]).
std::tuple<at::Tensor, at::Tensor, at::Tensor> car_pool_backward_cpu(const at::Tensor& grad_, const at::Tensor& f_,
                                                                     const at::Tensor& sa_, const at::Tensor& ca_,
                                                                     const at::Tensor& idx_) {
  check_car_pool(f_, sa_, ca_);
  const char* op = "car_pool_backward";
  const int64_t N = f_.size(0), D = f_.size(1), P = f_.size(2), C = sa_.size(1);
  check_shape(op, "grad", grad_, "[N, C, D]", {N, C, D});
  check_shape(op, "idx", idx_, "[N, C, D]", {N, C, D});
  TORCH_CHECK(idx_.scalar_type() == at::kLong, op, ": idx must be int64, got ", idx_.scalar_type());
  check_same(op, "f", f_, {{"grad", &grad_}});
  const auto grad = grad_.contiguous();
  const auto f = f_.contiguous();
  const auto sa = sa_.contiguous();
  const auto ca = ca_.contiguous();
  const auto idx = idx_.contiguous();
  auto df = at::zeros_like(f);
  auto dsa = at::zeros_like(sa);
  auto dca = at::zeros_like(ca);
  if (grad.numel() == 0) return {df, dsa, dca};
  AT_DISPATCH_FLOATING_TYPES(f.scalar_type(), "car_pool_backward_cpu", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* fp = f.const_data_ptr<scalar_t>();
    const scalar_t* sp = sa.const_data_ptr<scalar_t>();
    const scalar_t* cp = ca.const_data_ptr<scalar_t>();
    const int64_t* ip = idx.const_data_ptr<int64_t>();
    scalar_t* dfp = df.mutable_data_ptr<scalar_t>();
    scalar_t* dsp = dsa.mutable_data_ptr<scalar_t>();
    scalar_t* dcp = dca.mutable_data_ptr<scalar_t>();
    // dsa and dca: each (n, c) row owned by one task.
    at::parallel_for(0, N * C, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / C;
        for (int64_t k = 0; k < D; ++k) {
          const int64_t p = ip[r * D + k];
          const scalar_t v = gp[r * D + k] * (scalar_t(0.5) * fp[(n * D + k) * P + p]);
          dcp[r * D + k] = v;
          dsp[r * P + p] += v;
        }
      }
    });
    // df: each (n, k) row of P entries owned by one task.
    at::parallel_for(0, N * D, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / D, k = r % D;
        for (int64_t c = 0; c < C; ++c) {
          const int64_t nc = n * C + c;
          const int64_t p = ip[nc * D + k];
          dfp[r * P + p] += gp[nc * D + k] * scalar_t(0.5) * (sp[nc * P + p] + cp[nc * D + k]);
        }
      }
    });
  });
  return {df, dsa, dca};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmlr, CPU, m) {
  m.impl("car_spatial_attention", &car_spatial_attention_cpu);
  m.impl("car_spatial_attention_backward", &car_spatial_attention_backward_cpu);
  m.impl("car_pool", &car_pool_cpu);
  m.impl("car_pool_backward", &car_pool_backward_cpu);
}

}  // namespace fastmlr
