// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// Exact coding of floating-point weights: fewer bytes in pinned RAM and on the
// link, the same bits after decoding.
//
// An element of 1 or 2 bytes (fp8, bf16, fp16) is split into its most
// significant byte and the rest. The rest (bf16: the exponent's lowest bit and
// the 7 mantissa bits; fp16: the low 8 mantissa bits) is close to uniform and is
// stored as it is, one byte plane. The top byte (bf16: sign and 7 exponent bits;
// fp16: sign, exponent, 2 mantissa bits; fp8: the whole code) carries little
// information in trained weights (bf16: about 2.6 bits) and is Huffman coded
// with a canonical code of at most kExactMaxCodeBits bits, so a decoder needs
// one table of 2^12 entries. Symbols are coded in chunks of kExactChunkSymbols,
// each starting on a 32-bit word, so chunks decode independently (threads on
// the CPU, thread blocks on the GPU) and a decoder never needs more than its
// chunk's words.
//
// One coded tensor, at 16-byte aligned offsets from its start:
//   lengths   256 bytes: the code length of each top-byte value (0: absent)
//   chunks    uint32[num_chunks + 1]: the first stream word of each chunk, and
//             the end of the stream
//   stream    uint32 words; within a word the first code bit is bit 31
//   raw       count * (elem_bytes - 1) bytes: the low bytes, element i's at
//             raw[i * (elem_bytes - 1)] (little-endian order)
// Element i decodes to raw bytes then its symbol as the top byte: the same
// little-endian element it was.
//
// The encoder is multi-threaded and deterministic: the same tensor gives the
// same bytes on any thread count. The decoder (CPU reference here; the CUDA
// kernel in csrc/cuda/exact_decode.cu gives the same bytes) checks everything it
// reads: whatever the coded bytes, it never reads or writes outside the tensor
// it was given, and reports corrupt input.
#ifndef PINSTREAM_CORE_EXACT_CODEC_H_
#define PINSTREAM_CORE_EXACT_CODEC_H_

#include <array>
#include <cstdint>
#include <vector>

#include "core/status.h"

namespace pinstream {

constexpr int kExactMaxCodeBits = 12;
constexpr int64_t kExactChunkSymbols = 512;
constexpr uint32_t kExactFormatVersion = 1;

// Where the parts of one coded tensor lie (from its start) and how large it is.
struct ExactLayout {
  int elem_bytes = 2;  // 1 or 2
  int64_t count = 0;   // elements
  int64_t num_chunks = 0;
  uint64_t lengths_offset = 0;
  uint64_t chunks_offset = 0;
  uint64_t stream_offset = 0;
  uint64_t stream_words = 0;
  uint64_t raw_offset = 0;
  uint64_t bytes = 0;  // the whole coded tensor

  uint64_t raw_bytes() const { return static_cast<uint64_t>(count) * static_cast<uint64_t>(elem_bytes - 1); }
  // The tensor as stored.
  uint64_t plain_bytes() const { return static_cast<uint64_t>(count) * static_cast<uint64_t>(elem_bytes); }
};

// The code of one tensor: what EncodeExact writes, found by AnalyzeExact.
struct ExactCode {
  std::array<uint8_t, 256> lengths{};
  std::vector<uint32_t> chunk_words;  // num_chunks + 1 entries
  ExactLayout layout;
  double top_entropy_bits = 0;  // Shannon entropy of the top byte
  // Coding pays: the coded tensor is smaller than the tensor as stored.
  bool pays() const { return layout.bytes < layout.plain_bytes(); }
};

// Counts, codes and sizes `count` elements of `elem_bytes` (1 or 2) at `data`,
// on up to `threads` threads.
Status AnalyzeExact(const void* data, int elem_bytes, int64_t count, int threads, ExactCode* out);

// Writes the coded tensor (code.layout.bytes bytes) to `out`.
Status EncodeExact(const void* data, const ExactCode& code, uint8_t* out, int threads);

// Checks that `layout` describes a tensor that fits in `coded_bytes` bytes.
Status CheckExactLayout(const ExactLayout& layout, uint64_t coded_bytes);

// Decodes a coded tensor of `coded_bytes` bytes described by `layout` into
// `out` (layout.plain_bytes() bytes), on up to `threads` threads. Corrupt input
// (lengths that are no prefix code, chunk offsets out of order or past the
// stream, a chunk whose bits run out or hit an unused code) fails with
// InvalidArgument; `out` may then hold partial output.
Status DecodeExact(const uint8_t* coded, uint64_t coded_bytes, const ExactLayout& layout, void* out, int threads = 1);

// The decode table of a code: 2^kExactMaxCodeBits entries, symbol in the low 8
// bits and code length in the high 8 (0: no code starts with these bits).
// Fails when `lengths` are no prefix code of at most kExactMaxCodeBits bits.
Status BuildExactDecodeTable(const uint8_t* lengths, std::vector<uint16_t>* table);

}  // namespace pinstream

#endif  // PINSTREAM_CORE_EXACT_CODEC_H_
