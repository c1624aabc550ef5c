// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/disk_reader.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
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

// Whether this process should get an io_uring: PinStream built with liburing and the
// kernel not refusing it (/proc/sys/kernel/io_uring_disabled 0, or absent on old kernels).
bool IoUringExpected() {
#ifdef PINSTREAM_WITH_IO_URING
  std::ifstream in("/proc/sys/kernel/io_uring_disabled");
  int disabled = 0;
  if (in >> disabled) return disabled == 0;
  return true;
#else
  return false;
#endif
}

DiskReader::Options UringOptions(int queue_depth = 32) {
  DiskReader::Options o;
  o.io_uring = true;
  o.queue_depth = queue_depth;
  return o;
}

void BadRequestsAndAFileThatShrank(const DiskReader::Options& o) {
  TempFile f("/tmp", 100000, 5);
  DiskReader reader(o);
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

TEST(DiskReader, BadRequestsAndAFileThatShrankAreClearErrors) { BadRequestsAndAFileThatShrank(DiskReader::Options()); }

// ---- io_uring ----------------------------------------------------------------

TEST(DiskReader, IoUringIsUsedWhereItWorksElseHowSaysWhy) {
  TempFile f("/tmp", (1ULL << 20) + 3, 21);
  DiskReader reader(UringOptions());
  int file = -1;
  ASSERT_TRUE(reader.Open(f.path, &file).ok());
  const std::string how = reader.how(file);
  std::printf("disk reader on /tmp, io_uring asked: %s\n", how.c_str());
  if (IoUringExpected()) EXPECT_TRUE(reader.io_uring()) << reader.io_uring_why();
  if (reader.io_uring()) {
    EXPECT_EQ(how, "io_uring, O_DIRECT (alignment 4096, queue depth 32)");
  } else if (reader.direct(file)) {
    EXPECT_NE(how.find("io_uring not used: " + reader.io_uring_why()), std::string::npos) << how;
    EXPECT_FALSE(reader.io_uring_why().empty());
  }
  // not asked for: no ring, and how() does not speak of it
  DiskReader pool;
  ASSERT_TRUE(pool.Open(f.path, &file).ok());
  EXPECT_FALSE(pool.io_uring());
  EXPECT_EQ(pool.how(file).find("io_uring"), std::string::npos) << pool.how(file);
}

TEST(DiskReader, IoUringRandomRangesEqualTheFile) {
  const uint64_t seed = testing_util::TestSeed(123);
  TempFile f("/tmp", (3ULL << 20) + 777, seed);
  // a deep queue, and one of 2 (chunks wait for room; reads of one chunk are asked in turn)
  for (int depth : {32, 2}) {
    DiskReader::Options o = UringOptions(depth);
    o.chunk_bytes = 64 * 1024;
    DiskReader reader(o);
    int file = -1;
    ASSERT_TRUE(reader.Open(f.path, &file).ok());
    if (!reader.io_uring()) GTEST_SKIP() << "no io_uring here: " << reader.io_uring_why();
    ReadRandomRanges(&reader, file, f.bytes, seed + depth);
  }
  // a buffered file with io_uring asked goes to the thread pool and reads the same
  DiskReader::Options o = UringOptions();
  o.direct = false;
  DiskReader buffered(o);
  int file = -1;
  ASSERT_TRUE(buffered.Open(f.path, &file).ok());
  EXPECT_FALSE(buffered.direct(file));
  ReadRandomRanges(&buffered, file, f.bytes, seed + 1);
}

TEST(DiskReader, IoUringLargeRangesAndManyRequestsInFlight) {
  // Chunks of 8 MiB cut into 1 MiB reads: aligned ranges straight into the buffer,
  // unaligned ones (file offset, length or address) through bounce buffers, several
  // requests (one of them of several ranges) in flight at once.
  const uint64_t seed = testing_util::TestSeed(77);
  const uint64_t n = (12ULL << 20) + 1234;
  TempFile f("/tmp", n, seed);
  for (int depth : {32, 3}) {
    DiskReader reader(UringOptions(depth));
    int file = -1;
    ASSERT_TRUE(reader.Open(f.path, &file).ok());
    if (!reader.io_uring()) GTEST_SKIP() << "no io_uring here: " << reader.io_uring_why();
    std::vector<uint8_t> out(n + 4 * 4096, 0xEE);
    uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(out.data()) + 4095) / 4096 * 4096);
    struct Piece {
      uint64_t offset, bytes;
      uint8_t* dst;
    };
    // aligned; unaligned offset; unaligned address; the file's unaligned tail
    const std::vector<Piece> pieces = {{0, 9ULL << 20, base},
                                       {(9ULL << 20) + 17, (1ULL << 20) + 5000, base + (9ULL << 20) + 17},
                                       {(10ULL << 20) + 8192, 3 * 4096, base + (10ULL << 20) + 8192 + 1},
                                       {(11ULL << 20), n - (11ULL << 20), base + (11ULL << 20) + 4096 + 2}};
    std::vector<uint64_t> tickets;
    for (const Piece& p : pieces) {
      uint64_t t = 0;
      ASSERT_TRUE(reader.Submit(file, p.offset, p.bytes, p.dst, &t).ok());
      tickets.push_back(t);
    }
    std::vector<DiskReader::Range> many;
    std::vector<uint8_t> many_out(3 * 300000, 0);
    for (int i = 0; i < 3; ++i) many.push_back({file, 1000003ULL * (i + 1), 300000, many_out.data() + i * 300000});
    uint64_t many_ticket = 0;
    ASSERT_TRUE(reader.SubmitMany(many, &many_ticket).ok());
    for (uint64_t t : tickets) ASSERT_TRUE(reader.Wait(t).ok());
    ASSERT_TRUE(reader.Wait(many_ticket).ok());
    for (const Piece& p : pieces) {
      ASSERT_EQ(std::memcmp(p.dst, f.bytes.data() + p.offset, p.bytes), 0) << "offset " << p.offset;
    }
    EXPECT_EQ(base[(10ULL << 20) + 8192], 0xEE);  // the byte before the unaligned address
    for (int i = 0; i < 3; ++i) {
      ASSERT_EQ(std::memcmp(many_out.data() + i * 300000, f.bytes.data() + 1000003ULL * (i + 1), 300000), 0);
    }
    const DiskReader::Totals t = reader.totals();
    EXPECT_EQ(t.requests, 5u);
    EXPECT_EQ(t.bytes, (9ULL << 20) + (1ULL << 20) + 5000 + 3 * 4096 + (n - (11ULL << 20)) + 3 * 300000);
  }
}

