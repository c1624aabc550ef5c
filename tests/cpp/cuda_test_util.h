// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// For the CUDA tests: they compile everywhere and skip where no GPU is present.
#ifndef PINSTREAM_TESTS_CPP_CUDA_TEST_UTIL_H_
#define PINSTREAM_TESTS_CPP_CUDA_TEST_UTIL_H_

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

namespace pinstream {
namespace testing_util {

inline bool HaveGpu() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
}

}  // namespace testing_util
}  // namespace pinstream

#define REQUIRE_GPU() \
  if (!::pinstream::testing_util::HaveGpu()) GTEST_SKIP() << "no CUDA device on this machine"

#endif  // PINSTREAM_TESTS_CPP_CUDA_TEST_UTIL_H_
