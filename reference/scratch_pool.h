#pragma once
// Scratch objects of a parallel loop (reference/parallel.h): an iteration takes one and gives
// it back, so that the next iteration, on any thread, reuses its memory. Temporaries above the
// allocator's 32 MiB (core/allocator.h) are otherwise fresh pages, faulted in and zeroed again
// for every iteration. A pool makes at most one object per thread running the loop at once;
// they are freed with the pool.
#include <memory>
#include <mutex>
#include <vector>

namespace kvsim::ref {

template <typename T>
class ScratchPool {
 public:
  // One object, taken from the pool until the lease ends.
  class Lease {
   public:
    Lease(ScratchPool& pool, std::unique_ptr<T> object) : pool_(pool), object_(std::move(object)) {}
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { pool_.give_back(std::move(object_)); }
    T& operator*() const { return *object_; }

   private:
    ScratchPool& pool_;
    std::unique_ptr<T> object_;
  };

  // A free object, or a new (default-constructed) one when every object is taken.
  Lease take() {
    const std::lock_guard lock(mutex_);
    if (free_.empty()) return Lease(*this, std::make_unique<T>());
    std::unique_ptr<T> object = std::move(free_.back());
    free_.pop_back();
    return Lease(*this, std::move(object));
  }

 private:
  void give_back(std::unique_ptr<T> object) {
    const std::lock_guard lock(mutex_);
    free_.push_back(std::move(object));
  }

  std::mutex mutex_;
  std::vector<std::unique_ptr<T>> free_;
};

}  // namespace kvsim::ref