TEST(DiskReader, IoUringAFileThatShrankIsTheSameClearError) {
  DiskReader probe(UringOptions());
  if (!probe.io_uring()) GTEST_SKIP() << "no io_uring here: " << probe.io_uring_why();
  BadRequestsAndAFileThatShrank(UringOptions());
  // an aligned read past the new end, through the bounce-free path
  TempFile f("/tmp", 1ULL << 20, 6);
  DiskReader reader(UringOptions());
  int file = -1;
  ASSERT_TRUE(reader.Open(f.path, &file).ok());
  ASSERT_EQ(truncate(f.path.c_str(), 256 * 1024), 0);
  std::vector<uint8_t> out((1ULL << 20) + 4096);
  uint8_t* dst = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(out.data()) + 4095) / 4096 * 4096);
  uint64_t t = 0;
  ASSERT_TRUE(reader.Submit(file, 0, 1ULL << 20, dst, &t).ok());
  const Status s = reader.Wait(t);
  EXPECT_EQ(s.code(), Status::Code::kFailedPrecondition);
  EXPECT_NE(s.message().find("ended at byte 262144"), std::string::npos) << s.ToString();
  EXPECT_NE(s.message().find("(the file shrank or changed since it was opened)"), std::string::npos) << s.ToString();
}

TEST(DiskReader, InjectedFailuresFailTheRequestAndNamesTheCall) {
  TempFile f("/tmp", 3ULL << 20, 8);
  for (bool uring : {false, true}) {
    DiskReader::Options o = UringOptions();
    o.io_uring = uring;
    o.chunk_bytes = 1ULL << 20;
    DiskReader reader(o);
    int file = -1;
    ASSERT_TRUE(reader.Open(f.path, &file).ok());
    if (uring && !reader.io_uring()) GTEST_SKIP() << "no io_uring here: " << reader.io_uring_why();
    std::vector<uint8_t> out(3ULL << 20);
    reader.FailNextReads(2);  // two of the three chunks of the next request
    uint64_t t = 0;
    ASSERT_TRUE(reader.Submit(file, 0, out.size(), out.data(), &t).ok());
    const Status s = reader.Wait(t);
    EXPECT_EQ(s.code(), Status::Code::kDeviceError);
    const std::string call =
        uring ? "io_uring read (O_DIRECT): Input/output error (injected)" : "pread: Input/output error (injected)";
    EXPECT_NE(s.message().find(call), std::string::npos) << s.ToString();
    EXPECT_NE(s.message().find(f.path), std::string::npos) << s.ToString();
    // the next request reads as usual
    ASSERT_TRUE(reader.Submit(file, 0, out.size(), out.data(), &t).ok());
    ASSERT_TRUE(reader.Wait(t).ok());
    EXPECT_EQ(std::memcmp(out.data(), f.bytes.data(), out.size()), 0);
    EXPECT_EQ(reader.totals().requests, 2u);
    EXPECT_EQ(reader.totals().bytes, out.size());  // the failed request's bytes are not counted
  }
}

// Drops the file's clean pages from the page cache, so a buffered read comes from the disk.
void DropPageCache(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  fdatasync(fd);
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
}

