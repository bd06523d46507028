// Launch geometry shared by the CUDA kernels: grid-stride loops over n elements.
#pragma once

#include <algorithm>
#include <cstdint>

namespace mrcnn {

constexpr int kThreads = 256;  // threads per block; a power of two (block reductions halve it)

// Blocks of kThreads covering n elements, at least 1, capped (the loops stride over the rest).
inline int64_t blocks_for(int64_t n) {
  return std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8));
}

}  // namespace mrcnn
