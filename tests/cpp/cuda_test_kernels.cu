// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "cuda_test_kernels.h"

#include "cuda/cuda_check.h"

namespace pinstream {
namespace {
__global__ void SpinKernel(long long cycles) {
  const long long start = clock64();
  while (clock64() - start < cycles) {
  }
}
}  // namespace

Status KernelImage(int* binary_version, int* ptx_version) {
  cudaFuncAttributes attr;
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaFuncGetAttributes(&attr, SpinKernel));
  *binary_version = attr.binaryVersion;
  *ptx_version = attr.ptxVersion;
  return Status::Ok();
}

Status LaunchSpin(long long cycles, cudaStream_t stream) {
  SpinKernel<<<1, 1, 0, stream>>>(cycles);
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

}  // namespace pinstream
