// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/exact_cache.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "core/parallel.h"

namespace pinstream {
namespace {

constexpr uint64_t kHashPart = uint64_t{1} << 20;  // bytes per hashing work item
constexpr char kMagic[8] = {'P', 'S', 'X', 'C', 'A', 'C', 'H', 'E'};

inline uint64_t Mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

uint64_t HashPart(const uint8_t* p, uint64_t n, uint64_t seed) {
  uint64_t h = seed ^ (n * 0x9E3779B97F4A7C15ULL);
  uint64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ Mix(w)) * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
  }
  uint64_t tail = 0;
  std::memcpy(&tail, p + i, n - i);
  return Mix(h ^ Mix(tail ^ (n - i)));
}

struct Header {
  char magic[8];
  uint32_t version;
  uint64_t key;
  ExactLayout layout;
  uint64_t checksum;  // ContentHash of the coded bytes
};

// mkdir -p
bool MakeDirs(const std::string& dir) {
  for (size_t i = 1; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      const std::string part = dir.substr(0, i);
      if (mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) return false;
    }
  }
  return true;
}

}  // namespace

uint64_t ContentHash(const void* data, uint64_t bytes, int threads) {
  const auto* p = static_cast<const uint8_t*>(data);
  const int64_t parts = static_cast<int64_t>((bytes + kHashPart - 1) / kHashPart);
  std::vector<uint64_t> h(static_cast<size_t>(parts));
  ParallelFor(parts, threads, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const uint64_t off = static_cast<uint64_t>(k) * kHashPart;
      h[k] = HashPart(p + off, std::min(kHashPart, bytes - off), static_cast<uint64_t>(k));
    }
  });
  uint64_t all = Mix(bytes);
  for (uint64_t x : h) all = Mix(all ^ x) + 0x9E3779B97F4A7C15ULL;
  return all;
}

ExactCache::ExactCache(std::string dir) : dir_(std::move(dir)) {}

uint64_t ExactCache::KeyOf(uint64_t content_hash, int elem_bytes, int64_t count) {
  return Mix(content_hash ^ Mix((static_cast<uint64_t>(kExactFormatVersion) << 40) ^
                                (static_cast<uint64_t>(elem_bytes) << 32) ^ static_cast<uint64_t>(count)));
}

std::string ExactCache::PathOf(uint64_t key) const {
  char name[40];
  std::snprintf(name, sizeof(name), "/%016llx.psx", static_cast<unsigned long long>(key));
  return dir_ + name;
}

std::string ExactCache::first_error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return first_error_;
}

void ExactCache::Fail(const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  if (first_error_.empty()) first_error_ = what;
  write_failed_ = true;
}

bool ExactCache::Find(uint64_t key, int elem_bytes, int64_t count, ExactLayout* layout) {
  if (!enabled()) return false;
  const std::string path = PathOf(key);
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    std::lock_guard<std::mutex> lock(mu_);
    ++misses_;
    return false;
  }
  // The header here; the coded bytes' checksum when Read takes them (once).
  Header h;
  bool ok = std::fread(&h, sizeof(h), 1, f) == 1 && std::memcmp(h.magic, kMagic, 8) == 0 &&
            h.version == kExactFormatVersion && h.key == key && h.layout.elem_bytes == elem_bytes &&
            h.layout.count == count && CheckExactLayout(h.layout, h.layout.bytes).ok();
  if (ok) {  // the coded bytes are all there
    ok = std::fseek(f, 0, SEEK_END) == 0 && std::ftell(f) == static_cast<long>(sizeof(h) + h.layout.bytes);
  }
  std::fclose(f);
  std::lock_guard<std::mutex> lock(mu_);
  if (!ok) {
    std::remove(path.c_str());
    ++rebuilt_;
    ++misses_;
    return false;
  }
  *layout = h.layout;
  return true;
}

bool ExactCache::Read(uint64_t key, const ExactLayout& layout, uint8_t* out) {
  const std::string path = PathOf(key);
  FILE* f = std::fopen(path.c_str(), "rb");
  bool ok = f != nullptr;
  Header h;
  if (ok) ok = std::fread(&h, sizeof(h), 1, f) == 1 && h.key == key && h.layout.bytes == layout.bytes;
  if (ok) ok = std::fread(out, 1, layout.bytes, f) == layout.bytes && ContentHash(out, layout.bytes, 1) == h.checksum;
  if (f != nullptr) std::fclose(f);
  std::lock_guard<std::mutex> lock(mu_);
  if (!ok) {
    std::remove(path.c_str());
    ++rebuilt_;
    return false;
  }
  ++hits_;
  return true;
}

void ExactCache::Store(uint64_t key, const ExactLayout& l, const uint8_t* coded) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!enabled() || write_failed_) return;
  }
  if (!MakeDirs(dir_)) {
    Fail("cannot create " + dir_ + ": " + std::strerror(errno));
    return;
  }
  Header h;
  std::memset(&h, 0, sizeof(h));  // the padding too: an entry's bytes are defined
  std::memcpy(h.magic, kMagic, 8);
  h.version = kExactFormatVersion;
  h.key = key;
  h.layout = l;
  h.checksum = ContentHash(coded, l.bytes, 1);
  // written under a temporary name, then renamed: a reader never sees half an entry
  const std::string path = PathOf(key);
  const std::string tmp = path + ".tmp" + std::to_string(static_cast<long long>(getpid()));
  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) {
    Fail("cannot write " + tmp + ": " + std::strerror(errno));
    return;
  }
  const bool ok = std::fwrite(&h, sizeof(h), 1, f) == 1 && std::fwrite(coded, 1, l.bytes, f) == l.bytes;
  const int close_rc = std::fclose(f);
  if (!ok || close_rc != 0 || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    Fail("cannot write " + path + ": " + std::strerror(errno));
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  ++stored_;
}

}  // namespace pinstream
