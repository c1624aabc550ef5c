// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// The fp8 transfer form of a whole block (the per-element definitions are in
// core/fp8.h). A block is sent as, per tensor in order (16-byte aligned):
//   a floating-point matrix (fp32/fp16/bf16, 2-D or more, rows = dim 0):
//       fp32 scales (one per row), then e4m3 codes (rows x cols);
//   anything else (1-D weights, integers, empty tensors): its bytes as stored.
// The BlockTransform made here writes the block's device layout back from
// that form; the host engine runs it with the CPU reference, the CUDA engine
// with its kernel, bit for bit the same.
#ifndef PINSTREAM_CORE_FP8_BLOCK_H_
#define PINSTREAM_CORE_FP8_BLOCK_H_

#include <cstdint>
#include <vector>

#include "core/copy_engine.h"
#include "core/fp8.h"
#include "core/status.h"

namespace pinstream {

// One tensor of a block as the transfer format sees it.
struct TransferTensor {
  uint64_t offset = 0;  // in the block's device layout
  uint64_t bytes = 0;
  // Quantized when set: a float32/float16/bfloat16 tensor of 2+ dimensions
  // and at least one element, seen as a [rows, cols] row-major matrix.
  bool quantize = false;
  FloatDtype dtype = FloatDtype::kBFloat16;
  int64_t rows = 0;
  int64_t cols = 0;
};

// Fills `out` with the jobs for `tensors` and returns the transfer bytes.
uint64_t MakeFp8Transform(const std::vector<TransferTensor>& tensors, BlockTransform* out);

// Writes the transfer form of a block into `out` (MakeFp8Transform's bytes):
// srcs[i] points at tensor i's bytes (contiguous). Matrices are quantized in
// row ranges on up to `threads` threads; the ranges and the order their
// errors merge in do not depend on the thread count, so neither do the codes
// or `error`.
Status QuantizeFp8Block(const std::vector<TransferTensor>& tensors, const std::vector<const void*>& srcs,
                        const BlockTransform& transform, uint8_t* out, int threads, QuantError* error);

}  // namespace pinstream

#endif  // PINSTREAM_CORE_FP8_BLOCK_H_
