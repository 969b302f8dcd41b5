// The sleeping pool of csrc/cpu/parallel.h.
#include "parallel.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace fastmlr {
namespace cpu {
namespace {

thread_local bool tl_sleeping = false;
thread_local bool tl_in_pool = false;  // a pool thread, or a caller running a job: nested loops run inline

class SleepingPool {
 public:
  // The process's pool; a child of fork() gets a new one (the parent's threads do not exist there).
  // Never destroyed: its threads wait on a condition variable until the process ends.
  static SleepingPool& get() {
    static std::mutex mu;
    static SleepingPool* pool = nullptr;
    std::lock_guard<std::mutex> lock(mu);
    if (pool == nullptr || pool->pid_ != getpid()) pool = new SleepingPool();
    return *pool;
  }

  // false: another job holds the pool (a second caller thread); the caller then runs its loop inline.
  bool run(int64_t begin, int64_t end, int64_t grain, int threads, const std::function<void(int64_t, int64_t)>& f) {
    std::unique_lock<std::mutex> job(job_mu_, std::try_to_lock);
    if (!job.owns_lock()) return false;
    const int64_t range = end - begin;
    // Four chunks per thread, none below the grain: small enough to even out a slow thread.
    const int64_t chunk = std::max<int64_t>(grain, (range + 4 * threads - 1) / (4 * threads));
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (static_cast<int>(workers_.size()) < threads - 1) {
        const int id = static_cast<int>(workers_.size());
        workers_.emplace_back([this, id] { work(id); });
        workers_.back().detach();
      }
      fn_ = &f;
      next_.store(begin);
      end_ = end;
      chunk_ = chunk;
      helpers_ = threads - 1;
      pending_ = threads - 1;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    tl_in_pool = true;
    drain();
    tl_in_pool = false;
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return pending_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
    return true;
  }

 private:
  SleepingPool() : pid_(getpid()) {}

  void drain() {
    for (;;) {
      const int64_t b = next_.fetch_add(chunk_);
      if (b >= end_) return;
      try {
        (*fn_)(b, std::min(b + chunk_, end_));
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_) error_ = std::current_exception();
        next_.store(end_);  // the others stop at their next chunk
        return;
      }
    }
  }

  void work(int id) {
    tl_in_pool = true;
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (id >= helpers_) continue;  // this job asked for fewer threads
      }
      drain();
      std::lock_guard<std::mutex> lock(mu_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  const pid_t pid_;
  std::mutex job_mu_;  // one job at a time
  std::mutex mu_;      // the job's fields below
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  uint64_t generation_ = 0;
  int helpers_ = 0, pending_ = 0;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  std::atomic<int64_t> next_{0};
  int64_t end_ = 0, chunk_ = 1;
  std::exception_ptr error_;
};

}  // namespace

bool sleeping_pool() { return tl_sleeping; }

bool set_sleeping_pool(bool on) {
  const bool before = tl_sleeping;
  tl_sleeping = on;
  return before;
}

void sleeping_parallel_for(int64_t begin, int64_t end, int64_t grain,
                           const std::function<void(int64_t, int64_t)>& f) {
  if (begin >= end) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t range = end - begin;
  const int threads = static_cast<int>(std::min<int64_t>(at::get_num_threads(), (range + grain - 1) / grain));
  if (threads <= 1 || tl_in_pool || !SleepingPool::get().run(begin, end, grain, threads, f)) f(begin, end);
}

}  // namespace cpu
}  // namespace fastmlr
