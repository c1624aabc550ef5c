// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/exact_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <queue>
#include <string>

#include "core/parallel.h"

namespace pinstream {
namespace {

constexpr int64_t kHistItem = int64_t{1} << 20;  // elements per histogram work item
constexpr int64_t kChunksPerItem = 256;          // chunks per encode / decode work item

uint64_t Align16(uint64_t v) { return (v + 15) / 16 * 16; }

inline uint8_t TopByte(const uint8_t* data, int elem_bytes, int64_t i) {
  return data[i * elem_bytes + (elem_bytes - 1)];
}

// Huffman code lengths for `freq` (symbols with freq 0 get 0), limited to
// kExactMaxCodeBits: lengths over the limit are cut to it, then the least
// frequent symbols below the limit get one bit longer until the lengths form a
// prefix code again (Kraft sum <= 1). Ties break by symbol: deterministic.
std::array<uint8_t, 256> CodeLengths(const std::array<uint64_t, 256>& freq) {
  std::array<uint8_t, 256> len{};
  std::vector<int> used;
  for (int s = 0; s < 256; ++s) {
    if (freq[s] > 0) used.push_back(s);
  }
  if (used.empty()) return len;
  if (used.size() == 1) {
    len[used[0]] = 1;
    return len;
  }
  // Huffman tree: nodes 0..255 are leaves; parents follow.
  struct Node {
    uint64_t weight;
    int id;
  };
  auto cmp = [](const Node& a, const Node& b) { return a.weight != b.weight ? a.weight > b.weight : a.id > b.id; };
  std::priority_queue<Node, std::vector<Node>, decltype(cmp)> heap(cmp);
  std::vector<int> parent(512, -1);
  for (int s : used) heap.push(Node{freq[s], s});
  int next = 256;
  while (heap.size() > 1) {
    Node a = heap.top();
    heap.pop();
    Node b = heap.top();
    heap.pop();
    parent[a.id] = next;
    parent[b.id] = next;
    heap.push(Node{a.weight + b.weight, next});
    ++next;
  }
  int longest = 0;
  std::array<int, 256> depth{};
  for (int s : used) {
    int d = 0;
    for (int n = s; parent[n] >= 0; n = parent[n]) ++d;
    depth[s] = d;
    longest = std::max(longest, d);
  }
  const int L = kExactMaxCodeBits;
  for (int s : used) len[s] = static_cast<uint8_t>(std::min(depth[s], L));
  if (longest <= L) return len;
  int64_t kraft = 0;  // in units of 2^-L
  for (int s : used) kraft += int64_t{1} << (L - len[s]);
  std::vector<int> by_freq = used;
  std::stable_sort(by_freq.begin(), by_freq.end(), [&](int a, int b) { return freq[a] < freq[b]; });
  const int64_t cap = int64_t{1} << L;
  while (kraft > cap) {
    for (int s : by_freq) {
      if (len[s] < L) {
        kraft -= int64_t{1} << (L - len[s] - 1);
        ++len[s];
        break;
      }
    }
  }
  // Room left over: shorten the most frequent codes where it still fits.
  for (auto it = by_freq.rbegin(); it != by_freq.rend(); ++it) {
    const int s = *it;
    while (len[s] > 1 && kraft + (int64_t{1} << (L - len[s])) <= cap) {
      kraft += int64_t{1} << (L - len[s]);
      --len[s];
    }
  }
  return len;
}

// Canonical codes of `len`: by (length, symbol), each the previous plus one,
// shifted left when the length grows.
std::array<uint32_t, 256> CanonicalCodes(const std::array<uint8_t, 256>& len) {
  std::array<uint32_t, 256> code{};
  std::vector<int> order;
  for (int s = 0; s < 256; ++s) {
    if (len[s] > 0) order.push_back(s);
  }
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return len[a] < len[b]; });
  uint32_t c = 0;
  int prev = 0;
  for (size_t k = 0; k < order.size(); ++k) {
    const int s = order[k];
    if (k > 0) ++c;
    c <<= (len[s] - prev);
    prev = len[s];
    code[s] = c;
  }
  return code;
}

