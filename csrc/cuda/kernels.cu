// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "cuda/kernels.h"

#include "cuda/cuda_check.h"

namespace pinstream {

namespace {

__host__ __device__ inline unsigned long long Mix(uint64_t index, uint8_t byte) {
  return (static_cast<unsigned long long>(byte) + 1ULL) * (index % 65521ULL + 1ULL);
}

__global__ void ChecksumKernel(const uint8_t* data, uint64_t bytes, unsigned long long* out) {
  unsigned long long local = 0;
  const uint64_t stride = static_cast<uint64_t>(blockDim.x) * gridDim.x;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; i < bytes; i += stride) {
    local += Mix(i, data[i]);
  }
  // Warp reduction, then one atomic per warp.
  for (int offset = 16; offset > 0; offset /= 2) {
    local += __shfl_down_sync(0xffffffffu, local, offset);
  }
  if ((threadIdx.x & 31) == 0) atomicAdd(out, local);
}

}  // namespace

Status LaunchChecksum(const void* data, uint64_t bytes, unsigned long long* out, cudaStream_t stream) {
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(out, 0, sizeof(*out), stream));
  if (bytes == 0) return Status::Ok();
  const int threads = 256;
  const uint64_t want = (bytes + threads - 1) / threads;
  const int blocks = static_cast<int>(want < 1024 ? want : 1024);
  ChecksumKernel<<<blocks, threads, 0, stream>>>(static_cast<const uint8_t*>(data), bytes, out);
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

unsigned long long HostChecksum(const void* data, uint64_t bytes) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  unsigned long long sum = 0;
  for (uint64_t i = 0; i < bytes; ++i) sum += Mix(i, p[i]);
  return sum;
}

}  // namespace pinstream
