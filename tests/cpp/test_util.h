// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// Shared helpers for the runtime tests: a model made of blocks filled with
// block-specific byte patterns, and a driver that runs passes through a
// StreamingRuntime and checks that every acquire sees exactly its block.
#ifndef PINSTREAM_TESTS_CPP_TEST_UTIL_H_
#define PINSTREAM_TESTS_CPP_TEST_UTIL_H_

#include <cstdint>
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

}  // namespace testing_util
}  // namespace pinstream

#endif  // PINSTREAM_TESTS_CPP_TEST_UTIL_H_