Status CheckLengths(const uint8_t* lengths) {
  int64_t kraft = 0;
  for (int s = 0; s < 256; ++s) {
    if (lengths[s] > kExactMaxCodeBits) {
      return Status::InvalidArgument("exact decode: code length " + std::to_string(lengths[s]) + " of symbol " +
                                     std::to_string(s) + " is over " + std::to_string(kExactMaxCodeBits));
    }
    if (lengths[s] > 0) kraft += int64_t{1} << (kExactMaxCodeBits - lengths[s]);
  }
  if (kraft > (int64_t{1} << kExactMaxCodeBits)) {
    return Status::InvalidArgument("exact decode: the code lengths are no prefix code (Kraft sum over 1)");
  }
  return Status::Ok();
}

// Decodes chunks [c0, c1) of a checked tensor.
Status DecodeChunks(const uint8_t* coded, const ExactLayout& l, const uint16_t* table, int64_t c0, int64_t c1,
                    uint8_t* out) {
  const uint8_t* raw = coded + l.raw_offset;
  const int w = l.elem_bytes;
  const int L = kExactMaxCodeBits;
  uint32_t bounds[2];
  for (int64_t c = c0; c < c1; ++c) {
    std::memcpy(bounds, coded + l.chunks_offset + 4 * c, 8);
    const uint32_t begin = bounds[0], end = bounds[1];
    if (begin > end || end > l.stream_words) {
      return Status::InvalidArgument("exact decode: chunk " + std::to_string(c) + " spans stream words [" +
                                     std::to_string(begin) + ", " + std::to_string(end) + ") of " +
                                     std::to_string(l.stream_words));
    }
    const uint8_t* words = coded + l.stream_offset;
    uint32_t pos = begin;
    uint64_t acc = 0;
    int nbits = 0;
    const int64_t first = c * kExactChunkSymbols;
    const int64_t last = std::min<int64_t>(l.count, first + kExactChunkSymbols);
    for (int64_t i = first; i < last; ++i) {
      while (nbits <= 32 && pos < end) {
        uint32_t word;
        std::memcpy(&word, words + 4 * static_cast<uint64_t>(pos), 4);
        acc |= static_cast<uint64_t>(word) << (32 - nbits);
        nbits += 32;
        ++pos;
      }
      const uint16_t e = table[acc >> (64 - L)];
      const int len = e >> 8;
      if (len == 0 || len > nbits) {
        return Status::InvalidArgument("exact decode: chunk " + std::to_string(c) + " is corrupt at element " +
                                       std::to_string(i) + (len == 0 ? " (no code)" : " (its bits ran out)"));
      }
      acc <<= len;
      nbits -= len;
      uint8_t* o = out + i * w;
      if (w == 2) o[0] = raw[i];
      o[w - 1] = static_cast<uint8_t>(e & 0xFF);
    }
  }
  return Status::Ok();
}

}  // namespace

Status BuildExactDecodeTable(const uint8_t* lengths, std::vector<uint16_t>* table) {
  PINSTREAM_RETURN_IF_ERROR(CheckLengths(lengths));
  std::array<uint8_t, 256> len;
  std::memcpy(len.data(), lengths, 256);
  const std::array<uint32_t, 256> code = CanonicalCodes(len);
  const int L = kExactMaxCodeBits;
  table->assign(size_t{1} << L, 0);
  for (int s = 0; s < 256; ++s) {
    if (len[s] == 0) continue;
    const uint32_t first = code[s] << (L - len[s]);
    const uint32_t n = 1u << (L - len[s]);
    for (uint32_t k = 0; k < n; ++k) (*table)[first + k] = static_cast<uint16_t>((len[s] << 8) | s);
  }
  return Status::Ok();
}

