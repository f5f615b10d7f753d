// The C++ backend's own thread pool for the time loops (recurrence.h). A loop step is a few
// microseconds or less, so the threads of one call must all run at once and meet at a spin
// barrier every step: only threads the pool owns guarantee that. at::parallel_for is serial in
// this extension (built without -fopenmp), and linking a second OpenMP runtime next to torch's
// is asking for two thread teams fighting over the same cores.
// Workers are created on first use, up to at::get_num_threads() - 1 (the caller is thread 0).
// Between calls they spin for a short while (a layer's backward follows its forward, the next
// layer follows after torch's input projection), then sleep on a condition variable so they
// do not take the core from torch's own threads.
#pragma once

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FASTRNN_PAUSE() _mm_pause()
#else
#define FASTRNN_PAUSE() std::this_thread::yield()
#endif

namespace fastrnn {

class Pool {
 public:
  // Runs fn(tid, n) on threads 0..n-1 concurrently (thread 0 is the caller) and returns once
  // all have returned. False when the pool is already running a job (another Python thread
  // calling in): the caller then runs single-threaded instead of waiting.
  template <class Fn>
  bool run(int n, Fn& fn) {
    bool expected = false;
    if (!busy_.compare_exchange_strong(expected, true, std::memory_order_acquire)) return false;
    grow(n - 1);
    fn_ = &invoke<Fn>;
    ctx_ = &fn;
    n_ = n;
    bar_count_.store(0, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    degrade_.store(false, std::memory_order_relaxed);
    barriers_ = 0;
    const int acks = static_cast<int>(workers_.size());
    // seq_cst with the sleepers_ load (and the worker's sleepers_ increment before it checks
    // job_): either this thread sees the sleeper or the sleeper sees the new job
    job_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_all();
    }
    threaded_jobs.fetch_add(1, std::memory_order_relaxed);
    fn(0, n);
    // every worker acknowledges every job, also those past n (fewer threads than workers):
    // a worker still reading this job's n_ must not see the next job's
    spin_until([&] { return done_.load(std::memory_order_acquire) == acks; });
    if (decision_.load(std::memory_order_relaxed)) {
      degraded_jobs.fetch_add(1, std::memory_order_relaxed);
      backoff_until_.store(
          (std::chrono::steady_clock::now() + std::chrono::milliseconds(100)).time_since_epoch().count(),
          std::memory_order_relaxed);
    }
    decision_.store(false, std::memory_order_relaxed);
    busy_.store(false, std::memory_order_release);
    return true;
  }

  // A thread's clock between barriers (Pool::barrier): when it last left one.
  struct Member { uint64_t left = 0; };

  // All n threads of the running job meet here; memory written before it by any of them is
  // visible to all after it. Returns true when the team gives up its threads for the rest of
  // the job (the same answer for every thread at the same barrier): the caller (tid 0) then
  // runs on alone and the others return. That happens when some thread waited here for more
  // than 100 us and longer than its own work since the previous barrier: a partner was
  // descheduled (more runnable threads than cores: a loaded shared machine, or torch's own
  // threads), and a loop that waits a scheduler time slice at every step ran 500x slower
  // than one thread in a measurement on such a machine. Balanced slices never wait that long.
  bool barrier(int n, Member& me) {
    if (n == 1) return false;
    const uint64_t arrived = ticks();
    const uint32_t gen = bar_gen_.load(std::memory_order_acquire);
    if (bar_count_.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
      bar_count_.store(0, std::memory_order_relaxed);
      if (++barriers_ == give_up_at.load(std::memory_order_relaxed)) degrade_.store(true, std::memory_order_relaxed);
      decision_.store(degrade_.load(std::memory_order_relaxed), std::memory_order_relaxed);
      bar_gen_.store(gen + 1, std::memory_order_release);
    } else {
      // the first barrier of a job also waits for sleeping workers to wake: 500 us
      const uint64_t limit = me.left ? std::max(arrived - me.left, ticks_per_us() * 100) : ticks_per_us() * 500;
      for (uint32_t i = 1; bar_gen_.load(std::memory_order_acquire) == gen; ++i) {
        if ((i & 255) == 0) {
          if (ticks() - arrived > limit) degrade_.store(true, std::memory_order_relaxed);
          if (i > 20000) std::this_thread::yield();
        }
        FASTRNN_PAUSE();
      }
    }
    me.left = ticks();
    return decision_.load(std::memory_order_relaxed);  // ordered by the acquire on bar_gen_
  }

  // Whether a recent job gave up its threads (barrier): the automatic policy then stays
  // single-threaded for a while (100 ms) before trying again.
  bool backing_off() const {
    return std::chrono::steady_clock::now().time_since_epoch().count() < backoff_until_.load(std::memory_order_relaxed);
  }

