// CUDA kernels of the CAR ops (SRDL eq. 5 and eq. 6 + GMP).
//
// Same index arithmetic and per-element math (csrc/car_math.h) as the CPU
// kernels in csrc/cpu/car_kernel.cpp; Half/BFloat16 inputs are computed in
// float (at::opmath_type). Nothing of size N x C x P x D is allocated, and no
// atomics are used: every output element is owned by one thread, so results
// are deterministic.
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
// Tile of the forward: kTile positions x kTile categories per block, D in
// chunks of kChunk staged in shared memory.
constexpr int kTile = 16;
constexpr int kChunk = 32;

inline unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>(std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 30));
}

template <typename scalar_t>
__global__ void sa_forward_kernel(const scalar_t* __restrict__ u, const scalar_t* __restrict__ wc,
                                  const scalar_t* __restrict__ s, const scalar_t* __restrict__ b, int64_t C,
                                  int64_t P, int64_t D, scalar_t* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t us[kTile][kChunk + 1];
  __shared__ acc_t ws[kTile][kChunk + 1];
  __shared__ acc_t ss[kChunk];
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kTile + tx;
  const int64_t n = blockIdx.z;
  const int64_t p0 = int64_t(blockIdx.x) * kTile, c0 = int64_t(blockIdx.y) * kTile;
  acc_t acc = 0;
  for (int64_t k0 = 0; k0 < D; k0 += kChunk) {
    for (int i = tid; i < kTile * kChunk; i += kTile * kTile) {
      const int row = i / kChunk, col = i % kChunk;
      const int64_t k = k0 + col, p = p0 + row, c = c0 + row;
      us[row][col] = (p < P && k < D) ? static_cast<acc_t>(u[(n * P + p) * D + k]) : acc_t(0);
      ws[row][col] = (c < C && k < D) ? static_cast<acc_t>(wc[c * D + k]) : acc_t(0);
    }
    if (tid < kChunk) ss[tid] = (k0 + tid < D) ? static_cast<acc_t>(s[k0 + tid]) : acc_t(0);
    __syncthreads();
    // Padding has s = 0 and adds nothing.
#pragma unroll 8
    for (int j = 0; j < kChunk; ++j) acc += ss[j] * tanh_fast(us[tx][j] * ws[ty][j]);
    __syncthreads();
  }
  const int64_t p = p0 + tx, c = c0 + ty;
  if (p < P && c < C) out[(n * C + c) * P + p] = static_cast<scalar_t>(sigmoid(static_cast<acc_t>(*b) + acc));
}

// du[n,p,k] = s[k] sum_c dz[n,c,p] (1 - t^2) wc[c,k], t = tanh(u[n,p,k] wc[c,k]);
// one thread per (n, p, k), consecutive threads along k.
template <typename scalar_t, typename acc_t>
__global__ void sa_backward_du_kernel(const scalar_t* __restrict__ u, const scalar_t* __restrict__ wc,
                                      const scalar_t* __restrict__ s, const acc_t* __restrict__ dz, int64_t N,
                                      int64_t C, int64_t P, int64_t D, scalar_t* __restrict__ du) {
  const int64_t total = N * P * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i % D, r = i / D, n = r / P, p = r % P;
    const acc_t uv = static_cast<acc_t>(u[i]);
    acc_t acc = 0;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t w = static_cast<acc_t>(wc[c * D + k]);
      const acc_t t = tanh_fast(uv * w);
      acc += dz[(n * C + c) * P + p] * (acc_t(1) - t * t) * w;
    }
    du[i] = static_cast<scalar_t>(static_cast<acc_t>(s[k]) * acc);
  }
}