Status CheckExactLayout(const ExactLayout& l, uint64_t coded_bytes) {
  auto bad = [&](const std::string& why) { return Status::InvalidArgument("exact layout: " + why); };
  if (l.elem_bytes != 1 && l.elem_bytes != 2) return bad("element size " + std::to_string(l.elem_bytes));
  if (l.count < 0 || l.num_chunks != (l.count + kExactChunkSymbols - 1) / kExactChunkSymbols) {
    return bad(std::to_string(l.num_chunks) + " chunks for " + std::to_string(l.count) + " elements");
  }
  if (l.bytes > coded_bytes)
    return bad("needs " + std::to_string(l.bytes) + " bytes, has " + std::to_string(coded_bytes));
  auto within = [&](uint64_t off, uint64_t n) { return off <= l.bytes && n <= l.bytes - off; };
  if (!within(l.lengths_offset, 256) || !within(l.chunks_offset, 4 * static_cast<uint64_t>(l.num_chunks + 1)) ||
      l.stream_words > (uint64_t{1} << 32) - 1 || !within(l.stream_offset, 4 * l.stream_words) ||
      !within(l.raw_offset, l.raw_bytes())) {
    return bad("a part lies outside the tensor's " + std::to_string(l.bytes) + " bytes");
  }
  return Status::Ok();
}

Status AnalyzeExact(const void* data, int elem_bytes, int64_t count, int threads, ExactCode* out) {
  if (elem_bytes != 1 && elem_bytes != 2) {
    return Status::InvalidArgument("exact coding takes 1- or 2-byte elements, got " + std::to_string(elem_bytes));
  }
  if (count < 0 || (count > 0 && data == nullptr)) return Status::InvalidArgument("exact coding: no data");
  const auto* d = static_cast<const uint8_t*>(data);
  // Histogram of the top bytes: fixed items, summed in order.
  const int64_t items = (count + kHistItem - 1) / kHistItem;
  std::vector<std::array<uint64_t, 256>> part(static_cast<size_t>(items));
  ParallelFor(items, threads, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      std::array<uint64_t, 256>& h = part[k];
      h.fill(0);
      const int64_t hi = std::min(count, (k + 1) * kHistItem);
      for (int64_t i = k * kHistItem; i < hi; ++i) ++h[TopByte(d, elem_bytes, i)];
    }
  });
  std::array<uint64_t, 256> freq{};
  for (const auto& h : part) {
    for (int s = 0; s < 256; ++s) freq[s] += h[s];
  }
  out->top_entropy_bits = 0;
  for (int s = 0; s < 256; ++s) {
    if (freq[s] == 0) continue;
    const double p = static_cast<double>(freq[s]) / static_cast<double>(count);
    out->top_entropy_bits -= p * std::log2(p);
  }
  out->lengths = CodeLengths(freq);
  // Each chunk's words: the sum of its symbols' code lengths, rounded up.
  ExactLayout& l = out->layout;
  l = ExactLayout();
  l.elem_bytes = elem_bytes;
  l.count = count;
  l.num_chunks = (count + kExactChunkSymbols - 1) / kExactChunkSymbols;
  out->chunk_words.assign(static_cast<size_t>(l.num_chunks + 1), 0);
  const int64_t citems = (l.num_chunks + kChunksPerItem - 1) / kChunksPerItem;
  ParallelFor(citems, threads, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const int64_t c1 = std::min(l.num_chunks, (k + 1) * kChunksPerItem);
      for (int64_t c = k * kChunksPerItem; c < c1; ++c) {
        uint64_t bits = 0;
        const int64_t hi = std::min(count, (c + 1) * kExactChunkSymbols);
        for (int64_t i = c * kExactChunkSymbols; i < hi; ++i) bits += out->lengths[TopByte(d, elem_bytes, i)];
        out->chunk_words[c + 1] = static_cast<uint32_t>((bits + 31) / 32);
      }
    }
  });
  uint64_t words = 0;
  for (int64_t c = 0; c < l.num_chunks; ++c) {
    words += out->chunk_words[c + 1];
    if (words > 0xFFFFFFFFull) return Status::InvalidArgument("exact coding: tensor too large for 32-bit offsets");
    out->chunk_words[c + 1] = static_cast<uint32_t>(words);
  }
  l.lengths_offset = 0;
  l.chunks_offset = Align16(256);
  l.stream_offset = Align16(l.chunks_offset + 4 * static_cast<uint64_t>(l.num_chunks + 1));
  l.stream_words = words;
  l.raw_offset = Align16(l.stream_offset + 4 * words);
  l.bytes = Align16(l.raw_offset + l.raw_bytes());
  return Status::Ok();
}

