// ThreadPool: a small fixed pool for data-parallel loops over codec frames.
//
// ParallelFor(n, fn) runs fn(0..n-1) on the pool's workers *and* the calling
// thread, which claims indices from the same atomic counter. The caller therefore
// always makes progress (no deadlock when several callers share one pool or the
// workers are busy), and a pool of parallelism 1 has no worker threads at all.
// fn must not throw. The pool is thread-safe: ParallelFor may be called from many
// threads at once; their indices interleave on the shared workers.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace fedps {

class ThreadPool {
 public:
  // parallelism >= 1: the caller plus parallelism - 1 worker threads.
  explicit ThreadPool(int parallelism);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int parallelism() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(i) for every i in [0, n) and returns when all calls have returned.
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn);

 private:
  void WorkerLoop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> workers_;
};

}  // namespace fedps
