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

// Below this many elementary operations (~0.2 ms) a call stays on the calling thread: waking
// threads costs microseconds on an idle machine and up to a scheduler slice on a busy one.
constexpr int64_t kMinParallelWork = int64_t(1) << 18;

// Calls fn(a, b) on consecutive chunks [a, b) of [begin, end), each at most `chunk` long, from
// up to at::get_num_threads() threads. `work` estimates the elementary operations of the whole
// range; the call runs inline when it is small or the range is a single chunk.
template <typename F>
void dynamic_parallel_for(int64_t begin, int64_t end, int64_t chunk, int64_t work, const F& fn) {
  if (end <= begin) return;
  chunk = std::max<int64_t>(chunk, 1);
  const int64_t chunks = (end - begin + chunk - 1) / chunk;
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), chunks);
  if (workers <= 1 || work < kMinParallelWork || at::in_parallel_region()) {
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
