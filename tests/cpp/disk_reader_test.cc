// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/disk_reader.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "test_util.h"

namespace pinstream {
namespace {

// A file of `bytes` random bytes in `dir`, removed with the object.
struct TempFile {
  std::string path;
  std::vector<uint8_t> bytes;
  TempFile(const std::string& dir, uint64_t n, uint64_t seed) {
    char name[256];
    std::snprintf(name, sizeof(name), "%s/pinstream-disk-reader-XXXXXX", dir.c_str());
    const int fd = mkstemp(name);
    EXPECT_GE(fd, 0) << dir;
    path = name;
    bytes.resize(n);
    std::mt19937_64 r(seed);
    for (uint64_t i = 0; i < n; ++i) bytes[i] = static_cast<uint8_t>(r());
    uint64_t done = 0;
    while (done < n) {
      const ssize_t w = write(fd, bytes.data() + done, n - done);
      if (w <= 0) break;
      done += static_cast<uint64_t>(w);
    }
    EXPECT_EQ(done, n);
    close(fd);
  }
  ~TempFile() { unlink(path.c_str()); }
};

void ReadRandomRanges(DiskReader* reader, int file, const std::vector<uint8_t>& want, uint64_t seed) {
  std::mt19937_64 r(seed);
  const uint64_t n = want.size();
  for (int round = 0; round < 20; ++round) {
    // several requests in flight at once, unaligned and aligned, some empty
    std::vector<std::vector<uint8_t>> out(16);
    std::vector<uint64_t> offsets(16), lengths(16), tickets(16);
    for (size_t i = 0; i < out.size(); ++i) {
      const bool aligned = r() % 3 == 0;
      uint64_t off = r() % n, len = r() % std::min<uint64_t>(n - off + 1, 300 * 1024);
      if (aligned) off = off / 4096 * 4096, len = std::min(len / 4096 * 4096, (n - off) / 4096 * 4096);
      offsets[i] = off, lengths[i] = len;
      out[i].assign(len + 8192, 0xEE);
      uint8_t* dst = out[i].data();
      if (aligned) dst = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(dst) + 4095) / 4096 * 4096);
      ASSERT_TRUE(reader->Submit(file, off, len, dst, &tickets[i]).ok());
      lengths[i] = len | (static_cast<uint64_t>(dst - out[i].data()) << 40);
    }
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_TRUE(reader->Wait(tickets[i]).ok());
      const uint64_t len = lengths[i] & ((1ULL << 40) - 1), shift = lengths[i] >> 40;
      ASSERT_EQ(std::memcmp(out[i].data() + shift, want.data() + offsets[i], len), 0)
          << "round " << round << " request " << i << " offset " << offsets[i] << " length " << len;
      if (shift + len < out[i].size()) ASSERT_EQ(out[i][shift + len], 0xEE) << "wrote past the end";
    }
  }
}

TEST(DiskReader, RandomRangesEqualTheFileDirectAndBuffered) {
  const uint64_t seed = testing_util::TestSeed(99);
  TempFile f("/tmp", (3ULL << 20) + 777, seed);
  for (bool direct : {true, false}) {
    DiskReader::Options o;
    o.threads = 3;
    o.direct = direct;
    o.chunk_bytes = 64 * 1024;
    DiskReader reader(o);
    int file = -1;
    ASSERT_TRUE(reader.Open(f.path, &file).ok());
    EXPECT_EQ(reader.size(file), f.bytes.size());
    if (!direct) EXPECT_FALSE(reader.direct(file));
    std::printf("disk reader on /tmp, direct asked %d: %s\n", direct, reader.how(file).c_str());
    ReadRandomRanges(&reader, file, f.bytes, seed + direct);
  }
}

TEST(DiskReader, WhereODirectIsRefusedReadsAreBufferedAndSayWhy) {
  // tmpfs refuses O_DIRECT on many kernels; where it takes it, the reads are direct
  TempFile f("/dev/shm", (1ULL << 20) + 5, testing_util::TestSeed(7));
  DiskReader reader;
  int file = -1;
  ASSERT_TRUE(reader.Open(f.path, &file).ok());
  const std::string how = reader.how(file);
  std::printf("disk reader on /dev/shm: %s\n", how.c_str());
  if (!reader.direct(file)) EXPECT_NE(how.find("O_DIRECT refused by the file system"), std::string::npos) << how;
  ReadRandomRanges(&reader, file, f.bytes, 3);
}

TEST(DiskReader, BadRequestsAndAFileThatShrankAreClearErrors) {
  TempFile f("/tmp", 100000, 5);
  DiskReader reader;
  int file = -1;
  std::vector<uint8_t> out(200000);
  uint64_t t = 0;
  EXPECT_EQ(reader.Open("/nonexistent/pinstream.safetensors", &file).code(), Status::Code::kInvalidArgument);
  ASSERT_TRUE(reader.Open(f.path, &file).ok());
  Status s = reader.Submit(file, 99000, 2000, out.data(), &t);
  EXPECT_EQ(s.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(s.message().find("past the end"), std::string::npos) << s.ToString();
  EXPECT_EQ(reader.Submit(7, 0, 10, out.data(), &t).code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(reader.Wait(12345).code(), Status::Code::kInvalidArgument);
  ASSERT_EQ(truncate(f.path.c_str(), 50000), 0);  // the file changes under the reader
  ASSERT_TRUE(reader.Submit(file, 40000, 30000, out.data(), &t).ok());
  s = reader.Wait(t);
  EXPECT_EQ(s.code(), Status::Code::kFailedPrecondition);
  EXPECT_NE(s.message().find("shrank"), std::string::npos) << s.ToString();
  ASSERT_TRUE(reader.Submit(file, 0, 40000, out.data(), &t).ok());  // what is still there reads fine
  EXPECT_TRUE(reader.Wait(t).ok());
  EXPECT_EQ(std::memcmp(out.data(), f.bytes.data(), 40000), 0);
}

TEST(DiskReader, Throughput) {
  // Figures only (the page cache holds the file just written, so buffered reads are
  // memory copies; O_DIRECT reads the device): 32 MiB read 3 times each way.
  TempFile f("/tmp", 32ULL << 20, 11);
  std::vector<uint8_t> out((32ULL << 20) + 4096);
  uint8_t* dst = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(out.data()) + 4095) / 4096 * 4096);
  for (bool direct : {true, false}) {
    DiskReader::Options o;
    o.direct = direct;
    DiskReader reader(o);
    int file = -1;
    ASSERT_TRUE(reader.Open(f.path, &file).ok());
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < 3; ++i) {
      uint64_t t = 0;
      ASSERT_TRUE(reader.Submit(file, 0, f.bytes.size(), dst, &t).ok());
      ASSERT_TRUE(reader.Wait(t).ok());
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_EQ(std::memcmp(dst, f.bytes.data(), f.bytes.size()), 0);
    std::printf("disk reader, %s: %.2f GB/s (4 threads, 8 MiB chunks)\n", reader.how(file).c_str(),
                3.0 * static_cast<double>(f.bytes.size()) / s / 1e9);
  }
}

}  // namespace
}  // namespace pinstream
