// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// Exact decode, device side: the kernel that turns an uploaded coded tensor
// (csrc/core/exact_codec.h) back into its elements, enqueued on the copy stream
// right after the upload, so the compute stream waits only for the finished
// decode. It writes the same bytes as the CPU reference DecodeExact.
//
// One thread block of kThreads decodes kThreads chunks (one per thread) into
// shared memory, then writes them out together (coalesced). Each block builds
// the canonical decode table (2^12 entries) in shared memory from the 256 code
// lengths. Like the CPU decoder it checks what it reads: lengths that are no
// prefix code, chunk offsets out of order or past the stream, bits that run out
// or hit no code. A corrupt chunk is not written; the block adds to *errors
// (device memory) and the engine reports it.
#ifndef PINSTREAM_CUDA_EXACT_DECODE_H_
#define PINSTREAM_CUDA_EXACT_DECODE_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "core/exact_codec.h"
#include "core/status.h"

namespace pinstream {

// Enqueues the decode of the coded tensor at `coded` (device memory, layout.bytes
// bytes, described by `layout`, which CheckExactLayout must accept) into `out`
// (layout.plain_bytes() bytes) on `stream`. `errors` (device memory, one int)
// counts corrupt chunks. No host synchronization, no allocation.
Status LaunchExactDecode(const uint8_t* coded, const ExactLayout& layout, uint8_t* out, int* errors,
                         cudaStream_t stream);

}  // namespace pinstream

#endif  // PINSTREAM_CUDA_EXACT_DECODE_H_