TEST(DiskReader, Throughput) {
  // Figures only (not asserted): 64 MiB read 3 times each way, each pass from the disk
  // (the pages of the file are dropped first, so buffered reads do not come from RAM).
  TempFile f("/tmp", 64ULL << 20, 11);
  std::vector<uint8_t> out((64ULL << 20) + 4096);
  uint8_t* dst = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(out.data()) + 4095) / 4096 * 4096);
  struct Way {
    const char* name;
    bool direct, uring;
  };
  for (const Way& w : {Way{"thread pool, O_DIRECT", true, false}, Way{"io_uring, O_DIRECT", true, true},
                       Way{"thread pool, buffered", false, false}}) {
    DiskReader::Options o;
    o.direct = w.direct;
    o.io_uring = w.uring;
    DiskReader reader(o);
    int file = -1;
    ASSERT_TRUE(reader.Open(f.path, &file).ok());
    if (w.uring && !reader.io_uring()) {
      std::printf("disk reader, %s: not measured (%s)\n", w.name, reader.io_uring_why().c_str());
      continue;
    }
    double s = 0;
    for (int i = 0; i < 3; ++i) {
      DropPageCache(f.path);
      const auto t0 = std::chrono::steady_clock::now();
      uint64_t t = 0;
      ASSERT_TRUE(reader.Submit(file, 0, f.bytes.size(), dst, &t).ok());
      ASSERT_TRUE(reader.Wait(t).ok());
      s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    ASSERT_EQ(std::memcmp(dst, f.bytes.data(), f.bytes.size()), 0);
    std::printf("disk reader, %s: %.2f GB/s (%s; 4 threads or one io_uring thread, 8 MiB chunks)\n", w.name,
                3.0 * static_cast<double>(f.bytes.size()) / s / 1e9, reader.how(file).c_str());
  }
}

}  // namespace
}  // namespace pinstream

namespace pinstream {
namespace {

// A block of any size at an aligned offset into aligned memory (what the read ring
// reads from a spill file): its whole pages go straight in, its last partial page
// through a bounce buffer; every byte equals the file, and nothing past it is written.
// The bounce buffers stay a page or two per thread (or io_uring read), not a chunk
// (1 MiB here) each: their pages stay in RSS as long as the reader.
TEST(DiskReader, AnAlignedRangeEndingInsideAPageReadsExactly) {
  TempFile f("/tmp", (4ULL << 20) + 4096, 21);
  for (bool ring : {false, true}) {
    DiskReader::Options o;
    o.io_uring = ring;
    o.chunk_bytes = 1 << 20;
    DiskReader reader(o);
    int file = -1;
    ASSERT_TRUE(reader.Open(f.path, &file).ok());
    for (uint64_t bytes : std::vector<uint64_t>{1, 4095, 4097, (3ULL << 20) + 123, (4ULL << 20) - 1}) {
      void* mem = nullptr;
      ASSERT_EQ(posix_memalign(&mem, 4096, (bytes + 4095) / 4096 * 4096 + 4096), 0);
      auto* dst = static_cast<uint8_t*>(mem);
      std::memset(dst, 0xCD, (bytes + 4095) / 4096 * 4096 + 4096);
      uint64_t ticket = 0;
      ASSERT_TRUE(reader.Submit(file, 4096, bytes, dst, &ticket).ok());
      ASSERT_TRUE(reader.Wait(ticket).ok());
      EXPECT_EQ(std::memcmp(dst, f.bytes.data() + 4096, bytes), 0) << bytes << " bytes, io_uring " << ring;
      EXPECT_EQ(dst[bytes], 0xCD) << "written past the range: " << bytes << " bytes, io_uring " << ring;
      free(mem);
    }
    const uint64_t readers = ring && reader.io_uring() ? 32 : static_cast<uint64_t>(o.threads);
    if (reader.direct(file)) EXPECT_LE(reader.totals().bounce_bytes, readers * 2 * 4096) << "io_uring " << ring;
  }
}

TEST(DiskReader, TheReadsInFlightWhileBusyAreCounted) {
  // 4 reads of 20 ms each (injected latency) on 4 threads, submitted together:
  // about 4 in flight over the busy time; then one at a time: about 1.
  TempFile f("/tmp", 1 << 20, 23);
  DiskReader reader;
  int file = -1;
  ASSERT_TRUE(reader.Open(f.path, &file).ok());
  reader.DelayReads(20000);
  std::vector<uint8_t> out(4 * 4096);
  std::vector<uint64_t> tickets(4);
  for (int k = 0; k < 4; ++k) ASSERT_TRUE(reader.Submit(file, k * 4096, 4096, out.data() + k * 4096, &tickets[k]).ok());
  for (uint64_t t : tickets) ASSERT_TRUE(reader.Wait(t).ok());
  const DiskReader::Totals together = reader.totals();
  EXPECT_GT(together.request_ms / together.busy_ms, 2.8);
  for (int k = 0; k < 4; ++k) {
    ASSERT_TRUE(reader.Submit(file, k * 4096, 4096, out.data(), &tickets[0]).ok());
    ASSERT_TRUE(reader.Wait(tickets[0]).ok());
  }
  const DiskReader::Totals t = reader.totals();
  const double alone = (t.request_ms - together.request_ms) / (t.busy_ms - together.busy_ms);
  EXPECT_GT(alone, 0.9);
  EXPECT_LT(alone, 1.1);
}

}  // namespace
}  // namespace pinstream
