// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// Small CUDA kernels used by the runtime's GPU tests and checks. Each takes
// plain pointers and a stream; launch errors come back as a Status.
#ifndef PINSTREAM_CUDA_KERNELS_H_
#define PINSTREAM_CUDA_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/status.h"

namespace pinstream {

// Position-weighted checksum of `bytes` bytes at `data` into *out (device
// memory, 8 bytes, zeroed by the call). Matches HostChecksum bit for bit.
Status LaunchChecksum(const void* data, uint64_t bytes, unsigned long long* out, cudaStream_t stream);

// Host reference of the same checksum.
unsigned long long HostChecksum(const void* data, uint64_t bytes);

}  // namespace pinstream

#endif  // PINSTREAM_CUDA_KERNELS_H_
