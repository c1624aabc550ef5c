// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "cuda/exact_decode.h"

#include "cuda/cuda_check.h"

namespace pinstream {
namespace {

constexpr int kThreads = 64;  // chunks per block, one per thread
constexpr int kL = kExactMaxCodeBits;
constexpr int kTableSize = 1 << kL;

struct DecodeArgs {
  const uint8_t* coded;
  int elem_bytes;
  long long count;
  long long num_chunks;
  unsigned long long lengths_offset;
  unsigned long long chunks_offset;
  unsigned long long stream_offset;
  unsigned long long stream_words;
  unsigned long long raw_offset;
  uint8_t* out;
  int* errors;
};

__device__ inline uint32_t LoadWord(const uint8_t* p) {
  // the stream is 16-byte aligned within the tensor, but the tensor may not be
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) | (static_cast<uint32_t>(p[2]) << 16) |
         (static_cast<uint32_t>(p[3]) << 24);
}

__global__ void __launch_bounds__(kThreads) ExactDecodeKernel(DecodeArgs a) {
  __shared__ uint16_t table[kTableSize];
  __shared__ uint8_t lens[256];
  __shared__ int first_code[kL + 2];
  __shared__ int bad_code;
  __shared__ uint8_t top[kThreads * kExactChunkSymbols];
  __shared__ int chunk_ok[kThreads];
  const int tid = threadIdx.x;
  for (int s = tid; s < 256; s += kThreads) lens[s] = a.coded[a.lengths_offset + s];
  for (int i = tid; i < kTableSize; i += kThreads) table[i] = 0;
  __syncthreads();
  if (tid == 0) {
    int count[kL + 1] = {0};
    long long kraft = 0;
    int bad = 0;
    for (int s = 0; s < 256; ++s) {
      const int l = lens[s];
      if (l > kL) bad = 1;
      if (l > 0 && l <= kL) {
        ++count[l];
        kraft += 1ll << (kL - l);
      }
    }
    if (kraft > (1ll << kL)) bad = 1;
    int code = 0;
    first_code[0] = 0;
    for (int l = 1; l <= kL; ++l) {
      code = (code + count[l - 1]) << 1;
      first_code[l] = code;
    }
    bad_code = bad;
  }
  __syncthreads();
  if (bad_code) {
    if (tid == 0) atomicAdd(a.errors, 1);
    return;
  }
  // canonical code of each symbol: its length's first code plus its rank among
  // the symbols of that length (by value)
  for (int s = tid; s < 256; s += kThreads) {
    const int l = lens[s];
    if (l == 0) continue;
    int rank = 0;
    for (int t = 0; t < s; ++t) rank += lens[t] == l;
    const int code = first_code[l] + rank;
    const int begin = code << (kL - l), n = 1 << (kL - l);
    for (int k = 0; k < n; ++k) table[begin + k] = static_cast<uint16_t>((l << 8) | s);
  }
  __syncthreads();

  // one chunk per thread, top bytes into shared memory
  const long long chunk = static_cast<long long>(blockIdx.x) * kThreads + tid;
  int ok = 1;
  if (chunk < a.num_chunks) {
    const uint8_t* chunks = a.coded + a.chunks_offset;
    const uint32_t begin = LoadWord(chunks + 4 * chunk), end = LoadWord(chunks + 4 * (chunk + 1));
    if (begin > end || end > a.stream_words) {
      ok = 0;
    } else {
      const uint8_t* words = a.coded + a.stream_offset;
      uint32_t pos = begin;
      unsigned long long acc = 0;
      int nbits = 0;
      const long long first = chunk * kExactChunkSymbols;
      const int n = static_cast<int>(min(static_cast<long long>(kExactChunkSymbols), a.count - first));
      for (int i = 0; i < n; ++i) {
        while (nbits <= 32 && pos < end) {
          acc |= static_cast<unsigned long long>(LoadWord(words + 4ull * pos)) << (32 - nbits);
          nbits += 32;
          ++pos;
        }
        const uint16_t e = table[acc >> (64 - kL)];
        const int len = e >> 8;
        if (len == 0 || len > nbits) {
          ok = 0;
          break;
        }
        acc <<= len;
        nbits -= len;
        top[tid * kExactChunkSymbols + i] = static_cast<uint8_t>(e & 0xFF);
      }
    }
    if (!ok) atomicAdd(a.errors, 1);
  }
  chunk_ok[tid] = ok;
  __syncthreads();

  // write the block's elements together: consecutive threads, consecutive elements
  const long long base = static_cast<long long>(blockIdx.x) * kThreads * kExactChunkSymbols;
  const long long end = min(a.count, base + static_cast<long long>(kThreads) * kExactChunkSymbols);
  const uint8_t* raw = a.coded + a.raw_offset;
  for (long long i = base + tid; i < end; i += kThreads) {
    const int local = static_cast<int>(i - base);
    if (!chunk_ok[local / kExactChunkSymbols]) continue;
    if (a.elem_bytes == 2) {
      const uint16_t v = static_cast<uint16_t>(raw[i]) | (static_cast<uint16_t>(top[local]) << 8);
      a.out[2 * i] = static_cast<uint8_t>(v & 0xFF);
      a.out[2 * i + 1] = static_cast<uint8_t>(v >> 8);
    } else {
      a.out[i] = top[local];
    }
  }
}

}  // namespace

Status LaunchExactDecode(const uint8_t* coded, const ExactLayout& l, uint8_t* out, int* errors, cudaStream_t stream) {
  PINSTREAM_RETURN_IF_ERROR(CheckExactLayout(l, l.bytes));
  if (l.count == 0) return Status::Ok();
  if (coded == nullptr || out == nullptr || errors == nullptr) {
    return Status::InvalidArgument("exact decode: null pointer for a non-empty tensor");
  }
  DecodeArgs a{coded,          l.elem_bytes, l.count, l.num_chunks, l.lengths_offset, l.chunks_offset, l.stream_offset,
               l.stream_words, l.raw_offset, out,     errors};
  const long long blocks = (l.num_chunks + kThreads - 1) / kThreads;
  if (blocks > 0x7FFFFFFFll) return Status::InvalidArgument("exact decode: tensor too large for one launch");
  ExactDecodeKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
  PINSTREAM_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::Ok();
}

}  // namespace pinstream
