// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// Kernels for the CUDA tests only.
#ifndef PINSTREAM_TESTS_CPP_CUDA_TEST_KERNELS_H_
#define PINSTREAM_TESTS_CPP_CUDA_TEST_KERNELS_H_

#include <cuda_runtime_api.h>

#include "core/status.h"

namespace pinstream {

// One thread that busy-waits `cycles` SM clock cycles: a block whose compute
// is slow, so the compute stream lags far behind the copy stream.
Status LaunchSpin(long long cycles, cudaStream_t stream);

// The image the device runs for these kernels: the architecture its binary
// was built for (major * 10 + minor) and the PTX version.
Status KernelImage(int* binary_version, int* ptx_version);

}  // namespace pinstream

#endif  // PINSTREAM_TESTS_CPP_CUDA_TEST_KERNELS_H_
