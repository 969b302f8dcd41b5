// How fastmlr's CPU kernels spread a loop over threads.
//
// By default through ATen's intra-op pool (at::parallel_for: OpenMP in the x86 wheels), the right
// choice whenever what runs before and after the kernel is ATen's or Inductor's code on the same
// OpenMP threads (eager PyTorch, AOTInductor packages). OpenMP's idle threads spin for a while after
// each region, waiting for the next one; that is what makes back-to-back regions cheap, and what
// hurts when the kernel's caller is another runtime with its own pool: ONNX Runtime calling the
// fused graph's PyOps. There the spinning OpenMP threads take the cores from ONNX Runtime's next node
// (benchmarks/README.md: the f_c MatMul after car_spatial_attention, 1.7 ms alone, 3.2 ms beside them).
//
// A thread that sets sleeping_pool(true) (thread-local; fastmlr.ops.sleeping_threads() in Python)
// has its kernels' loops run instead by fastmlr's own pool, whose threads go to sleep the moment their
// share is done. Work is handed out in chunks from a shared counter (a thread held up by another
// process's work does not hold up the loop's end), as many threads as at::get_num_threads() says.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>
#include <functional>

namespace fastmlr {
namespace cpu {

// Whether this thread's kernels use the sleeping pool; sets it and returns the previous setting.
bool sleeping_pool();
bool set_sleeping_pool(bool on);

// f(b, e) over [begin, end) in chunks of at least grain, on the sleeping pool (waits for all of them).
void sleeping_parallel_for(int64_t begin, int64_t end, int64_t grain, const std::function<void(int64_t, int64_t)>& f);

// at::parallel_for's contract (f(b, e) over disjoint chunks covering [begin, end), the first exception
// rethrown here), on the pool this thread asked for.
template <class F>
inline void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (sleeping_pool()) {
    sleeping_parallel_for(begin, end, grain, std::function<void(int64_t, int64_t)>(std::cref(f)));
  } else {
    at::parallel_for(begin, end, grain, f);
  }
}

}  // namespace cpu
}  // namespace fastmlr