Status EncodeExact(const void* data, const ExactCode& code, uint8_t* out, int threads) {
  const ExactLayout& l = code.layout;
  if (l.count > 0 && (data == nullptr || out == nullptr)) return Status::InvalidArgument("exact encode: no data");
  if (code.chunk_words.size() != static_cast<size_t>(l.num_chunks + 1)) {
    return Status::InvalidArgument("exact encode: the code does not match its layout");
  }
  const auto* d = static_cast<const uint8_t*>(data);
  std::memset(out, 0, l.bytes);
  std::memcpy(out + l.lengths_offset, code.lengths.data(), 256);
  std::memcpy(out + l.chunks_offset, code.chunk_words.data(), 4 * code.chunk_words.size());
  const std::array<uint32_t, 256> codes = CanonicalCodes(code.lengths);
  const int w = l.elem_bytes;
  const int64_t citems = (l.num_chunks + kChunksPerItem - 1) / kChunksPerItem;
  ParallelFor(citems, threads, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const int64_t c1 = std::min(l.num_chunks, (k + 1) * kChunksPerItem);
      for (int64_t c = k * kChunksPerItem; c < c1; ++c) {
        uint8_t* words = out + l.stream_offset + 4 * static_cast<uint64_t>(code.chunk_words[c]);
        uint64_t acc = 0;  // pending bits, left-aligned
        int nbits = 0;
        const int64_t hi = std::min(l.count, (c + 1) * kExactChunkSymbols);
        for (int64_t i = c * kExactChunkSymbols; i < hi; ++i) {
          const uint8_t s = TopByte(d, w, i);
          acc |= static_cast<uint64_t>(codes[s]) << (64 - nbits - code.lengths[s]);
          nbits += code.lengths[s];
          if (nbits >= 32) {
            const auto word = static_cast<uint32_t>(acc >> 32);
            std::memcpy(words, &word, 4);
            words += 4;
            acc <<= 32;
            nbits -= 32;
          }
        }
        if (nbits > 0) {
          const auto word = static_cast<uint32_t>(acc >> 32);
          std::memcpy(words, &word, 4);
        }
        if (w == 2) {
          for (int64_t i = c * kExactChunkSymbols; i < hi; ++i) out[l.raw_offset + i] = d[i * 2];
        }
      }
    }
  });
  return Status::Ok();
}

Status DecodeExact(const uint8_t* coded, uint64_t coded_bytes, const ExactLayout& l, void* out, int threads) {
  PINSTREAM_RETURN_IF_ERROR(CheckExactLayout(l, coded_bytes));
  if (l.count == 0) return Status::Ok();
  if (coded == nullptr || out == nullptr) return Status::InvalidArgument("exact decode: no data");
  std::vector<uint16_t> table;
  PINSTREAM_RETURN_IF_ERROR(BuildExactDecodeTable(coded + l.lengths_offset, &table));
  uint32_t last;
  std::memcpy(&last, coded + l.chunks_offset + 4 * static_cast<uint64_t>(l.num_chunks), 4);
  if (last != l.stream_words) return Status::InvalidArgument("exact decode: the chunk table does not end the stream");
  const int64_t items = (l.num_chunks + kChunksPerItem - 1) / kChunksPerItem;
  std::vector<Status> status(static_cast<size_t>(items));
  ParallelFor(items, threads, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      status[k] = DecodeChunks(coded, l, table.data(), k * kChunksPerItem,
                               std::min(l.num_chunks, (k + 1) * kChunksPerItem), static_cast<uint8_t*>(out));
    }
  });
  for (const Status& s : status) PINSTREAM_RETURN_IF_ERROR(s);
  return Status::Ok();
}

}  // namespace pinstream