// dwc[c,k] = s[k] sum_{n,p} dz (1 - t^2) u[n,p,k] and the per-c partial of
// ds[k] = sum_{n,c,p} dz t; one thread per (c, k).
template <typename scalar_t, typename acc_t>
__global__ void sa_backward_dwc_kernel(const scalar_t* __restrict__ u, const scalar_t* __restrict__ wc,
                                       const scalar_t* __restrict__ s, const acc_t* __restrict__ dz, int64_t N,
                                       int64_t C, int64_t P, int64_t D, scalar_t* __restrict__ dwc,
                                       acc_t* __restrict__ ds_part) {
  const int64_t total = C * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i / D, k = i % D;
    const acc_t w = static_cast<acc_t>(wc[i]);
    acc_t aw = 0, as = 0;
    for (int64_t n = 0; n < N; ++n) {
      const acc_t* dzr = dz + (n * C + c) * P;
      const scalar_t* ur = u + n * P * D + k;
      for (int64_t p = 0; p < P; ++p) {
        const acc_t uv = static_cast<acc_t>(ur[p * D]);
        const acc_t t = tanh_fast(uv * w);
        const acc_t g = dzr[p];
        aw += g * (acc_t(1) - t * t) * uv;
        as += g * t;
      }
    }
    dwc[i] = static_cast<scalar_t>(static_cast<acc_t>(s[k]) * aw);
    ds_part[i] = as;
  }
}

