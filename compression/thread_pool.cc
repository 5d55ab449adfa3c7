#include "compression/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <memory>

namespace fedps {

ThreadPool::ThreadPool(int parallelism) {
  const int workers = std::max(parallelism, 1) - 1;
  workers_.reserve(workers);
  for (int i = 0; i < workers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void ThreadPool::WorkerLoop() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

void ThreadPool::ParallelFor(size_t n, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  const size_t helpers = std::min(workers_.size(), n - 1);
  if (helpers == 0) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  // Shared with the helper tasks, which may start after the loop has finished
  // (they then find no index left and touch nothing but this state).
  struct Loop {
    const std::function<void(size_t)>* fn;
    size_t n;
    std::atomic<size_t> next{0};
    std::mutex mu;
    std::condition_variable cv;
    size_t done = 0;  // guarded by mu
  };
  auto loop = std::make_shared<Loop>();
  loop->fn = &fn;
  loop->n = n;
  auto run = [](Loop& l) {
    size_t finished = 0;
    for (size_t i; (i = l.next.fetch_add(1, std::memory_order_relaxed)) < l.n; ++finished) {
      (*l.fn)(i);
    }
    if (finished > 0) {
      std::lock_guard<std::mutex> lock(l.mu);
      l.done += finished;
      if (l.done == l.n) l.cv.notify_all();
    }
  };
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t h = 0; h < helpers; ++h) queue_.emplace_back([loop, run] { run(*loop); });
  }
  if (helpers == 1) {
    cv_.notify_one();
  } else {
    cv_.notify_all();
  }
  run(*loop);
  std::unique_lock<std::mutex> lock(loop->mu);
  loop->cv.wait(lock, [&] { return loop->done == loop->n; });
}

}  // namespace fedps
