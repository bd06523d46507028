// Dynamic scheduling on top of at::parallel_for.
//
// at::parallel_for splits a range into one static chunk per thread, so a call lasts as long as
// its slowest thread: on a shared or oversubscribed machine one descheduled thread doubles the
// time. Here each thread pulls chunks from a shared counter until the work runs out, so a thread
// that starts late simply takes fewer chunks. Which thread runs a chunk never changes what the
// chunk computes, so results stay deterministic.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace mrcnn {

// Calls fn(a, b) on consecutive chunks [a, b) of [begin, end), each at most `chunk` long, from
// up to at::get_num_threads() threads. Runs inline when the range is a single chunk.
template <typename F>
void dynamic_parallel_for(int64_t begin, int64_t end, int64_t chunk, const F& fn) {
  if (end <= begin) return;
  chunk = std::max<int64_t>(chunk, 1);
  const int64_t chunks = (end - begin + chunk - 1) / chunk;
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), chunks);
  if (workers <= 1 || at::in_parallel_region()) {
    fn(begin, end);
    return;
  }
  std::atomic<int64_t> next{begin};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (;;) {
      const int64_t a = next.fetch_add(chunk);
      if (a >= end) break;
      fn(a, std::min(end, a + chunk));
    }
  });
}

}  // namespace mrcnn
