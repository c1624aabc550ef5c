// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// Every CUDA runtime call goes through these macros: a failure becomes a
// Status carrying the call, cudaGetErrorString and the source line.
#ifndef PINSTREAM_CUDA_CUDA_CHECK_H_
#define PINSTREAM_CUDA_CUDA_CHECK_H_

#include <cuda_runtime_api.h>

#include <string>

#include "core/status.h"

namespace pinstream {

inline Status CudaStatus(cudaError_t err, const char* call, const char* file, int line) {
  if (err == cudaSuccess) return Status::Ok();
  std::string msg = std::string(call) + " failed: " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ") at " +
                    file + ":" + std::to_string(line);
  if (err == cudaErrorMemoryAllocation) return Status::OutOfMemory(msg);
  return Status::DeviceError(msg);
}

}  // namespace pinstream

#define PINSTREAM_CUDA_STATUS(call) ::pinstream::CudaStatus((call), #call, __FILE__, __LINE__)

#define PINSTREAM_CUDA_RETURN_IF_ERROR(call)                    \
  do {                                                          \
    ::pinstream::Status _ps_cuda = PINSTREAM_CUDA_STATUS(call); \
    if (!_ps_cuda.ok()) return _ps_cuda;                        \
  } while (0)

#endif  // PINSTREAM_CUDA_CUDA_CHECK_H_