at::Tensor car_spatial_attention_cuda(const at::Tensor& u_, const at::Tensor& wc_, const at::Tensor& s_,
                                      const at::Tensor& b_) {
  check_car_spatial_attention(u_, wc_, s_, b_);
  TORCH_CHECK(u_.is_cuda(), "car_spatial_attention: expected CUDA tensors, got ", u_.device());
  c10::cuda::CUDAGuard guard(u_.device());
  const auto u = u_.contiguous();
  const auto wc = wc_.contiguous();
  const auto s = s_.contiguous();
  const auto b = b_.contiguous();
  const int64_t N = u.size(0), P = u.size(1), D = u.size(2), C = wc.size(0);
  TORCH_CHECK(N <= 65535 && (C + kTile - 1) / kTile <= 65535, "car_spatial_attention: N = ", N, " and C = ", C,
              " exceed the CUDA grid (N <= 65535, C <= ", 65535 * kTile, ")");
  auto out = at::empty({N, C, P}, u.options());
  if (out.numel() == 0) return out;
  const dim3 grid((P + kTile - 1) / kTile, (C + kTile - 1) / kTile, N);
  const dim3 block(kTile, kTile);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "car_spatial_attention_cuda", [&] {
    sa_forward_kernel<scalar_t><<<grid, block, 0, stream>>>(
        u.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(),
        b.const_data_ptr<scalar_t>(), C, P, D, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> car_spatial_attention_backward_cuda(
    const at::Tensor& grad, const at::Tensor& u_, const at::Tensor& wc_, const at::Tensor& s_, const at::Tensor& b,
    const at::Tensor& out) {
  check_car_spatial_attention(u_, wc_, s_, b);
  const char* op = "car_spatial_attention_backward";
  const int64_t N = u_.size(0), P = u_.size(1), D = u_.size(2), C = wc_.size(0);
  check_shape(op, "grad", grad, "[N, C, P]", {N, C, P});
  check_shape(op, "out", out, "[N, C, P]", {N, C, P});
  check_same(op, "u", u_, {{"grad", &grad}, {"out", &out}});
  c10::cuda::CUDAGuard guard(u_.device());
  const auto u = u_.contiguous();
  const auto wc = wc_.contiguous();
  const auto s = s_.contiguous();
  const auto acc_type = u.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // dL/dz through the sigmoid, in the accumulation type; N x C x P, small.
  const auto o = out.to(acc_type);
  const auto dz = (grad.to(acc_type) * o * (1 - o)).contiguous();
  auto db = dz.sum().to(b.scalar_type()).reshape(b.sizes());
  auto du = at::zeros_like(u);
  auto dwc = at::zeros_like(wc);
  auto ds_part = at::zeros({C, D}, u.options().dtype(acc_type));
  if (N * P > 0 && C > 0 && D > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, u.scalar_type(), "car_spatial_attention_backward_cuda",
                                    [&] {
      using acc_t = at::opmath_type<scalar_t>;
      sa_backward_du_kernel<scalar_t, acc_t><<<blocks_for(N * P * D), kThreads, 0, stream>>>(
          u.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(),
          dz.const_data_ptr<acc_t>(), N, C, P, D, du.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      sa_backward_dwc_kernel<scalar_t, acc_t><<<blocks_for(C * D), kThreads, 0, stream>>>(
          u.const_data_ptr<scalar_t>(), wc.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(),
          dz.const_data_ptr<acc_t>(), N, C, P, D, dwc.mutable_data_ptr<scalar_t>(),
          ds_part.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  auto ds = ds_part.sum(0).to(u.scalar_type());
  return {du, dwc, ds, db};
}

// feat[n,c,k] and the first maximising p; ft is f transposed to [N, P, D] so
// that consecutive threads (along k) read consecutive addresses.
template <typename scalar_t>
__global__ void pool_forward_kernel(const scalar_t* __restrict__ ft, const scalar_t* __restrict__ sa,
                                    const scalar_t* __restrict__ ca, int64_t N, int64_t C, int64_t P, int64_t D,
                                    scalar_t* __restrict__ feat, int64_t* __restrict__ idx) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t total = N * C * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i % D, r = i / D, n = r / C;
    const scalar_t* fr = ft + n * P * D + k;
    const scalar_t* sr = sa + r * P;
    const scalar_t cv = ca[i];
    op_t best = pool_value<scalar_t, op_t>(fr[0], sr[0], cv);
    int64_t arg = 0;
    for (int64_t p = 1; p < P; ++p) {
      const op_t v = pool_value<scalar_t, op_t>(fr[p * D], sr[p], cv);
      // strict: the first p wins ties; NaN propagates (as torch.amax): the first NaN wins and stays
      if (v > best || (is_nan(v) && !is_nan(best))) {
        best = v;
        arg = p;
      }
    }
    feat[i] = static_cast<scalar_t>(best);
    idx[i] = arg;
  }
}

// dca[n,c,k] = g 0.5 f[n,k,p*]; dsa[n,c,p] = sum_{k: p*=p} g 0.5 f[n,k,p].
// One thread per (n, c, p) gathers over k (no atomics).
template <typename scalar_t>
__global__ void pool_backward_sa_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ f,
                                        const int64_t* __restrict__ idx, int64_t N, int64_t C, int64_t P, int64_t D,
                                        scalar_t* __restrict__ dsa, scalar_t* __restrict__ dca) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t total = N * C * P;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = i % P, r = i / P, n = r / C;
    op_t acc = 0;
    for (int64_t k = 0; k < D; ++k) {
      const int64_t pk = idx[r * D + k];
      if (pk == p) {
        const op_t v = static_cast<op_t>(grad[r * D + k]) * (op_t(0.5) * static_cast<op_t>(f[(n * D + k) * P + p]));
        acc += v;
        dca[r * D + k] = static_cast<scalar_t>(v);  // exactly one p owns each (n, c, k)
      }
    }
    dsa[i] = static_cast<scalar_t>(acc);
  }
}

// df[n,k,p] = sum_{c: p*=p} g 0.5 (sa[n,c,p] + ca[n,c,k]); one thread per (n, k, p).
template <typename scalar_t>
__global__ void pool_backward_f_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ sa,
                                       const scalar_t* __restrict__ ca, const int64_t* __restrict__ idx, int64_t N,
                                       int64_t C, int64_t P, int64_t D, scalar_t* __restrict__ df) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t total = N * D * P;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = i % P, r = i / P, n = r / D, k = r % D;
    op_t acc = 0;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t j = (n * C + c) * D + k;
      if (idx[j] == p) {
        acc += static_cast<op_t>(grad[j]) * op_t(0.5) *
               (static_cast<op_t>(sa[(n * C + c) * P + p]) + static_cast<op_t>(ca[j]));
      }
    }
    df[i] = static_cast<scalar_t>(acc);
  }
}