  // Busy-waits with pause; after ~20k rounds (a descheduled partner: the machine is
  // oversubscribed) it also yields the core so the partner can run.
  template <class Cond>
  static void spin_until(Cond cond) {
    for (uint32_t i = 0; !cond(); ++i) {
      if (i < 20000)
        FASTRNN_PAUSE();
      else
        std::this_thread::yield();
    }
  }

  // A cheap clock for the barrier's wait bound: the TSC on x86 (constant rate on every CPU
  // this targets), else steady_clock.
  static uint64_t ticks() {
#if defined(__x86_64__) || defined(__i386__)
    return __rdtsc();
#else
    return std::chrono::steady_clock::now().time_since_epoch().count();
#endif
  }
  // ticks per microsecond, measured once over ~1 ms
  static uint64_t ticks_per_us() {
    static const uint64_t rate = [] {
      const auto t0 = std::chrono::steady_clock::now();
      const uint64_t c0 = ticks();
      while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(1)) FASTRNN_PAUSE();
      const uint64_t c1 = ticks();
      const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      return std::max<uint64_t>(1, static_cast<uint64_t>((c1 - c0) / us));
    }();
    return rate;
  }

  static Pool& get() {
    static std::once_flag once;
    std::call_once(once, [] { pthread_atfork(nullptr, nullptr, &after_fork_child); });
    Pool* p = instance_.load(std::memory_order_acquire);
    if (p) return *p;
    std::lock_guard<std::mutex> lock(create_mu());
    p = instance_.load(std::memory_order_relaxed);
    if (!p) {
      p = new Pool();  // never deleted: workers may sleep in it until the process exits
      instance_.store(p, std::memory_order_release);
    }
    return *p;
  }

 private:
  template <class Fn>
  static void invoke(void* ctx, int tid, int n) {
    (*static_cast<Fn*>(ctx))(tid, n);
  }

  // Workers 1..count (the caller holds busy_, so no job runs while they are added).
  void grow(int count) {
    while (static_cast<int>(workers_.size()) < count) {
      const int tid = static_cast<int>(workers_.size()) + 1;
      const uint64_t seen = job_.load(std::memory_order_relaxed);  // before this job's increment
      workers_.emplace_back([this, tid, seen] { work(tid, seen); });
      workers_.back().detach();
    }
  }

  void work(int tid, uint64_t seen) {
    for (;;) {
      // spin ~50 us for the next job, then sleep
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
      uint64_t job;
      for (uint32_t i = 0;; ++i) {
        job = job_.load(std::memory_order_acquire);
        if (job != seen) break;
        FASTRNN_PAUSE();
        if ((i & 255) == 255 && std::chrono::steady_clock::now() > until) {
          std::unique_lock<std::mutex> lock(mu_);
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          cv_.wait(lock, [&] { return job_.load(std::memory_order_seq_cst) != seen; });
          sleepers_.fetch_sub(1, std::memory_order_relaxed);
        }
      }
      seen = job;
      if (tid < n_) fn_(ctx_, tid, n_);
      done_.fetch_add(1, std::memory_order_release);
    }
  }

  // A forked child has only the forking thread: the workers are gone (and the old pool's
  // mutex may be held by one of them), so the child starts a fresh pool on first use.
  static void after_fork_child() { instance_.store(nullptr, std::memory_order_relaxed); }
  static std::mutex& create_mu() {
    static std::mutex m;
    return m;
  }

  inline static std::atomic<Pool*> instance_{nullptr};

 public:
  // jobs run on more than one thread since the process started (tests check the threaded
  // path really ran)
  inline static std::atomic<uint64_t> threaded_jobs{0};
  // of those, jobs that gave up their threads part way (barrier)
  inline static std::atomic<uint64_t> degraded_jobs{0};
  // tests: every job gives up its threads at its k-th barrier (0: never)
  inline static std::atomic<int64_t> give_up_at{0};

 private:
  std::atomic<bool> busy_{false};
  std::atomic<uint64_t> job_{0};
  std::atomic<int> done_{0}, sleepers_{0}, bar_count_{0};
  std::atomic<uint32_t> bar_gen_{0};
  std::atomic<bool> degrade_{false}, decision_{false};
  std::atomic<int64_t> backoff_until_{0};
  int64_t barriers_ = 0;  // in the running job; written by each barrier's last arriver
  void (*fn_)(void*, int, int) = nullptr;
  void* ctx_ = nullptr;
  int n_ = 1;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::thread> workers_;
};

}  // namespace fastrnn
