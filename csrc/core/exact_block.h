// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// The exact (coded) transfer form of a whole block: per tensor in order, at
// 16-byte aligned offsets, its coded form (csrc/core/exact_codec.h) where
// coding pays, else its bytes as stored. The BlockTransform made here writes the
// block's device layout back: the host engine with the CPU reference decoder,
// the CUDA engine with its kernel, the same bytes either way. The coded form is
// the only host copy of such a block: ReadExactTensor decodes a tensor back on
// the host when its values are asked for.
#ifndef PINSTREAM_CORE_EXACT_BLOCK_H_
#define PINSTREAM_CORE_EXACT_BLOCK_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/copy_engine.h"
#include "core/exact_codec.h"
#include "core/status.h"

namespace pinstream {

// One tensor of a block: where it goes in the device layout, its bytes as
// stored, and its code when it is coded (null: sent as stored).
struct ExactTensor {
  uint64_t offset = 0;
  uint64_t bytes = 0;
  const ExactCode* code = nullptr;
};

// Fills `out` with the jobs for `tensors` and returns the transfer bytes.
uint64_t MakeExactTransform(const std::vector<ExactTensor>& tensors, BlockTransform* out);

// Writes tensor `index`'s transfer form (coded or as stored) from `data` (its
// bytes in memory order) into `transfer` (the block's transfer bytes).
Status EncodeExactTensor(const void* data, const ExactTensor& tensor, const TransformJob& job, uint8_t* transfer,
                         int threads);

// Writes the stored bytes of the tensor behind `job` (job.exact.plain_bytes()
// or job.bytes) from the block's transfer bytes into `out`.
Status ReadExactTensor(const uint8_t* transfer, uint64_t transfer_bytes, const TransformJob& job, void* out,
                       int threads);

// Why a tensor of `elem_bytes`-byte elements of a floating kind (`floating`),
// with `count` elements, is sent as stored ("" when it may be coded; whether
// coding then pays is the code's to say).
std::string ExactSkipReason(bool floating, int elem_bytes, int64_t count);

// Tensors below this many elements are sent as stored: the 256 code lengths and
// the chunk table would cost more than coding saves.
constexpr int64_t kExactMinElements = 4096;

}  // namespace pinstream

#endif  // PINSTREAM_CORE_EXACT_BLOCK_H_
