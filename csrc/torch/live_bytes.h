// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// Process-wide accounting of what every PinStream runtime holds, so tests and
// the ComfyUI nodes can prove that a dropped model gives its memory back.
#ifndef PINSTREAM_TORCH_LIVE_BYTES_H_
#define PINSTREAM_TORCH_LIVE_BYTES_H_

#include <atomic>
#include <cstdint>

namespace pinstream {

struct LiveBytes {
  std::atomic<int64_t> host{0};      // host chunks and transfer buffers
  std::atomic<int64_t> pinned{0};    // the pinned part of `host`
  std::atomic<int64_t> device{0};    // slots and resident blocks
  std::atomic<int64_t> runtimes{0};  // runtimes constructed and not yet destroyed
};

LiveBytes& Live();

}  // namespace pinstream

#endif  // PINSTREAM_TORCH_LIVE_BYTES_H_
