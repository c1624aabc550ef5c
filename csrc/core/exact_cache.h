// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// ExactCache: coded tensors on local disk, so that offloading the same weights
// again does not code them again. An entry is keyed by the tensor's content (a
// 64-bit hash of its stored bytes, its element size and count) and the coded
// format's version, and carries a checksum of its coded bytes. An entry whose
// header does not match (another format version, another tensor) or whose
// checksum fails is stale or corrupt: it is removed and coded again, never
// used. A directory that cannot be written is reported once; coding goes on in
// memory.
#ifndef PINSTREAM_CORE_EXACT_CACHE_H_
#define PINSTREAM_CORE_EXACT_CACHE_H_

#include <cstdint>
#include <mutex>
#include <string>

#include "core/exact_codec.h"
#include "core/status.h"

namespace pinstream {

// A 64-bit hash of `bytes` bytes at `data`, the same on any thread count.
uint64_t ContentHash(const void* data, uint64_t bytes, int threads);

class ExactCache {
 public:
  // An empty directory turns the cache off.
  explicit ExactCache(std::string dir);

  bool enabled() const { return !dir_.empty(); }
  const std::string& dir() const { return dir_; }

  // The key of a tensor: its content hash, element size, count and the format version.
  static uint64_t KeyOf(uint64_t content_hash, int elem_bytes, int64_t count);

  // Whether an entry for `key` (a tensor of `elem_bytes` x `count`) is there
  // with a matching header and all its bytes; then `layout` is its coded
  // layout. A stale or short entry is removed (counted in rebuilt()); the
  // checksum of the coded bytes is checked by Read, which reads them once.
  bool Find(uint64_t key, int elem_bytes, int64_t count, ExactLayout* layout);
  // Reads the entry Find accepted into `out` (layout.bytes); false (and the
  // entry removed, counted in rebuilt()) if its checksum fails: the caller
  // codes the tensor itself.
  bool Read(uint64_t key, const ExactLayout& layout, uint8_t* out);
  // Writes an entry; a failure is remembered (first_error()) and not retried
  // for this cache.
  void Store(uint64_t key, const ExactLayout& layout, const uint8_t* coded);

  uint64_t hits() const { return hits_; }
  uint64_t misses() const { return misses_; }
  uint64_t stored() const { return stored_; }
  uint64_t rebuilt() const { return rebuilt_; }
  std::string first_error() const;

 private:
  std::string PathOf(uint64_t key) const;
  void Fail(const std::string& what);

  std::string dir_;
  mutable std::mutex mu_;
  bool write_failed_ = false;
  std::string first_error_;
  uint64_t hits_ = 0, misses_ = 0, stored_ = 0, rebuilt_ = 0;
};

}  // namespace pinstream

#endif  // PINSTREAM_CORE_EXACT_CACHE_H_
