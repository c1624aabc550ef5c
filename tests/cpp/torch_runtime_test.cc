// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// The torch layer against LibTorch alone: registration (layout -> plan ->
// pack, all or nothing), re-pointing, write-back, pinning by the plan, and the
// process-wide accounting. The host engine stands in for the device.
#include "torch/torch_runtime.h"

#include <c10/core/InferenceMode.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <stdexcept>
#include <string>

#include "torch/errors.h"
#include "torch/live_bytes.h"
#include "torch/placeholder.h"

namespace pinstream {
namespace {

RuntimeOptions HostOptions() {
  RuntimeOptions o;
  o.device = "cpu";
  o.engine = "host";
  return o;
}

// `n` blocks of two float tensors each (a [rows, 64] weight and a [64] bias).
std::vector<std::vector<at::Tensor>> MakeBlocks(int n, int rows = 64, uint64_t seed = 1) {
  torch::manual_seed(seed);
  std::vector<std::vector<at::Tensor>> blocks;
  for (int i = 0; i < n; ++i) blocks.push_back({torch::randn({rows, 64}), torch::randn({64})});
  return blocks;
}

std::vector<std::vector<at::Tensor>> Clones(const std::vector<std::vector<at::Tensor>>& blocks) {
  std::vector<std::vector<at::Tensor>> out;
  for (const auto& b : blocks) {
    out.emplace_back();
    for (const at::Tensor& t : b) out.back().push_back(t.clone());
  }
  return out;
}

void ExpectEqual(const std::vector<std::vector<at::Tensor>>& a, const std::vector<std::vector<at::Tensor>>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    for (size_t k = 0; k < a[i].size(); ++k) EXPECT_TRUE(torch::equal(a[i][k], b[i][k])) << i << "." << k;
  }
}

// Resident bytes of this process (VmRSS).
uint64_t RssBytes() {
  std::ifstream f("/proc/self/status");
  std::string key;
  uint64_t kb = 0;
  while (f >> key) {
    if (key == "VmRSS:") {
      f >> kb;
      return kb * 1024;
    }
    f.ignore(1 << 16, '\n');
  }
  return 0;
}

TEST(CodedPlaceholder, ALargeWeightsPlaceholderIsNaNAndCostsNoMemoryOfItsSize) {
  // a weight of 96 MiB (larger than any placeholder made before it in this process)
  const uint64_t before = RssBytes();
  at::Tensor w = CodedPlaceholder(at::kBFloat16, {6144, 8192}, {8192, 1}, /*inference=*/false);
  const uint64_t after = RssBytes();
  EXPECT_LT(after, before + (8ULL << 20))
      << "the placeholder of a 96 MiB weight took " << (after - before) / (1 << 20) << " MiB of RSS";
  EXPECT_EQ(w.sizes(), at::IntArrayRef({6144, 8192}));
  EXPECT_TRUE(torch::isnan(w.index({torch::indexing::Slice(0, 64)}).to(at::kFloat)).all().item<bool>());
  EXPECT_TRUE(torch::isnan(w.index({torch::indexing::Slice(6000, 6144)}).to(at::kFloat)).all().item<bool>());
  // a smaller weight made after it shares the region
  at::Tensor v = CodedPlaceholder(at::kFloat, {1024}, {1}, false);
  EXPECT_TRUE(torch::isnan(v).all().item<bool>());
}

TEST(TorchRuntime, PacksWeightsInOneHostCopyAndRepointsThem) {
  auto blocks = MakeBlocks(3);
  auto want = Clones(blocks);
  TorchRuntime rt(HostOptions());
  RegisterRequest req;
  req.blocks = blocks;
  req.plan = true;
  req.policy = "stream_all";
  std::vector<int> ids = rt.RegisterBlocks(req);
  ASSERT_EQ(ids, (std::vector<int>{0, 1, 2}));
  ExpectEqual(blocks, want);
  // all three blocks share one host chunk, each tensor at an aligned offset
  const auto* base = static_cast<const uint8_t*>(blocks[0][0].data_ptr());
  for (const auto& b : blocks) {
    for (const at::Tensor& t : b) {
      const auto* p = static_cast<const uint8_t*>(t.data_ptr());
      EXPECT_EQ((p - base) % 64, 0);
      EXPECT_LT(p - base, rt.host_bytes());
    }
  }
  EXPECT_EQ(rt.CurrentPlan().streamed_blocks, 3);
  rt.BeginPass();
  rt.Acquire(1);
  EXPECT_NE(blocks[1][0].data_ptr(), want[1][0].data_ptr());
  const void* on_device = blocks[1][0].data_ptr();
  EXPECT_TRUE(torch::equal(blocks[1][0], want[1][0]));
  rt.Release(1, false);
  rt.EndPass();
  EXPECT_NE(blocks[1][0].data_ptr(), on_device) << "between passes a streamed block shows its host copy";
  rt.Close(/*restore_pageable=*/true);
  ExpectEqual(blocks, want);
}

TEST(TorchRuntime, WeightsChangedOnTheDeviceAreWrittenBackOnce) {
  auto blocks = MakeBlocks(2);
  TorchRuntime rt(HostOptions());
  RegisterRequest req;
  req.blocks = blocks;
  req.plan = true;
  req.policy = "stream_all";
  rt.RegisterBlocks(req);
  rt.BeginPass();
  rt.Acquire(0);
  {
    torch::NoGradGuard no_grad;
    blocks[0][0].add_(1.0);
  }
  const at::Tensor expected = blocks[0][0].clone();
  rt.Release(0, false);
  rt.Acquire(1);
  rt.Release(1, false);
  rt.EndPass();
  EXPECT_TRUE(torch::equal(blocks[0][0], expected));
  EXPECT_EQ(rt.GetStats().writebacks, 1u);
  rt.Close(true);
}

TEST(TorchRuntime, InferenceWeightsStayInferenceTensorsAndAreNeverWrittenBack) {
  std::vector<std::vector<at::Tensor>> blocks;
  {
    c10::InferenceMode guard;
    blocks = MakeBlocks(2);
  }
  ASSERT_TRUE(blocks[0][0].is_inference());
  TorchRuntime rt(HostOptions());
  RegisterRequest req;
  req.blocks = blocks;
  req.plan = true;
  req.policy = "stream_all";
  rt.RegisterBlocks(req);
  {
    c10::InferenceMode guard;
    rt.BeginPass();
    rt.Acquire(0);
    at::Tensor y = at::matmul(blocks[0][0], blocks[0][1]);  // torch's ops accept the re-pointed weight
    EXPECT_EQ(y.size(0), 64);
    rt.Release(0, false);
    rt.EndPass();
  }
  EXPECT_EQ(VersionOf(blocks[0][0]), 0);
  EXPECT_EQ(rt.GetStats().writebacks, 0u);
  rt.Close(true);
  EXPECT_TRUE(blocks[0][0].is_inference());
}

// A host allocation fails half way (the third of four chunks): nothing stays
// registered, every weight has its values in ordinary memory again, the host
// bytes come back, and the same runtime registers the same tensors afterwards.
TEST(TorchRuntime, AFailedRegistrationLeavesNothingAndARetryWorks) {
  const int64_t before = Live().host.load();
  auto blocks = MakeBlocks(4, /*rows=*/256);
  auto want = Clones(blocks);
  RuntimeOptions o = HostOptions();
  o.chunk_bytes = 70000;  // one block (65,536 + 256 bytes) per chunk
  TorchRuntime rt(o);
  RegisterRequest req;
  req.blocks = blocks;
  req.plan = true;
  req.policy = "stream_all";
  // two chunks are packed, then the third allocation fails
  int calls = 0;
  req.progress = [&](size_t done, size_t) {
    ++calls;
    if (done == 2) rt.FailNextHostAllocations(1);
  };
  EXPECT_THROW(rt.RegisterBlocks(req), OutOfMemoryError);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(rt.num_blocks(), 0);
  EXPECT_EQ(Live().host.load(), before);
  ExpectEqual(blocks, want);
  req.progress = nullptr;
  std::vector<int> ids = rt.RegisterBlocks(req);
  EXPECT_EQ(ids.size(), 4u);
  EXPECT_EQ(rt.CurrentPlan().num_blocks, 4);
  rt.BeginPass();
  for (int b = 0; b < 4; ++b) {
    rt.Acquire(b);
    EXPECT_TRUE(torch::equal(blocks[b][0], want[b][0]));
    rt.Release(b, false);
  }
  rt.EndPass();
  rt.Close(true);
  EXPECT_EQ(Live().host.load(), before);
}

TEST(TorchRuntime, AProgressCallbackThatThrowsAbortsTheWholeRegistration) {
  auto blocks = MakeBlocks(3);
  auto want = Clones(blocks);
  TorchRuntime rt(HostOptions());
  RegisterRequest req;
  req.blocks = blocks;
  req.progress = [](size_t done, size_t) {
    if (done == 2) throw std::runtime_error("interrupted");
  };
  EXPECT_THROW(rt.RegisterBlocks(req), std::runtime_error);
  EXPECT_EQ(rt.num_blocks(), 0);
  ExpectEqual(blocks, want);
  req.progress = nullptr;
  EXPECT_EQ(rt.RegisterBlocks(req).size(), 3u);
  rt.Close(true);
}

TEST(TorchRuntime, InvalidTensorsAreRefusedBeforeAnyWeightMoves) {
  auto blocks = MakeBlocks(2);
  const void* first = blocks[0][0].data_ptr();
  blocks[1].push_back(blocks[0][1]);  // tied: the same tensor in two blocks
  TorchRuntime rt(HostOptions());
  RegisterRequest req;
  req.blocks = blocks;
  try {
    rt.RegisterBlocks(req);
    FAIL() << "a tied tensor was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("appears twice"), std::string::npos) << e.what();
  }
  EXPECT_EQ(blocks[0][0].data_ptr(), first);
  EXPECT_EQ(rt.num_blocks(), 0);
  blocks[1].pop_back();
  EXPECT_EQ(rt.RegisterBlocks(req = RegisterRequest{blocks}).size(), 2u);
  rt.Close(true);
}

TEST(TorchRuntime, OnlyConstructedRuntimesAreCounted) {
  const int64_t before = Live().runtimes.load();
  RuntimeOptions bad = HostOptions();
  bad.engine = "warp-drive";
  EXPECT_THROW(TorchRuntime rt(bad), std::invalid_argument);
  bad = HostOptions();
  bad.pin_mode = "glue";
  EXPECT_THROW(TorchRuntime rt(bad), std::invalid_argument);
  EXPECT_EQ(Live().runtimes.load(), before);
  {
    TorchRuntime rt(HostOptions());
    EXPECT_EQ(Live().runtimes.load(), before + 1);
  }
  EXPECT_EQ(Live().runtimes.load(), before);
}

// Under a cap, the plan decides what is pinned: the streamed blocks (uploaded
// every pass) before the resident ones (uploaded once).
TEST(TorchRuntime, ThePlanDecidesWhatIsPinnedFirst) {
  auto blocks = MakeBlocks(6, /*rows=*/256);  // 65,792 bytes each
  RuntimeOptions o = HostOptions();
  o.chunk_bytes = 70000;        // one block per chunk
  o.pin_cap_bytes = 3 * 66048;  // three blocks' chunks
  TorchRuntime rt(o);
  RegisterRequest req;
  req.blocks = blocks;
  req.plan = true;
  req.policy = "budget";
  req.prefetch = 1;
  req.budget_bytes = 4 * 66048;  // 2 resident + a 2-slot ring
  rt.RegisterBlocks(req);
  std::vector<bool> resident = rt.resident_blocks();
  std::vector<bool> pinned = rt.GetStats().block_pinned;
  int streamed = 0, streamed_pinned = 0, resident_pinned = 0;
  for (size_t i = 0; i < resident.size(); ++i) {
    streamed += resident[i] ? 0 : 1;
    (resident[i] ? resident_pinned : streamed_pinned) += pinned[i] ? 1 : 0;
  }
  ASSERT_EQ(streamed, 4) << rt.CurrentPlan().describe;
  EXPECT_EQ(streamed_pinned, 3);
  EXPECT_EQ(resident_pinned, 0);
  EXPECT_EQ(rt.pinned_bytes(), 3 * 66048);
  rt.Close(true);
}

TEST(TorchRuntime, Fp8BlocksPinTheirTransferFormNotTheirExactCopy) {
  auto blocks = MakeBlocks(2, /*rows=*/128);
  TorchRuntime rt(HostOptions());
  RegisterRequest req;
  req.blocks = blocks;
  req.fp8 = {true, true};
  req.plan = true;
  req.policy = "stream_all";
  rt.RegisterBlocks(req);
  RuntimeStats s = rt.GetStats();
  EXPECT_EQ(s.fp8_blocks, 2);
  EXPECT_EQ(s.block_pinned, (std::vector<bool>{false, false}));  // the exact host copy never crosses the link
  // pinned: the codes (128 x 64) and scales of each weight, and its bias as stored
  EXPECT_GT(s.pinned_bytes, 2 * (128 * 64 + 128 * 4));
  EXPECT_LT(s.pinned_bytes, 2 * (128 * 64 * 4));
  EXPECT_GT(s.fp8_error.max_abs, 0.0);
  rt.Close(true);
}

TEST(TorchRuntime, CallsDuringClosedOrWrongStateSayWhatToDo) {
  auto blocks = MakeBlocks(1);
  TorchRuntime rt(HostOptions());
  rt.RegisterBlocks(RegisterRequest{blocks});
  EXPECT_THROW(rt.Acquire(5), std::out_of_range);
  try {
    rt.Plan("everything", -1, 1);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("allowed: all_resident, stream_all, budget"), std::string::npos);
  }
  rt.Close(true);
  try {
    rt.Acquire(0);
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("closed"), std::string::npos);
  }
}

}  // namespace
}  // namespace pinstream
