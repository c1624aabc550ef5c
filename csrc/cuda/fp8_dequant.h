// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// FP8 transfer, device side: the kernel that expands an uploaded fp8 block
// (e4m3 with per-row scales, or a stored e4m3/e5m2 checkpoint tensor with one
// scale or none) into the compute dtype, enqueued on the copy stream right
// after the upload. It gives the SAME BITS as the CPU reference DequantizeFp8
// (csrc/core/fp8.h) for every input, NaN included:
//
//   out = Narrow(Decode(q) * scale)
//     Decode  exact, by bit manipulation (no table lookups);
//     *       one fp32 multiply, round to nearest even, no flush to zero
//             (inline PTX mul.rn.f32: unlike __fmul_rn it stays IEEE under
//             -ftz=true / --use_fast_math);
//     Narrow  fp32: as is; bf16: __float2bfloat16_rn (cvt.rn.bf16.f32);
//             fp16: __float2half_rn (cvt.rn.f16.f32), both RNE, overflow to
//             inf, subnormals kept; any NaN -> the canonical NaN of the dtype
//             (kCanonicalNan* in fp8.h).
//
// Performance: 16 codes (one 16-byte load) per thread per step, grid-stride,
// when `q` and `out` are both 16-byte aligned; any cols (rows may end inside
// a 16-code chunk) and any element count (a scalar tail). Unaligned pointers
// take a correct but slower one-code-per-thread path.
//
// Ordering: the kernel runs on `stream` like any other work; record the
// "block ready" event after it (not after the upload) so compute waits only
// for the finished dequantization. `q` must stay untouched until the kernel
// finishes; `q` and `out` must not overlap (the kernel is not in-place).
#ifndef PINSTREAM_CUDA_FP8_DEQUANT_H_
#define PINSTREAM_CUDA_FP8_DEQUANT_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/fp8.h"
#include "core/status.h"

namespace pinstream {

// Enqueues the dequantization described by `p` (every pointer in device
// memory, or memory the device can read/write) on `stream`. Validates `p` with
// ValidateDequantParams; launch failures come back as a DeviceError. Does not
// synchronize and allocates nothing. Empty matrices enqueue nothing.
Status LaunchDequantizeFp8(const Fp8DequantParams& p, cudaStream_t stream);

// Shorthand for our quantized blocks: e4m3 codes, one fp32 scale per row.
Status LaunchDequantizeE4M3(const uint8_t* q, const float* scales, int64_t rows, int64_t cols, FloatDtype out_dtype,
                            void* out, cudaStream_t stream);

}  // namespace pinstream

#endif  // PINSTREAM_CUDA_FP8_DEQUANT_H_
