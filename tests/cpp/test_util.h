// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// Shared helpers for the runtime tests: a model made of blocks filled with
// block-specific byte patterns, and a driver that runs passes through a
// StreamingRuntime and checks that every acquire sees exactly its block.
#ifndef PINSTREAM_TESTS_CPP_TEST_UTIL_H_
#define PINSTREAM_TESTS_CPP_TEST_UTIL_H_

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/streaming_runtime.h"

namespace pinstream {
namespace testing_util {

// Seed for randomized tests: PINSTREAM_SEED when set, else `fallback`.
inline uint64_t TestSeed(uint64_t fallback) {
  const char* env = std::getenv("PINSTREAM_SEED");
  return env != nullptr ? std::strtoull(env, nullptr, 10) : fallback;
}

struct FakeModel {
  std::vector<std::vector<uint8_t>> host;  // one buffer per block

  // Fills block i with bytes derived from (seed, i, position).
  static FakeModel Make(const std::vector<uint64_t>& sizes, uint64_t seed) {
    FakeModel m;
    for (size_t i = 0; i < sizes.size(); ++i) {
      std::vector<uint8_t> buf(sizes[i]);
      std::mt19937_64 rng(seed * 1000003ULL + i);
      for (auto& b : buf) b = static_cast<uint8_t>(rng());
      m.host.push_back(std::move(buf));
    }
    return m;
  }
};

// Whether the block at `loc` (a split block: its head, then the rest in its
// slot) holds exactly `want`.
inline bool SameBytes(const DeviceLocation& loc, const std::vector<uint8_t>& want) {
  if (want.empty()) return true;
  const size_t head = static_cast<size_t>(loc.head_bytes);
  if (head > want.size()) return false;
  if (head > 0 && std::memcmp(loc.head_ptr, want.data(), head) != 0) return false;
  return std::memcmp(loc.ptr, want.data() + head, want.size() - head) == 0;
}

// Runs `order` as one pass; returns an empty string or the first error.
// `compute` (optional) runs between acquire and release.
template <typename ComputeFn>
std::string RunPass(StreamingRuntime* rt, const FakeModel& model, const std::vector<int>& order, ComputeFn compute) {
  Status s = rt->BeginPass();
  if (!s.ok()) return s.ToString();
  for (int b : order) {
    DeviceLocation loc;
    s = rt->Acquire(b, nullptr, &loc);
    if (!s.ok()) return "acquire " + std::to_string(b) + ": " + s.ToString();
    if (!SameBytes(loc, model.host[b])) {
      return "block " + std::to_string(b) + " has wrong bytes at acquire";
    }
    compute(b);
    if (!SameBytes(loc, model.host[b])) {
      return "block " + std::to_string(b) + " was overwritten while in use";
    }
    s = rt->Release(b, nullptr);
    if (!s.ok()) return "release " + std::to_string(b) + ": " + s.ToString();
  }
  s = rt->EndPass(nullptr);
  if (!s.ok()) return s.ToString();
  return "";
}

inline std::string RunPass(StreamingRuntime* rt, const FakeModel& model, const std::vector<int>& order) {
  return RunPass(rt, model, order, [](int) {});
}

inline Status RegisterAll(StreamingRuntime* rt, const FakeModel& model) {
  for (const auto& buf : model.host) {
    int id = -1;
    PINSTREAM_RETURN_IF_ERROR(rt->RegisterBlock(buf.data(), buf.size(), true, &id));
  }
  return Status::Ok();
}

// A temporary file of blocks' bytes for disk-tier tests: each block is laid
// down as `pieces` extents in order, with `gap` bytes of filler before each.
// Write() puts it on disk; the destructor removes it.
class DiskFile {
 public:
  explicit DiskFile(const std::string& dir = "/tmp") {
    std::string name = dir + "/pinstream-disk-XXXXXX";
    const int fd = mkstemp(name.data());
    if (fd >= 0) close(fd);
    path_ = name;
  }
  ~DiskFile() { std::remove(path_.c_str()); }
  DiskFile(const DiskFile&) = delete;
  DiskFile& operator=(const DiskFile&) = delete;

  // The extents of `bytes` (file ids set by Extents()); returns their index.
  int Add(const std::vector<uint8_t>& bytes, int pieces, uint64_t gap) {
    std::vector<DiskExtent> ext;
    const uint64_t n = bytes.size();
    pieces = std::max(1, pieces);
    for (int k = 0; k < pieces; ++k) {
      const uint64_t lo = n * k / pieces, hi = n * (k + 1) / pieces;
      data_.resize(data_.size() + gap, 0xEE);
      ext.push_back(DiskExtent{-1, data_.size(), hi - lo, lo});
      data_.insert(data_.end(), bytes.begin() + static_cast<std::ptrdiff_t>(lo),
                   bytes.begin() + static_cast<std::ptrdiff_t>(hi));
    }
    blocks_.push_back(ext);
    return static_cast<int>(blocks_.size()) - 1;
  }
  bool Write() const {
    FILE* f = std::fopen(path_.c_str(), "wb");
    if (f == nullptr) return false;
    const bool ok = data_.empty() || std::fwrite(data_.data(), 1, data_.size(), f) == data_.size();
    return std::fclose(f) == 0 && ok;
  }
  std::vector<DiskExtent> Extents(int index, int file) const {
    std::vector<DiskExtent> e = blocks_[index];
    for (DiskExtent& x : e) x.file = file;
    return e;
  }
  const std::string& path() const { return path_; }
  uint64_t size() const { return data_.size(); }

 private:
  std::string path_;
  std::vector<uint8_t> data_;
  std::vector<std::vector<DiskExtent>> blocks_;
};

}  // namespace testing_util
}  // namespace pinstream

#endif  // PINSTREAM_TESTS_CPP_TEST_UTIL_H_