// index=False: the same kernel runs (it writes the positions to a scratch tensor) and idx comes back empty,
// as the schema says; only the CPU's float32 kernels skip the positions.
std::tuple<at::Tensor, at::Tensor> car_pool_cuda(const at::Tensor& f_, const at::Tensor& sa_, const at::Tensor& ca_,
                                                 bool index) {
  check_car_pool(f_, sa_, ca_);
  TORCH_CHECK(f_.is_cuda(), "car_pool: expected CUDA tensors, got ", f_.device());
  c10::cuda::CUDAGuard guard(f_.device());
  const int64_t N = f_.size(0), D = f_.size(1), P = f_.size(2), C = sa_.size(1);
  // f transposed to [N, P, D] (the size of f, never N x C x P x D).
  const auto ft = f_.transpose(1, 2).contiguous();
  const auto sa = sa_.contiguous();
  const auto ca = ca_.contiguous();
  auto feat = at::empty({N, C, D}, f_.options());
  auto idx = at::empty({N, C, D}, f_.options().dtype(at::kLong));
  if (feat.numel() == 0) return {feat, index ? idx : at::empty({0, C, D}, idx.options())};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f_.scalar_type(), "car_pool_cuda", [&] {
    pool_forward_kernel<scalar_t><<<blocks_for(N * C * D), kThreads, 0, stream>>>(
        ft.const_data_ptr<scalar_t>(), sa.const_data_ptr<scalar_t>(), ca.const_data_ptr<scalar_t>(), N, C, P, D,
        feat.mutable_data_ptr<scalar_t>(), idx.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {feat, index ? idx : at::empty({0, C, D}, idx.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> car_pool_backward_cuda(const at::Tensor& grad_, const at::Tensor& f_,
                                                                      const at::Tensor& sa_, const at::Tensor& ca_,
                                                                      const at::Tensor& idx_) {
  check_car_pool(f_, sa_, ca_);
  const char* op = "car_pool_backward";
  const int64_t N = f_.size(0), D = f_.size(1), P = f_.size(2), C = sa_.size(1);
  check_shape(op, "grad", grad_, "[N, C, D]", {N, C, D});
  check_shape(op, "idx", idx_, "[N, C, D]", {N, C, D});
  TORCH_CHECK(idx_.scalar_type() == at::kLong, op, ": idx must be int64, got ", idx_.scalar_type());
  check_same(op, "f", f_, {{"grad", &grad_}});
  c10::cuda::CUDAGuard guard(f_.device());
  const auto grad = grad_.contiguous();
  const auto f = f_.contiguous();
  const auto sa = sa_.contiguous();
  const auto ca = ca_.contiguous();
  const auto idx = idx_.contiguous();
  auto df = at::empty_like(f);
  auto dsa = at::empty_like(sa);
  auto dca = at::zeros_like(ca);
  if (grad.numel() == 0) return {df.zero_(), dsa.zero_(), dca};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, f.scalar_type(), "car_pool_backward_cuda", [&] {
    pool_backward_sa_kernel<scalar_t><<<blocks_for(N * C * P), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), f.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(), N, C, P, D,
        dsa.mutable_data_ptr<scalar_t>(), dca.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    pool_backward_f_kernel<scalar_t><<<blocks_for(N * D * P), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), sa.const_data_ptr<scalar_t>(), ca.const_data_ptr<scalar_t>(),
        idx.const_data_ptr<int64_t>(), N, C, P, D, df.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {df, dsa, dca};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastmlr, CUDA, m) {
  m.impl("car_spatial_attention", &car_spatial_attention_cuda);
  m.impl("car_spatial_attention_backward", &car_spatial_attention_backward_cuda);
  m.impl("car_pool", &car_pool_cuda);
  m.impl("car_pool_backward", &car_pool_backward_cuda);
}

}  // namespace fastmlr
