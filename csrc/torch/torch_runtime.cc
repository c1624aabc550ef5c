// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "torch/torch_runtime.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "core/disk_plan.h"
#include "core/exact_block.h"
#include "core/fp8_block.h"
#include "core/pack_layout.h"
#include "torch/errors.h"
#include "torch/live_bytes.h"
#include "torch/placeholder.h"

#ifdef PINSTREAM_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "cuda/cuda_copy_engine.h"
#endif

namespace pinstream {

PlanPolicy ParsePolicy(const std::string& p) {
  if (p == "all_resident") return PlanPolicy::kAllResident;
  if (p == "stream_all") return PlanPolicy::kStreamAll;
  if (p == "budget") return PlanPolicy::kBudget;
  throw std::invalid_argument("PinStream: unknown plan policy '" + p + "'; allowed: all_resident, stream_all, budget");
}

// A host buffer of the engine, counted in the process's live bytes and in its
// runtime's while it lives.
class TorchRuntime::AccountedBuffer {
 public:
  AccountedBuffer(std::unique_ptr<HostBuffer> buf, int64_t bytes, std::shared_ptr<std::atomic<int64_t>> counter)
      : buf_(std::move(buf)), bytes_(bytes), counter_(std::move(counter)) {
    *counter_ += bytes_;
    Live().host += bytes_;
    if (buf_->pinned()) Live().pinned += bytes_;
  }
  ~AccountedBuffer() {
    *counter_ -= bytes_;
    Live().host -= bytes_;
    if (buf_->pinned()) Live().pinned -= bytes_;
  }
  HostBuffer* get() const { return buf_.get(); }

 private:
  std::unique_ptr<HostBuffer> buf_;
  int64_t bytes_;
  std::shared_ptr<std::atomic<int64_t>> counter_;
};

namespace {

// The runtime's device current for a call (CUDA); the caller's comes back.
class DeviceScope {
 public:
  explicit DeviceScope(const at::Device& device) {
    if (device.is_cuda()) guard_.reset_device(device);
  }

 private:
  c10::OptionalDeviceGuard guard_;
};

int64_t Int(uint64_t v) { return static_cast<int64_t>(v); }
uint64_t Uint(int64_t v) { return static_cast<uint64_t>(v); }

// A weight as the fp8 transfer format sees it.
TransferTensor TransferOf(const at::Tensor& t, uint64_t offset) {
  TransferTensor tt;
  tt.offset = offset;
  tt.bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
  const at::ScalarType st = t.scalar_type();
  if ((st == at::kFloat || st == at::kHalf || st == at::kBFloat16) && t.dim() >= 2 && t.numel() > 0) {
    tt.quantize = true;
    tt.dtype = st == at::kFloat ? FloatDtype::kFloat32 : st == at::kHalf ? FloatDtype::kFloat16 : FloatDtype::kBFloat16;
    tt.rows = t.size(0);
    tt.cols = t.numel() / tt.rows;
  }
  return tt;
}

}  // namespace

TorchRuntime::TorchRuntime(const RuntimeOptions& o)
    : device_(o.device),
      chunk_bytes_(o.chunk_bytes),
      pin_cap_bytes_(o.pin_cap_bytes),
      host_budget_bytes_(o.host_budget_bytes),
      spill_dir_(o.spill_dir),
      read_ahead_(o.read_ahead) {
  if (o.read_ahead < 1) {
    throw std::invalid_argument("PinStream: read_ahead must be >= 1, got " + std::to_string(o.read_ahead));
  }
  if (o.disk_threads < 1) {
    throw std::invalid_argument("PinStream: disk_threads must be >= 1, got " + std::to_string(o.disk_threads));
  }
  disk_options_.threads = o.disk_threads;
  disk_options_.chunk_bytes = kDiskTierChunkBytes;
  disk_options_.direct = o.disk_direct;
  disk_options_.why_buffered = o.disk_why;
  disk_options_.io_uring = o.disk_io_uring;
  if (o.prefetch < 0) {
    throw std::invalid_argument("PinStream: prefetch must be >= 0, got " + std::to_string(o.prefetch));
  }
  if (o.chunk_bytes <= 0) throw std::invalid_argument("PinStream: chunk_bytes must be > 0");
  if (o.pin_mode != "auto" && o.pin_mode != "register" && o.pin_mode != "hostalloc" && o.pin_mode != "pageable") {
    throw std::invalid_argument("PinStream: unknown pin_mode '" + o.pin_mode +
                                "'; allowed: auto, register, hostalloc, pageable");
  }
  std::string kind = o.engine;
  if (kind == "auto") kind = device_.is_cuda() ? "cuda" : "host";
  if (kind == "host") {
    HostEngineOptions opt;
    opt.bandwidth_bytes_per_s = o.link_gbps > 0 ? o.link_gbps * 1e9 : 0;
    opt.latency_us = o.latency_us;
    opt.max_random_delay_us = o.random_delay_us;
    opt.seed = o.seed;
    opt.poison = o.poison;
    auto host = std::make_unique<HostCopyEngine>(opt);
    host_engine_ = host.get();
    engine_ = std::move(host);
    alloc_device_ = at::Device(at::kCPU);
  } else if (kind == "cuda") {
#ifdef PINSTREAM_WITH_CUDA
    if (!device_.is_cuda()) {
      throw std::invalid_argument("PinStream: engine 'cuda' needs a cuda device, got '" + o.device + "'");
    }
    if (!torch::cuda::is_available()) {
      throw std::runtime_error(
          "PinStream: engine 'cuda' requested but torch sees no CUDA device; "
          "use engine='host' on a machine without a GPU");
    }
    if (!device_.has_index()) device_ = at::Device(at::kCUDA, 0);
    if (device_.index() >= static_cast<int>(torch::cuda::device_count())) {
      throw std::invalid_argument("PinStream: device '" + device_.str() + "' does not exist; this machine has " +
                                  std::to_string(torch::cuda::device_count()) + " CUDA device(s)");
    }
    CudaEngineOptions opt;
    opt.device = device_.index();
    opt.timing = o.timing;
    opt.pin_mode = o.pin_mode == "register"    ? PinMode::kRegister
                   : o.pin_mode == "hostalloc" ? PinMode::kHostAlloc
                   : o.pin_mode == "pageable"  ? PinMode::kPageable
                                               : PinMode::kAuto;
    std::unique_ptr<CudaCopyEngine> cuda;
    ThrowIfError(CudaCopyEngine::Create(opt, &cuda));
    engine_ = std::move(cuda);
    alloc_device_ = device_;
#else
    throw std::runtime_error(
        "PinStream: engine 'cuda' requested but this build has no CUDA engine (built without nvcc); "
        "rebuild with `python install.py` on a machine with the CUDA toolkit, or use engine='host'");
#endif
  } else {
    throw std::invalid_argument("PinStream: unknown engine '" + o.engine + "'; allowed: auto, cuda, host");
  }
  allocator_ = std::make_unique<TorchDeviceAllocator>(
      alloc_device_, static_cast<uint64_t>(std::max<int64_t>(o.device_capacity_bytes, 0)));
  core_ = std::make_unique<StreamingRuntime>(engine_.get(), allocator_.get());
  core_->SetAdaptivePrefetch(o.adaptive_prefetch);
  cache_ = std::make_unique<ExactCache>(o.cache_dir);
  ++Live().runtimes;  // last: only a runtime that was constructed is counted
}

TorchRuntime::~TorchRuntime() {
  // A runtime goes with its model: its weights keep pointing at their host copy (no
  // pageable copy of a model that is being dropped), and that memory goes with the
  // last tensor that uses it.
  try {
    std::lock_guard<std::mutex> lock(mu_);
    CloseLocked(/*restore_pageable=*/false);
  } catch (...) {
  }
  core_.reset();  // before the allocator and engine it uses
  --Live().runtimes;
}

std::string TorchRuntime::engine_name() const { return engine_->name(); }

void TorchRuntime::CheckOpen() const {
  if (closed_) throw std::runtime_error("PinStream: runtime is closed; offload the model again");
  if (registering_) {
    throw std::runtime_error(
        "PinStream: register_blocks() is running in another thread; "
        "call this after it returns");
  }
}

void TorchRuntime::CheckId(int block) const {
  if (block < 0 || block >= static_cast<int>(blocks_.size())) {
    throw std::out_of_range("PinStream: block id " + std::to_string(block) + " out of range [0, " +
                            std::to_string(blocks_.size()) + ")");
  }
}

HostCopyEngine* TorchRuntime::HostOnly(const char* what) const {
  if (host_engine_ == nullptr) throw std::runtime_error(std::string("PinStream: ") + what + " needs the host engine");
  return host_engine_;
}

void* TorchRuntime::ComputeQueue() const {
#ifdef PINSTREAM_WITH_CUDA
  if (alloc_device_.is_cuda()) return c10::cuda::getCurrentCUDAStream(alloc_device_.index()).stream();
#endif
  return nullptr;
}

void TorchRuntime::SyncCompute() const {
#ifdef PINSTREAM_WITH_CUDA
  if (alloc_device_.is_cuda()) c10::cuda::getCurrentCUDAStream(alloc_device_.index()).synchronize();
#endif
}

// ---- registration: layout -> plan -> pack ----------------------------------------------

namespace {

// The bytes of a packed tensor on the host, in memory order: the weight itself
// when it is on the CPU with its packed strides, else a copy with them.
at::Tensor HostBytesOf(const PackedTensor& pt) {
  const at::Tensor& t = pt.param;
  if (t.device().is_cpu() && t.strides() == at::IntArrayRef(pt.strides)) return t;
  at::Tensor out = at::empty_strided(t.sizes(), pt.strides, t.options().device(at::kCPU));
  out.copy_(t);
  return out;
}

bool FloatingOfAtMostTwoBytes(const at::Tensor& t) {
  return c10::isFloatingType(t.scalar_type()) && t.element_size() <= 2;
}

}  // namespace

std::vector<int> TorchRuntime::RegisterBlocks(const RegisterRequest& req) {
  const size_t n = req.blocks.size();
  struct Pending {
    BlockLayout layout;
    std::unique_ptr<BlockTransform> transform;
    std::vector<TransferTensor> fp8;                // fp8 blocks
    std::vector<std::unique_ptr<ExactCode>> codes;  // coded blocks: per tensor, null = as stored
    std::vector<uint64_t> keys;                     // their cache keys
    std::vector<bool> cached;                       // found in the cache (the bytes come from it)
    std::vector<ExactTensor> exact;
    uint64_t transfer_bytes = 0;
    LinkUse use = LinkUse::kOnce;
    size_t transfer_candidate = 0;  // its transfer buffer among the pin candidates
  };
  std::vector<BlockTensors> infos(n);
  std::vector<Pending> pending(n);
  std::vector<size_t> plain;       // blocks packed into chunks
  std::vector<ChunkGroup> groups;  // over `plain`
  std::vector<bool> pin;           // per chunk group, then per transfer buffer
  int64_t ring = 0;                // pinned bytes of the read ring, when units live on disk
  const int threads = std::max(1, at::get_num_threads());
  int first = 0;
  // ---- 1. validate, lay out, code, register the sizes, plan (under the lock) ----
  {
    std::lock_guard<std::mutex> lock(mu_);
    CheckOpen();
    auto count_error = [&](const char* what, size_t got) {
      return std::invalid_argument("PinStream: " + std::string(what) + " has " + std::to_string(got) + " entries for " +
                                   std::to_string(n) + " blocks");
    };
    if (!req.names.empty() && req.names.size() != n) throw count_error("names", req.names.size());
    if (!req.fp8.empty() && req.fp8.size() != n) throw count_error("fp8", req.fp8.size());
    if (!req.exact.empty() && req.exact.size() != n) throw count_error("exact", req.exact.size());
    if (!req.streamable.empty() && req.streamable.size() != n) throw count_error("streamable", req.streamable.size());
    if (core_->planned()) throw std::runtime_error("PinStream: register blocks before plan()");
    std::unordered_set<const c10::TensorImpl*> here;
    for (size_t b = 0; b < n; ++b) {
      const auto& tensors = req.blocks[b];
      if (!req.names.empty() && req.names[b].size() != tensors.size()) {
        throw std::invalid_argument("PinStream: names of block " + std::to_string(b) + " has " +
                                    std::to_string(req.names[b].size()) + " entries for its " +
                                    std::to_string(tensors.size()) + " tensors");
      }
      BlockTensors& info = infos[b];
      info.streamable = req.streamable.empty() ? true : static_cast<bool>(req.streamable[b]);
      info.fp8 = !req.fp8.empty() && req.fp8[b];
      info.exact = !req.exact.empty() && req.exact[b];
      if (info.fp8 && info.exact) {
        throw std::invalid_argument("PinStream: block " + std::to_string(b) + " cannot be sent both as fp8 and coded");
      }
      std::vector<uint64_t> nbytes;
      for (size_t k = 0; k < tensors.size(); ++k) {
        const at::Tensor& t = tensors[k];
        if (!t.defined()) throw std::invalid_argument("PinStream: undefined tensor in block " + std::to_string(b));
        if (t.is_sparse() || t.layout() != at::kStrided) {
          throw std::invalid_argument("PinStream: only dense strided tensors can be packed; block " +
                                      std::to_string(b) + " has a " + c10::str(t.layout()) + " tensor");
        }
        if (t.is_quantized()) {
          throw std::invalid_argument("PinStream: quantized torch tensors cannot be packed (block " +
                                      std::to_string(b) + ")");
        }
        const c10::TensorImpl* impl = t.unsafeGetTensorImpl();
        if (seen_.count(impl) != 0 || !here.insert(impl).second) {
          throw std::invalid_argument("PinStream: a tensor appears twice (tied weights) in block " + std::to_string(b) +
                                      "; shared tensors must stay outside streamed blocks");
        }
        PackedTensor pt;
        pt.param = t;
        pt.inference = IsInferenceWeight(t);
        if (!req.names.empty()) pt.name = req.names[b][k];
        pt.nbytes = t.numel() * static_cast<int64_t>(t.element_size());
        // fp8 blocks quantize row-major matrices; other blocks keep the weight's layout
        pt.strides = PackedStrides(t, /*contiguous=*/info.fp8);
        nbytes.push_back(static_cast<uint64_t>(pt.nbytes));
        info.tensors.push_back(std::move(pt));
      }
      Pending& p = pending[b];
      p.layout = LayoutBlock(nbytes);
      info.bytes = Int(p.layout.bytes);
      for (size_t k = 0; k < info.tensors.size(); ++k) info.tensors[k].offset = Int(p.layout.offsets[k]);
      if (!req.sources.empty() && !info.exact && !info.fp8 && req.sources[b].size() == info.tensors.size()) {
        for (const auto& [index, offset] : req.sources[b]) {
          int file = -1;
          if (index >= 0 && index < static_cast<int>(req.source_files.size()) && offset >= 0) {
            const std::string& path = req.source_files[static_cast<size_t>(index)];
            auto at = std::find(source_paths_.begin(), source_paths_.end(), path);
            if (at == source_paths_.end()) at = source_paths_.insert(source_paths_.end(), path);
            file = static_cast<int>(at - source_paths_.begin());
          }
          info.source.emplace_back(file, offset);
        }
      }
      if (info.fp8) {
        for (size_t k = 0; k < info.tensors.size(); ++k) {
          p.fp8.push_back(TransferOf(info.tensors[k].param, p.layout.offsets[k]));
        }
        p.transform = std::make_unique<BlockTransform>();
        p.transfer_bytes = MakeFp8Transform(p.fp8, p.transform.get());
      } else if (info.exact) {
        // Coded where coding pays: the code (sizes) now, the bytes when packing.
        for (size_t k = 0; k < info.tensors.size(); ++k) {
          PackedTensor& pt = info.tensors[k];
          std::unique_ptr<ExactCode> code;
          std::string skip = ExactSkipReason(FloatingOfAtMostTwoBytes(pt.param),
                                             static_cast<int>(pt.param.element_size()), pt.param.numel());
          uint64_t key = 0;
          bool cached = false;
          if (skip.empty()) {
            const at::Tensor host = HostBytesOf(pt);
            const int esize = static_cast<int>(pt.param.element_size());
            code = std::make_unique<ExactCode>();
            if (cache_->enabled()) {
              key = ExactCache::KeyOf(ContentHash(host.data_ptr(), static_cast<uint64_t>(pt.nbytes), threads), esize,
                                      pt.param.numel());
              cached = cache_->Find(key, esize, pt.param.numel(), &code->layout);
            }
            if (!cached) ThrowIfError(AnalyzeExact(host.data_ptr(), esize, pt.param.numel(), threads, code.get()));
            if (!code->pays()) {
              skip = "coding would not pay (" + std::to_string(code->layout.bytes) + " coded bytes for " +
                     std::to_string(code->layout.plain_bytes()) + " stored)";
              code.reset();
            }
          }
          if (!skip.empty()) ++exact_skips_[skip];
          p.keys.push_back(key);
          p.cached.push_back(cached && code);
          p.exact.push_back(ExactTensor{p.layout.offsets[k], static_cast<uint64_t>(pt.nbytes), code.get()});
          p.codes.push_back(std::move(code));
        }
        p.transform = std::make_unique<BlockTransform>();
        p.transfer_bytes = MakeExactTransform(p.exact, p.transform.get());
        for (size_t k = 0; k < info.tensors.size(); ++k) info.tensors[k].job = static_cast<int>(k);
      }
    }
    first = core_->num_blocks();
    Status s;
    for (size_t b = 0; b < n && s.ok(); ++b) {
      const BlockTensors& info = infos[b];
      Pending& p = pending[b];
      const bool transformed = info.fp8 || info.exact;
      int id = -1;
      s = core_->RegisterBlock(nullptr, transformed ? p.transfer_bytes : p.layout.bytes, info.streamable, &id);
      if (s.ok() && transformed) s = core_->SetTransform(id, p.layout.bytes, p.transform.get());
      // its tensor boundaries: where a budget plan may keep a head resident
      if (s.ok() && !transformed && info.streamable && !p.layout.Cuts().empty())
        s = core_->SetCuts(id, p.layout.Cuts());
    }
    if (s.ok() && req.plan) {
      try {
        s = core_->Plan(ParsePolicy(req.policy),
                        req.budget_bytes < 0 ? PlanRequest::kUnlimited : static_cast<uint64_t>(req.budget_bytes),
                        req.prefetch);
      } catch (...) {
        core_->DropBlocksFrom(first);
        throw;
      }
    }
    if (!s.ok()) {
      core_->DropBlocksFrom(first);
      ThrowIfError(s);
    }
    // The disk tier: beyond the host budget, units live in the spill file (fp8
    // units and the non-block part stay in RAM).
    if (host_budget_bytes_ >= 0) {
      std::vector<DiskPlanUnit> units(n);
      for (size_t b = 0; b < n; ++b) {
        const int id = first + static_cast<int>(b);
        const BlockTensors& info = infos[b];
        units[b].host_bytes = info.exact ? pending[b].transfer_bytes
                              : info.fp8 ? static_cast<uint64_t>(info.bytes) + pending[b].transfer_bytes
                                         : static_cast<uint64_t>(info.bytes);
        units[b].movable = info.streamable && !info.fp8;
        units[b].resident = req.plan && (core_->resident(id) || core_->coded(id));
        units[b].compute = static_cast<double>(info.bytes);  // in proportion to its weights until timed
      }
      const std::vector<bool> disk = ChooseDiskUnits(units, static_cast<uint64_t>(host_bytes_),
                                                     static_cast<uint64_t>(host_budget_bytes_), &disk_over_bytes_);
      for (size_t b = 0; b < n; ++b) infos[b].disk = disk[b];
    }
    // Pin what the plan uploads most often first; without a plan, in order.
    std::vector<uint64_t> sizes;
    for (size_t b = 0; b < n; ++b) {
      const int id = first + static_cast<int>(b);
      pending[b].use = req.plan
                           ? UseOfBlock(infos[b].streamable, core_->resident(id) || core_->coded(id), core_->split(id))
                           : LinkUse::kOnce;
      if (!infos[b].exact && !infos[b].disk) {
        plain.push_back(b);
        sizes.push_back(static_cast<uint64_t>(infos[b].bytes));
      }
    }
    // Chunks never mix fp8 blocks (their exact copy never crosses the link, so it is
    // not pinned) with blocks sent as stored.
    for (size_t i = 0; i < plain.size();) {
      size_t j = i;
      while (j < plain.size() && infos[plain[j]].fp8 == infos[plain[i]].fp8) ++j;
      std::vector<uint64_t> run(sizes.begin() + static_cast<std::ptrdiff_t>(i),
                                sizes.begin() + static_cast<std::ptrdiff_t>(j));
      for (ChunkGroup g : GroupIntoChunks(run, static_cast<uint64_t>(chunk_bytes_))) {
        g.first_block += i;
        g.end_block += i;
        groups.push_back(g);
      }
      i = j;
    }
    std::vector<PinCandidate> candidates;
    for (const ChunkGroup& g : groups) {
      PinCandidate c{g.bytes, LinkUse::kNever};
      for (size_t i = g.first_block; i < g.end_block; ++i) {
        // an fp8 block's exact host copy never crosses the link: its transfer form does
        if (!infos[plain[i]].fp8) c.use = std::min(c.use, pending[plain[i]].use);
      }
      candidates.push_back(c);
    }
    uint64_t disk_most = 0;  // the largest unit on disk: the size of a read-ring buffer
    bool disk_streams = false;
    for (size_t b = 0; b < n; ++b) {
      if (infos[b].disk) {
        disk_most = std::max(disk_most, infos[b].exact ? pending[b].transfer_bytes : Uint(infos[b].bytes));
        disk_streams = disk_streams || pending[b].use != LinkUse::kOnce;
        continue;
      }
      if (!infos[b].fp8 && !infos[b].exact) continue;
      pending[b].transfer_candidate = candidates.size();
      candidates.push_back(PinCandidate{pending[b].transfer_bytes, pending[b].use});
    }
    // the read ring is pinned too: the pinning cap keeps room for it
    ring = Int(ReadRingBytes(disk_most, disk_streams, req.prefetch, read_ahead_));
    pin =
        ChoosePinned(candidates, pin_cap_bytes_ < 0 ? -1 : std::max<int64_t>(0, pin_cap_bytes_ - pinned_bytes_ - ring));
    registering_ = true;
  }

  // ---- 2. pack each block, in order, and re-point it there (no lock) ----
  std::vector<Chunk> new_chunks;
  std::vector<int64_t> chunk_of(n, -1), chunk_offset(n, 0);
  std::vector<std::shared_ptr<AccountedBuffer>> new_transfer(n);
  std::unordered_set<std::string> how;
  std::vector<bool> packed(n, false);  // its weights point at their host copy
  std::vector<size_t> group_of(n, 0);
  for (size_t g = 0; g < groups.size(); ++g) {
    for (size_t i = groups[g].first_block; i < groups[g].end_block; ++i) group_of[plain[i]] = g;
  }
  auto transfer_buffer = [&](size_t b, bool pinned) {
    Pending& p = pending[b];
    std::unique_ptr<HostBuffer> tbuf;
    ThrowIfError(engine_->AllocateHostBuffer(std::max<uint64_t>(p.transfer_bytes, 1), pinned, &tbuf));
    how.insert(tbuf->how());
    new_transfer[b] = std::make_shared<AccountedBuffer>(std::move(tbuf), Int(p.transfer_bytes), live_host_bytes_);
    return static_cast<uint8_t*>(new_transfer[b]->get()->data());
  };
  // A coded unit's transfer bytes, written at `out`: from the cache where it
  // has them, else coded here (and stored in the cache).
  auto encode_exact = [&](size_t b, uint8_t* out) {
    BlockTensors& info = infos[b];
    Pending& p = pending[b];
    for (size_t k = 0; k < info.tensors.size(); ++k) {
      PackedTensor& pt = info.tensors[k];
      const TransformJob& job = p.transform->jobs[k];
      bool done = p.cached[k] && cache_->Read(p.keys[k], job.exact, out + job.src_offset);
      if (done) continue;
      const at::Tensor host = HostBytesOf(pt);
      if (p.cached[k]) {  // the entry went bad since it was found: code it here
        ExactCode fresh;
        ThrowIfError(AnalyzeExact(host.data_ptr(), static_cast<int>(pt.param.element_size()), pt.param.numel(), threads,
                                  &fresh));
        if (fresh.layout.bytes != job.exact.bytes) {
          throw std::runtime_error("PinStream: a cached coded tensor of " + pt.name +
                                   " does not match the weights; clear the cache directory " + cache_->dir());
        }
        *p.codes[k] = std::move(fresh);
      }
      ThrowIfError(EncodeExactTensor(host.data_ptr(), p.exact[k], job, out, threads));
      if (job.kind == TransformJob::Kind::kDecodeExact && cache_->enabled()) {
        cache_->Store(p.keys[k], job.exact, out + job.src_offset);
      }
    }
  };
  // A unit meant for disk: its bytes (coded: its transfer bytes) laid out in a
  // scratch buffer and appended to the spill file. False when the write failed
  // (a full disk): spill_error_ says so and this unit and the rest stay in RAM.
  at::Tensor scratch;
  bool spill_failed = false;
  auto spill = [&](size_t b) {
    BlockTensors& info = infos[b];
    if (spill_failed) return false;
    auto fail = [&](const Status& why) {
      spill_failed = true;
      std::lock_guard<std::mutex> lock(mu_);
      spill_error_ = why.message() + "; units meant for disk stay in RAM (not pinned)";
      return false;
    };
    Status made = MakeSpill();
    if (!made.ok()) return fail(made);
    const uint64_t size = info.exact ? pending[b].transfer_bytes : Uint(info.bytes);
    if (!scratch.defined() || Uint(scratch.numel()) < size) {
      scratch = at::empty({Int(std::max<uint64_t>(size, 1))}, at::TensorOptions().dtype(at::kByte));
    }
    if (info.exact) {
      encode_exact(b, scratch.data_ptr<uint8_t>());
    } else {
      for (PackedTensor& pt : info.tensors) {
        AliasAs(scratch, pt.offset, pt.param.scalar_type(), pt.param.sizes(), pt.strides, false).copy_(pt.param);
      }
    }
    Status w = SpillBytes(scratch.data_ptr<uint8_t>(), size, &info.extents);
    if (!w.ok()) return fail(w);
    info.disk_bytes = size;
    return true;
  };
  // A unit as stored whose every tensor is, byte for byte, in one of the model's
  // own files: it reads from there (no copy is written).
  auto from_source = [&](size_t b) {
    BlockTensors& info = infos[b];
    std::string why;
    std::vector<DiskExtent> extents;
    if (!SourceExtents(
            info, [&](size_t k) { return HostBytesOf(info.tensors[k]); }, &extents, &why)) {
      std::lock_guard<std::mutex> lock(mu_);
      if (source_note_.empty()) source_note_ = why;
      return false;
    }
    info.extents = std::move(extents);
    info.disk_bytes = Uint(info.bytes);
    return true;
  };
  try {
    int64_t off = 0;           // in the chunk of the current group
    int64_t group_chunk = -1;  // that chunk, in new_chunks
    for (size_t b = 0; b < n; ++b) {
      BlockTensors& info = infos[b];
      Pending& p = pending[b];
      const bool meant_for_disk = info.disk;
      if (info.disk) info.disk = from_source(b) || spill(b);  // else it stays in RAM; spill_error_ says why
      if (info.disk) {
        // its bytes are in the spill file only: the weights point at the
        // placeholder until a pass points them at their device copy
        info.transform = p.transform.get();
        info.transfer_bytes = info.exact ? p.transfer_bytes : 0;
        for (PackedTensor& pt : info.tensors) {
          pt.host_view = CodedPlaceholder(pt.param.scalar_type(), pt.param.sizes(), pt.strides, pt.inference);
        }
      } else if (info.exact) {
        // The coded form is the only host copy: encode, then the weights point at
        // the placeholder until a pass points them at their device copy.
        uint8_t* out = transfer_buffer(b, !meant_for_disk && pin[p.transfer_candidate]);
        info.pinned = new_transfer[b]->get()->pinned();
        info.transfer = out;
        info.transfer_bytes = p.transfer_bytes;
        info.transform = p.transform.get();
        encode_exact(b, out);
        for (PackedTensor& pt : info.tensors) {
          pt.host_view = CodedPlaceholder(pt.param.scalar_type(), pt.param.sizes(), pt.strides, pt.inference);
        }
      } else {
        // a unit that was meant for disk has a chunk of its own, not pinned
        const size_t g = meant_for_disk ? 0 : group_of[b];
        const bool fresh = meant_for_disk || plain[groups[g].first_block] == b;  // the first block of a new chunk
        if (fresh) {
          const int64_t size = meant_for_disk ? info.bytes : Int(groups[g].bytes);
          std::unique_ptr<HostBuffer> buf;
          ThrowIfError(engine_->AllocateHostBuffer(static_cast<uint64_t>(std::max<int64_t>(size, 1)),
                                                   !meant_for_disk && pin[g], &buf));
          how.insert(buf->how());
          const bool pinned = buf->pinned();
          void* data = buf->data();
          auto owner = std::make_shared<AccountedBuffer>(std::move(buf), size, live_host_bytes_);
          at::Tensor chunk = at::from_blob(
              data, {size}, [owner](void*) mutable { owner.reset(); }, at::TensorOptions().dtype(at::kByte));
          new_chunks.push_back(Chunk{chunk, pinned});
        }
        const int64_t c = fresh ? static_cast<int64_t>(new_chunks.size()) - 1 : group_chunk;
        if (fresh && !meant_for_disk) {
          group_chunk = c;
          off = 0;
        }
        const int64_t at = meant_for_disk ? 0 : off;
        const at::Tensor& chunk = new_chunks[static_cast<size_t>(c)].bytes;
        chunk_of[b] = c;
        chunk_offset[b] = at;
        info.pinned = new_chunks[static_cast<size_t>(c)].pinned;
        for (PackedTensor& pt : info.tensors) {
          AliasAs(chunk, at + pt.offset, pt.param.scalar_type(), pt.param.sizes(), pt.strides, false).copy_(pt.param);
          pt.host_view =
              AliasAs(chunk, at + pt.offset, pt.param.scalar_type(), pt.param.sizes(), pt.strides, pt.inference);
        }
        if (!meant_for_disk) off += info.bytes;
        if (info.fp8) {
          // Sent as fp8: the exact host copy stays the truth (weights point at it
          // between uses); the link carries codes + per-row scales.
          uint8_t* out = transfer_buffer(b, pin[p.transfer_candidate]);
          std::vector<const void*> srcs;
          for (const PackedTensor& pt : info.tensors) srcs.push_back(pt.host_view.data_ptr());
          ThrowIfError(QuantizeFp8Block(p.fp8, srcs, *p.transform, out, threads, &info.fp8_error));
        }
      }
      // recorded: now its weights move to the host copy (the original storage goes)
      for (PackedTensor& pt : info.tensors) pt.param.set_data(pt.host_view);
      packed[b] = true;
      if (req.progress) req.progress(b + 1, n);
    }
    scratch = at::Tensor();
    ThrowIfError(SpillWritten());
  } catch (...) {
    // All or nothing: the packed blocks' weights get ordinary memory again (a
    // unit written to the spill file: its bytes read back from there).
    for (size_t b = 0; b < n; ++b) {
      if (!packed[b]) continue;
      if (!infos[b].disk) {
        infos[b].Detach(/*restore_pageable=*/true);
        continue;
      }
      at::Tensor bytes = at::empty({Int(std::max<uint64_t>(infos[b].disk_bytes, 1))}, at::kByte);
      Status back;
      for (const DiskExtent& e : infos[b].extents) {
        if (!back.ok()) break;
        if (e.file < 0) {
          back = spill_->ReadAt(bytes.data_ptr<uint8_t>() + e.block_offset, e.bytes, e.file_offset);
        } else {
          uint64_t ticket = 0;
          back = reader_->Submit(e.file, e.file_offset, e.bytes, bytes.data_ptr<uint8_t>() + e.block_offset, &ticket);
          if (back.ok()) back = reader_->Wait(ticket);
        }
      }
      infos[b].Detach(/*restore_pageable=*/back.ok(), bytes.data_ptr<uint8_t>());
    }
    infos.clear();
    new_chunks.clear();
    new_transfer.clear();
    std::lock_guard<std::mutex> lock(mu_);
    core_->DropBlocksFrom(first);
    registering_ = false;
    throw;
  }

  // ---- 3. commit (under the lock) ----
  std::vector<int> ids;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const int base_chunk = static_cast<int>(chunks_.size());
    for (size_t b = 0; b < n; ++b) {
      const int id = first + static_cast<int>(b);
      if (infos[b].disk) {
        if (!disk_reader_used_) {
          // the ring is pinned when the pinning cap has room for it beside the weights
          int64_t pinned_now = pinned_bytes_;
          for (const Chunk& c : new_chunks) pinned_now += c.pinned ? c.bytes.numel() : 0;
          for (const auto& t : new_transfer) pinned_now += t && t->get()->pinned() ? Int(t->get()->size()) : 0;
          UseReaderLocked(pinned_now, ring);
        }
        for (DiskExtent& e : infos[b].extents) {
          if (e.file < 0) e.file = spill_file_id_;  // written to the spill file
        }
        ThrowIfError(core_->SetDiskSource(id, infos[b].extents));
      } else {
        const void* host = new_transfer[b] ? new_transfer[b]->get()->data()
                                           : new_chunks[chunk_of[b]].bytes.data_ptr<uint8_t>() + chunk_offset[b];
        ThrowIfError(core_->AttachHost(id, host));
      }
      for (const PackedTensor& pt : infos[b].tensors) seen_.insert(pt.param.unsafeGetTensorImpl());
      ids.push_back(id);
      if (chunk_of[b] >= 0) infos[b].chunk = base_chunk + static_cast<int>(chunk_of[b]);
      if (new_transfer[b]) {
        infos[b].transfer_buffer = static_cast<int>(transfer_buffers_.size());
        transfer_buffers_.push_back(new_transfer[b]);
        CountHostLocked(Int(pending[b].transfer_bytes), new_transfer[b]->get()->pinned());
      }
      // the core reads a transform at each upload: it lives as long as the runtime
      if (pending[b].transform) transforms_.push_back(std::move(pending[b].transform));
      if (infos[b].exact) {
        for (const auto& code : pending[b].codes) (code ? exact_coded_tensors_ : exact_stored_tensors_) += 1;
      }
      blocks_.push_back(std::move(infos[b]));
    }
    for (Chunk& c : new_chunks) {
      CountHostLocked(c.bytes.numel(), c.pinned);
      chunks_.push_back(std::move(c));
    }
    pin_how_.insert(how.begin(), how.end());
    registering_ = false;
  }
#if defined(__GLIBC__)
  // The original tensors' storage was freed above; hand the heap pages back to
  // the OS so the process does not hold a second copy's worth of RSS.
  malloc_trim(0);
#endif
  return ids;
}

at::Tensor TorchRuntime::HostValue(int block, int index) {
  std::lock_guard<std::mutex> lock(mu_);
  CheckOpen();
  CheckId(block);
  const BlockTensors& info = blocks_[block];
  if (index < 0 || index >= static_cast<int>(info.tensors.size())) {
    throw std::out_of_range("PinStream: tensor " + std::to_string(index) + " of block " + std::to_string(block) +
                            " out of range [0, " + std::to_string(info.tensors.size()) + ")");
  }
  const int threads = std::max(1, at::get_num_threads());
  if (!info.disk) return info.HostValue(static_cast<size_t>(index), threads);
  uint64_t lo = 0, hi = 0;
  info.RangeOf(static_cast<size_t>(index), &lo, &hi);
  const at::Tensor bytes = ReadDiskLocked(info, lo, hi);
  return info.ValueFrom(static_cast<size_t>(index), bytes.data_ptr<uint8_t>(), threads);
}

DiskReader* TorchRuntime::Reader() {
  if (!reader_) reader_ = std::make_unique<DiskReader>(disk_options_);
  return reader_.get();
}

Status TorchRuntime::MakeSpill() {
  if (spill_) return Status::Ok();
  auto file = std::make_unique<SpillFile>();
  PINSTREAM_RETURN_IF_ERROR(file->Create(spill_dir_));
  file->FailNextWrites(fail_spill_writes_);
  spill_ = std::move(file);
  return Status::Ok();
}

Status TorchRuntime::SpillWritten() {
  if (!spill_ || spill_->size() == 0) return Status::Ok();
  PINSTREAM_RETURN_IF_ERROR(spill_->Flush());
  if (spill_file_id_ >= 0) return reader_->Refresh(spill_file_id_);
  PINSTREAM_RETURN_IF_ERROR(Reader()->Open(spill_->path(), &spill_file_id_));
  disk_files_.push_back(spill_file_id_);
  return Status::Ok();
}

Status TorchRuntime::SpillBytes(const uint8_t* bytes, uint64_t size, std::vector<DiskExtent>* extents) {
  PINSTREAM_RETURN_IF_ERROR(MakeSpill());
  uint64_t at = 0;
  PINSTREAM_RETURN_IF_ERROR(spill_->Append(bytes, size, &at));
  extents->clear();
  if (size > 0) extents->push_back(DiskExtent{-1, at, size, 0});
  return Status::Ok();
}

bool TorchRuntime::SourceExtents(const BlockTensors& info, const std::function<at::Tensor(size_t)>& value,
                                 std::vector<DiskExtent>* extents, std::string* why) {
  if (info.source.size() != info.tensors.size() || info.tensors.empty()) return false;
  std::vector<DiskExtent> out;
  for (size_t k = 0; k < info.tensors.size(); ++k) {
    const PackedTensor& pt = info.tensors[k];
    const auto& [index, offset] = info.source[k];
    if (index < 0) return false;
    // the file holds a tensor's bytes row-major
    if (pt.strides != PackedStrides(pt.param, /*contiguous=*/true)) return false;
    const std::string& path = source_paths_[static_cast<size_t>(index)];
    auto it = source_ids_.find(path);
    if (it == source_ids_.end()) {
      int id = -1;
      Status opened = Reader()->Open(path, &id);
      if (!opened.ok()) {
        *why = opened.message();
        source_ids_[path] = -1;
        return false;
      }
      it = source_ids_.emplace(path, id).first;
      disk_files_.push_back(id);
    }
    if (it->second < 0) return false;
    out.push_back(DiskExtent{it->second, Uint(offset), Uint(pt.nbytes), Uint(pt.offset)});
  }
  // the file's bytes against the values: read a batch of tensors at a time, all of a
  // batch in flight (one at a time, small tensors would wait on the disk's latency each)
  constexpr int64_t kBatchBytes = 64LL << 20;
  at::Tensor scratch;
  for (size_t first = 0; first < out.size();) {
    size_t last = first;
    int64_t bytes = 0;
    std::vector<DiskReader::Range> ranges;
    while (last < out.size() && (last == first || bytes + Int(out[last].bytes) <= kBatchBytes)) {
      bytes += Int(out[last].bytes);
      ++last;
    }
    if (!scratch.defined() || scratch.numel() < bytes) {
      scratch = at::empty({bytes}, at::TensorOptions().dtype(at::kByte));
    }
    auto* base = scratch.data_ptr<uint8_t>();
    int64_t pos = 0;
    for (size_t k = first; k < last; ++k) {
      if (out[k].bytes > 0)
        ranges.push_back(DiskReader::Range{out[k].file, out[k].file_offset, out[k].bytes, base + pos});
      pos += Int(out[k].bytes);
    }
    Status read = Status::Ok();
    if (!ranges.empty()) {
      uint64_t ticket = 0;
      read = reader_->SubmitMany(ranges, &ticket);
      if (read.ok()) read = reader_->Wait(ticket);
    }
    if (!read.ok()) {
      *why = read.message();
      return false;
    }
    pos = 0;
    for (size_t k = first; k < last; ++k) {
      const PackedTensor& pt = info.tensors[k];
      if (pt.nbytes > 0 && std::memcmp(base + pos, value(k).data_ptr(), static_cast<size_t>(pt.nbytes)) != 0) {
        *why = (pt.name.empty() ? std::string("a weight") : pt.name) + " differs from " +
               source_paths_[static_cast<size_t>(info.source[k].first)] + " (converted or patched since it was read)";
        return false;
      }
      pos += Int(pt.nbytes);
    }
    first = last;
  }
  *extents = std::move(out);
  return true;
}

void TorchRuntime::UseReaderLocked(int64_t pinned_now, int64_t ring) {
  if (disk_reader_used_) return;
  ThrowIfError(core_->UseDiskReader(Reader(), read_ahead_, pin_cap_bytes_ < 0 || pinned_now + ring <= pin_cap_bytes_));
  disk_reader_used_ = true;
}

uint64_t TorchRuntime::HeldBytes(const BlockTensors& info) {
  if (info.exact) return info.transfer_bytes;
  return Uint(info.bytes) + (info.fp8 ? info.transfer_bytes : 0);
}

void TorchRuntime::ReleaseChunkLocked(int c) {
  if (c < 0) return;
  for (const BlockTensors& b : blocks_) {
    if (b.chunk == c) return;
  }
  Chunk& chunk = chunks_[static_cast<size_t>(c)];
  if (!chunk.bytes.defined()) return;
  CountHostLocked(-chunk.bytes.numel(), chunk.pinned);
  chunk = Chunk();  // its memory goes with the last view of it
}

void TorchRuntime::ToDiskLocked(int block) {
  BlockTensors& info = blocks_[static_cast<size_t>(block)];
  const uint64_t size = info.exact ? info.transfer_bytes : Uint(info.bytes);
  const auto* bytes = static_cast<const uint8_t*>(core_->host(block));
  const int threads = std::max(1, at::get_num_threads());
  if (info.backed && ContentHash(bytes, size, threads) != info.backed_hash) info.backed = false;  // changed since
  if (!info.backed) {
    // a copy on disk first: the model's own file where it has these bytes, else the spill file
    std::string why;
    std::vector<DiskExtent> extents;
    const bool source = !info.exact && SourceExtents(
                                           info, [&](size_t k) { return info.tensors[k].host_view; }, &extents, &why);
    if (!source) {
      ThrowIfError(SpillBytes(bytes, size, &extents));
      ThrowIfError(SpillWritten());
      for (DiskExtent& e : extents) e.file = spill_file_id_;
    }
    info.extents = std::move(extents);
    info.backed = true;
  }
  UseReaderLocked(pinned_bytes_, Int(ReadRingBytes(size, true, core_->plan().prefetch(), read_ahead_)));
  ThrowIfError(core_->SetDiskSource(block, info.extents));
  info.disk = true;
  info.disk_bytes = size;
  for (PackedTensor& pt : info.tensors) {
    pt.host_view = CodedPlaceholder(pt.param.scalar_type(), pt.param.sizes(), pt.strides, pt.inference);
    if (!info.on_device()) pt.param.set_data(pt.host_view);
  }
  const bool pinned = info.pinned;
  info.pinned = false;
  if (info.exact) {  // a transfer buffer is counted by itself
    CountHostLocked(-Int(size), pinned);
    transfer_buffers_[static_cast<size_t>(info.transfer_buffer)].reset();
    info.transfer_buffer = -1;
    info.transfer = nullptr;
    return;
  }
  const int c = info.chunk;  // counted by its chunk, which goes with its last unit
  info.chunk = -1;
  ReleaseChunkLocked(c);
}

TorchRuntime::OwnBuffer TorchRuntime::NewOwnBufferLocked(int block) {
  const BlockTensors& info = blocks_[static_cast<size_t>(block)];
  // a coded unit comes here only from disk (in RAM it has a buffer of its own already)
  const uint64_t size = info.exact ? info.disk_bytes : Uint(info.bytes);
  const int64_t ring = Int(core_->read_ring_bytes(/*pinned_only=*/true));
  const bool pin = pin_cap_bytes_ < 0 || pinned_bytes_ + ring + Int(size) <= pin_cap_bytes_;
  std::unique_ptr<HostBuffer> buf;
  ThrowIfError(engine_->AllocateHostBuffer(std::max<uint64_t>(size, 1), pin, &buf));
  pin_how_.insert(buf->how());
  OwnBuffer out;
  out.pinned = buf->pinned();
  out.data = static_cast<uint8_t*>(buf->data());
  out.size = size;
  out.owner = std::make_shared<AccountedBuffer>(std::move(buf), Int(size), live_host_bytes_);
  return out;
}

void TorchRuntime::CountHostLocked(int64_t bytes, bool pinned) {
  host_bytes_ += bytes;
  (pinned ? pinned_bytes_ : pageable_bytes_) += bytes;
}

void TorchRuntime::AdoptOwnBufferLocked(int block, const OwnBuffer& buf) {
  BlockTensors& info = blocks_[static_cast<size_t>(block)];
  const int old_chunk = info.chunk;
  if (info.exact) {
    info.transfer_buffer = static_cast<int>(transfer_buffers_.size());
    transfer_buffers_.push_back(buf.owner);
    info.transfer = buf.data;
    info.transfer_bytes = buf.size;
  } else {
    std::shared_ptr<AccountedBuffer> owner = buf.owner;
    at::Tensor chunk = at::from_blob(
        buf.data, {Int(buf.size)}, [owner](void*) mutable { owner.reset(); }, at::TensorOptions().dtype(at::kByte));
    info.chunk = static_cast<int>(chunks_.size());
    for (PackedTensor& pt : info.tensors) {
      pt.host_view = AliasOf(pt, chunk, pt.offset);
      if (!info.on_device()) pt.param.set_data(pt.host_view);
    }
    chunks_.push_back(Chunk{chunk, buf.pinned});
  }
  info.pinned = buf.pinned;
  if (info.disk) {
    info.disk = false;
    info.backed = true;  // what it was read from is still there
    info.backed_hash = ContentHash(buf.data, buf.size, std::max(1, at::get_num_threads()));
  }
  ReleaseChunkLocked(old_chunk);
}

void TorchRuntime::ToOwnBufferLocked(int block, const std::function<void(uint8_t*)>& fill) {
  const OwnBuffer buf = NewOwnBufferLocked(block);
  fill(buf.data);
  ThrowIfError(core_->AttachHost(block, buf.data));
  CountHostLocked(Int(buf.size), buf.pinned);
  AdoptOwnBufferLocked(block, buf);
}

void TorchRuntime::SettleArrivalsLocked(bool finish) {
  if (arrivals_.empty()) return;
  Status s = finish && !core_->in_pass() ? core_->FinishArrivals() : Status::Ok();
  for (auto it = arrivals_.begin(); it != arrivals_.end();) {
    const auto& [block, buf] = *it;
    if (!core_->on_disk(block)) {
      AdoptOwnBufferLocked(block, buf);
    } else if (!core_->arriving(block)) {
      // its read failed: it stays on disk, and its buffer goes
      CountHostLocked(-Int(buf.size), buf.pinned);
      if (s.ok()) s = core_->TakeArrivalError();
    } else {
      ++it;  // still to be read
      continue;
    }
    it = arrivals_.erase(it);
  }
  if (!s.ok()) arrival_error_ = s.message() + "; those units stay on disk";
}

int64_t TorchRuntime::SetHostBudget(int64_t budget_bytes, std::optional<int64_t> pin_cap_bytes, bool by_timing,
                                    bool read_through) {
  std::lock_guard<std::mutex> lock(mu_);
  CheckOpen();
  if (pin_cap_bytes) pin_cap_bytes_ = std::max<int64_t>(-1, *pin_cap_bytes);
  if (registering_) throw std::runtime_error("PinStream: set_host_budget while blocks are being registered");
  if (core_->in_pass()) throw std::runtime_error("PinStream: set_host_budget during a pass; call it between passes");
  DeviceScope scope(alloc_device_);
  SettleArrivalsLocked(/*finish=*/true);
  const size_t n = blocks_.size();
  std::vector<DiskPlanUnit> units(n);
  for (size_t b = 0; b < n; ++b) {
    const BlockTensors& info = blocks_[b];
    const int id = static_cast<int>(b);
    units[b].host_bytes = info.disk ? info.disk_bytes : HeldBytes(info);
    units[b].movable = info.streamable && !info.fp8;
    units[b].resident = core_->planned() && (core_->resident(id) || core_->coded(id));
    units[b].compute = static_cast<double>(info.bytes);  // in proportion to its weights until timed
  }
  // The disk units spread over the compute as timed (once every streamed unit was) when
  // it is spread unlike the bytes: the share of the compute done by each point of the
  // order differs from the share of the bytes by more than a fifth, and a block computes
  // for 0.2 ms on average (shorter times are mostly the overheads of a call). Timing
  // noise on blocks alike stays below that, and moves nothing.
  if (by_timing) {
    double bytes_all = 0, ms_all = 0;
    int count = 0;
    bool timed = true;
    for (size_t b = 0; b < n; ++b) {
      if (!units[b].movable || units[b].resident) continue;
      const double ms = core_->compute_ms(static_cast<int>(b));
      timed = timed && ms > 0;
      bytes_all += static_cast<double>(blocks_[b].bytes);
      ms_all += ms;
      ++count;
    }
    timed = timed && count > 1 && ms_all / count >= 0.2;
    double far = 0, bytes_sum = 0, ms_sum = 0;
    for (size_t b = 0; timed && b < n; ++b) {
      if (!units[b].movable || units[b].resident) continue;
      bytes_sum += static_cast<double>(blocks_[b].bytes);
      ms_sum += core_->compute_ms(static_cast<int>(b));
      far = std::max(far, std::abs(ms_sum / ms_all - bytes_sum / bytes_all));
    }
    if (timed && bytes_all > 0 && far > 0.2) {
      placement_compute_.assign(n, 0.0);
      for (size_t b = 0; b < n; ++b) placement_compute_[b] = std::max(0.0, core_->compute_ms(static_cast<int>(b)));
    }
  }
  if (placement_compute_.size() == n) {
    for (size_t b = 0; b < n; ++b) units[b].compute = placement_compute_[b];
  }
  const uint64_t budget = budget_bytes < 0 ? PlanRequest::kUnlimited : Uint(budget_bytes);
  const std::vector<bool> disk = ChooseDiskUnits(units, 0, budget, &disk_over_bytes_);
  host_budget_bytes_ = budget_bytes;
  // out first (their memory goes before new memory is taken), then the units that
  // shared a chunk with them move to buffers of their own (so the chunk goes), then in
  std::vector<int> left_chunks;
  for (size_t b = 0; b < n; ++b) {
    if (!disk[b] || blocks_[b].disk) continue;
    if (blocks_[b].chunk >= 0) left_chunks.push_back(blocks_[b].chunk);
    try {
      ToDiskLocked(static_cast<int>(b));
    } catch (const std::exception& e) {
      // a full disk: this unit and the rest stay in host memory
      spill_error_ = std::string(e.what()) + "; units meant for disk stay in RAM";
      break;
    }
  }
  for (int c : left_chunks) {
    for (size_t b = 0; b < n; ++b) {
      if (blocks_[b].chunk != c || blocks_[b].disk) continue;
      const auto* from = static_cast<const uint8_t*>(core_->host(static_cast<int>(b)));
      const uint64_t size = Uint(blocks_[b].bytes);
      ToOwnBufferLocked(static_cast<int>(b), [&](uint8_t* to) { std::memcpy(to, from, size); });
    }
  }
  for (size_t b = 0; b < n; ++b) {
    if (disk[b] || !blocks_[b].disk) continue;
    const BlockTensors& info = blocks_[b];
    const int id = static_cast<int>(b);
    if (!read_through) {
      ToOwnBufferLocked(id, [&](uint8_t* to) { ReadExtentsLocked(info, 0, info.disk_bytes, to); });
      continue;
    }
    // read by the next pass into its buffer (counted from now: its memory is taken)
    const OwnBuffer buf = NewOwnBufferLocked(id);
    ThrowIfError(core_->ReadInto(id, buf.data));
    CountHostLocked(Int(buf.size), buf.pinned);
    if (core_->on_disk(id)) {
      arrivals_.emplace(id, buf);
    } else {
      AdoptOwnBufferLocked(id, buf);  // it was in a read ring buffer: copied
    }
  }
  return host_bytes_;
}

at::Tensor TorchRuntime::ReadDiskLocked(const BlockTensors& info, uint64_t lo, uint64_t hi) {
  // uninitialized: pages outside [lo, hi) are never written, so never committed
  at::Tensor buf = at::empty({Int(std::max<uint64_t>(info.disk_bytes, 1))}, at::TensorOptions().dtype(at::kByte));
  ReadExtentsLocked(info, lo, hi, buf.data_ptr<uint8_t>());
  return buf;
}

void TorchRuntime::ReadExtentsLocked(const BlockTensors& info, uint64_t lo, uint64_t hi, uint8_t* to) {
  std::vector<DiskReader::Range> ranges;
  for (const DiskExtent& e : info.extents) {
    const uint64_t a = std::max(lo, e.block_offset), z = std::min(hi, e.block_offset + e.bytes);
    if (z <= a) continue;
    ranges.push_back(DiskReader::Range{e.file, e.file_offset + (a - e.block_offset), z - a, to + a});
  }
  uint64_t ticket = 0;
  ThrowIfError(Reader()->SubmitMany(ranges, &ticket));
  ThrowIfError(reader_->Wait(ticket));
}

void TorchRuntime::CheckDiskFilesLocked() {
  for (int file : disk_files_) ThrowIfError(reader_->Check(file));
}

void TorchRuntime::WriteHostValues(int block, const std::vector<std::pair<int, at::Tensor>>& values) {
  std::lock_guard<std::mutex> lock(mu_);
  CheckOpen();
  CheckId(block);
  DeviceScope scope(alloc_device_);
  SettleArrivalsLocked(/*finish=*/true);  // a unit read through a pass has its bytes as they are now
  if (core_->loaded()) UnloadLocked();    // the next load uploads the new values
  BlockTensors& info = blocks_[block];
  for (const auto& kv : values) {
    if (kv.first < 0 || kv.first >= static_cast<int>(info.tensors.size())) {
      throw std::out_of_range("PinStream: tensor " + std::to_string(kv.first) + " of block " + std::to_string(block) +
                              " out of range [0, " + std::to_string(info.tensors.size()) + ")");
    }
    const PackedTensor& pt = info.tensors[static_cast<size_t>(kv.first)];
    if (kv.second.sizes() != pt.host_view.sizes() || kv.second.scalar_type() != pt.host_view.scalar_type()) {
      throw std::invalid_argument("PinStream: new values for " + (pt.name.empty() ? std::string("a weight") : pt.name) +
                                  " must have its shape " + c10::str(pt.host_view.sizes()) + " and dtype " +
                                  std::string(c10::toString(pt.host_view.scalar_type())));
    }
  }
  if (info.disk && !info.exact) {
    // its bytes in the spill file are rewritten in place (same layout, same size)
    at::Tensor bytes = ReadDiskLocked(info, 0, info.disk_bytes);
    for (const auto& kv : values) {
      const PackedTensor& pt = info.tensors[static_cast<size_t>(kv.first)];
      AliasOf(pt, bytes, pt.offset).copy_(kv.second);
    }
    // a unit in the spill file is rewritten in place; one read from the model's own
    // file moves to the spill file (the model's file is never written)
    const bool in_spill = info.extents.size() == 1 && spill_file_id_ >= 0 && info.extents[0].file == spill_file_id_;
    if (in_spill) {
      ThrowIfError(spill_->WriteAt(bytes.data_ptr<uint8_t>(), info.disk_bytes, info.extents[0].file_offset));
      ThrowIfError(SpillWritten());
    } else if (info.disk_bytes > 0) {
      uint64_t at = 0;
      ThrowIfError(MakeSpill());
      ThrowIfError(spill_->Append(bytes.data_ptr<uint8_t>(), info.disk_bytes, &at));
      ThrowIfError(SpillWritten());
      info.extents = {DiskExtent{spill_file_id_, at, info.disk_bytes, 0}};
      ThrowIfError(core_->SetDiskSource(block, info.extents));
    }
    return;
  }
  info.backed = false;  // its copy on disk (if any) has the old values
  if (!info.exact) {
    for (const auto& kv : values) info.tensors[static_cast<size_t>(kv.first)].host_view.copy_(kv.second);
    return;
  }
  // A coded block is coded again as a whole: its new transfer bytes replace the old.
  const int threads = std::max(1, at::get_num_threads());
  std::vector<at::Tensor> now(info.tensors.size());
  at::Tensor stored;  // a disk block's transfer bytes
  if (info.disk) stored = ReadDiskLocked(info, 0, info.disk_bytes);
  for (size_t k = 0; k < info.tensors.size(); ++k) {
    now[k] = info.disk ? info.ValueFrom(k, stored.data_ptr<uint8_t>(), threads) : info.HostValue(k, threads);
  }
  for (const auto& kv : values) now[static_cast<size_t>(kv.first)].copy_(kv.second);
  std::vector<std::unique_ptr<ExactCode>> codes;
  std::vector<ExactTensor> exact;
  for (size_t k = 0; k < info.tensors.size(); ++k) {
    const PackedTensor& pt = info.tensors[k];
    std::unique_ptr<ExactCode> code;
    if (info.transform->jobs[k].kind == TransformJob::Kind::kDecodeExact) {
      code = std::make_unique<ExactCode>();
      ThrowIfError(AnalyzeExact(now[k].data_ptr(), static_cast<int>(pt.param.element_size()), pt.param.numel(), threads,
                                code.get()));
      if (!code->pays()) code.reset();  // stays a tensor as stored from now on
    }
    exact.push_back(ExactTensor{static_cast<uint64_t>(pt.offset), static_cast<uint64_t>(pt.nbytes), code.get()});
    codes.push_back(std::move(code));
  }
  auto transform = std::make_unique<BlockTransform>();
  const uint64_t bytes = MakeExactTransform(exact, transform.get());
  auto replace_transform = [&]() {
    const BlockTransform* old = info.transform;
    for (auto& t : transforms_) {
      if (t.get() == old) {
        t = std::move(transform);
        info.transform = t.get();
        break;
      }
    }
  };
  if (info.disk) {
    // coded again into a scratch buffer, appended to the spill file (the old
    // bytes there are left unused)
    at::Tensor out = at::empty({Int(std::max<uint64_t>(bytes, 1))}, at::TensorOptions().dtype(at::kByte));
    for (size_t k = 0; k < info.tensors.size(); ++k) {
      ThrowIfError(
          EncodeExactTensor(now[k].data_ptr(), exact[k], transform->jobs[k], out.data_ptr<uint8_t>(), threads));
    }
    uint64_t at = 0;
    ThrowIfError(spill_->Append(out.data_ptr<uint8_t>(), bytes, &at));
    ThrowIfError(SpillWritten());
    ThrowIfError(core_->ReplaceTransfer(block, nullptr, bytes, transform.get()));
    std::vector<DiskExtent> extents;
    if (bytes > 0) extents.push_back(DiskExtent{spill_file_id_, at, bytes, 0});
    ThrowIfError(core_->SetDiskSource(block, extents));
    info.extents = extents;
    info.disk_bytes = bytes;
    info.transfer_bytes = bytes;
    replace_transform();
    return;
  }
  const bool pin = info.pinned;
  std::unique_ptr<HostBuffer> tbuf;
  ThrowIfError(engine_->AllocateHostBuffer(std::max<uint64_t>(bytes, 1), pin, &tbuf));
  auto buffer = std::make_shared<AccountedBuffer>(std::move(tbuf), Int(bytes), live_host_bytes_);
  auto* out = static_cast<uint8_t*>(buffer->get()->data());
  for (size_t k = 0; k < info.tensors.size(); ++k) {
    ThrowIfError(EncodeExactTensor(now[k].data_ptr(), exact[k], transform->jobs[k], out, threads));
  }
  ThrowIfError(core_->ReplaceTransfer(block, out, bytes, transform.get()));
  const bool was_pinned = transfer_buffers_[info.transfer_buffer]->get()->pinned();
  CountHostLocked(-Int(info.transfer_bytes), was_pinned);
  CountHostLocked(Int(bytes), buffer->get()->pinned());
  transfer_buffers_[info.transfer_buffer] = buffer;
  replace_transform();
  info.transfer = out;
  info.transfer_bytes = bytes;
  info.pinned = buffer->get()->pinned();
}

// ---- plan, load, passes ------------------------------------------------------------------

PlanInfo TorchRuntime::Plan(const std::string& policy, int64_t budget_bytes, int prefetch) {
  std::lock_guard<std::mutex> lock(mu_);
  CheckOpen();
  if (prefetch < 0) throw std::invalid_argument("PinStream: prefetch must be >= 0, got " + std::to_string(prefetch));
  const PlanPolicy p = ParsePolicy(policy);
  if (core_->loaded()) UnloadLocked();
  UseMeasuredRates();
  ThrowIfError(
      core_->Plan(p, budget_bytes < 0 ? PlanRequest::kUnlimited : static_cast<uint64_t>(budget_bytes), prefetch));
  return PlanInfoLocked();
}

PlanInfo TorchRuntime::CurrentPlan() {
  std::lock_guard<std::mutex> lock(mu_);
  CheckOpen();
  if (!core_->planned()) throw std::runtime_error("PinStream: no plan yet; call plan() first");
  return PlanInfoLocked();
}

void TorchRuntime::Load() {
  std::lock_guard<std::mutex> lock(mu_);
  CheckOpen();
  DeviceScope scope(alloc_device_);
  if (!core_->loaded()) CheckDiskFilesLocked();
  ThrowIfError(core_->Load(ComputeQueue()));
  PointResidentBlocks();
}

void TorchRuntime::Warm() {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_ || registering_ || touched_ >= 0 || core_->learner().in_pass()) return;
  DeviceScope scope(alloc_device_);
  ThrowIfError(core_->Warm());
  ApplyEvictions();  // blocks whose slot it refilled (between passes they point at the host anyway)
}

void TorchRuntime::Unload() {
  std::lock_guard<std::mutex> lock(mu_);
  CheckOpen();
  DeviceScope scope(alloc_device_);
  UnloadLocked();
}

void TorchRuntime::BeginPass() {
  std::lock_guard<std::mutex> lock(mu_);
  CheckOpen();
  DeviceScope scope(alloc_device_);
  // A pass still open (a forward interrupted by a BaseException such as
  // KeyboardInterrupt skips the hooks that end it, leaving blocks acquired):
  // end it first, as end_pass() would have.
  if (touched_ >= 0 || core_->learner().in_pass() || core_->outstanding() > 0) ThrowIfError(EndPassLocked());
  CheckPlacementLocked();
  if (!core_->loaded()) CheckDiskFilesLocked();
  ThrowIfError(core_->BeginPass(ComputeQueue()));
}

void TorchRuntime::CheckPlacement() {
  std::lock_guard<std::mutex> lock(mu_);
  CheckOpen();
  CheckPlacementLocked();
}

void TorchRuntime::CheckPlacementLocked() const {
  // Weights moved behind PinStream's back would be overwritten by its next re-pointing
  // (and whatever was patched into them lost): say so instead.
  for (const BlockTensors& info : blocks_) {
    info.CheckUnchanged();
    if (const PackedTensor* pt = info.Displaced()) {
      const std::string who = pt->name.empty() ? std::string("a weight") : pt->name;
      throw std::runtime_error(
          "PinStream: " + who + " of this model was moved (it is now on " + pt->param.device().str() +
          ") by code PinStream does not manage: module.to()/.cuda() on the model, or a ComfyUI patcher of it "
          "made before it was handed to PinStream (a clone used on another branch). PinStream places this "
          "model's weights itself: offload the model before it branches (put the PinStream node right after "
          "the loader), or detach() the handle before moving the model");
    }
  }
}

void TorchRuntime::Acquire(int block) {
  std::lock_guard<std::mutex> lock(mu_);
  CheckOpen();
  DeviceScope scope(alloc_device_);
  AcquireLocked(block);
}

void TorchRuntime::AcquireLocked(int block) {
  CheckId(block);
  const bool was_loaded = core_->loaded();
  DeviceLocation loc;
  Status s = core_->Acquire(block, ComputeQueue(), &loc);
  ApplyEvictions();
  ThrowIfError(s);
  if (!was_loaded) PointResidentBlocks();
  blocks_[block].PointAtDevice(loc, *allocator_);
}

void TorchRuntime::Release(int block, bool missing_ok) {
  std::lock_guard<std::mutex> lock(mu_);
  if (missing_ok && closed_) return;
  CheckOpen();
  DeviceScope scope(alloc_device_);
  ReleaseLocked(block, missing_ok);
}

void TorchRuntime::ReleaseLocked(int block, bool missing_ok) {
  CheckId(block);
  if (missing_ok && !core_->acquired(block)) return;
  BlockTensors& info = blocks_[block];
  if (!core_->resident(block) || info.fp8) WriteBack(&info);
  ThrowIfError(core_->Release(block, ComputeQueue()));
  // An fp8 block's device copy is an approximation: between uses its weights
  // show the exact host copy (state_dict, LoRA patching, saving).
  if (info.fp8 && !core_->acquired(block)) info.PointAtHost();
}

void TorchRuntime::Touch(int block) {
  std::lock_guard<std::mutex> lock(mu_);
  CheckOpen();
  if (touched_ == block) return;
  DeviceScope scope(alloc_device_);
  if (touched_ >= 0) {
    const int prev = touched_;
    touched_ = -1;
    ReleaseLocked(prev, /*missing_ok=*/true);
  }
  AcquireLocked(block);
  touched_ = block;
}

void TorchRuntime::ReleaseTouched(int block) {
  std::lock_guard<std::mutex> lock(mu_);
  if (touched_ != block || closed_) return;
  CheckOpen();
  DeviceScope scope(alloc_device_);
  touched_ = -1;
  ReleaseLocked(block, /*missing_ok=*/true);
}

void TorchRuntime::EndPass() {
  std::lock_guard<std::mutex> lock(mu_);
  touched_ = -1;
  if (closed_) return;
  CheckOpen();
  DeviceScope scope(alloc_device_);
  ThrowIfError(EndPassLocked());
}

// Releases the blocks still acquired and closes the pass. Between passes a
// block that is not wholly resident shows its host copy: its slot is refilled
// by later uploads, so tensors taken now (state_dict(), detach()) must not
// alias it (a split block's head too; the next acquire points it back). An
// fp8 block's device copy is an approximation: it too shows the host copy.
Status TorchRuntime::EndPassLocked() {
  touched_ = -1;
  Status s = core_->EndPass(ComputeQueue());
  ApplyEvictions();
  SettleArrivalsLocked(/*finish=*/true);
  for (int i = 0; i < static_cast<int>(blocks_.size()); ++i) {
    BlockTensors& info = blocks_[i];
    if (!info.on_device() || core_->acquired(i)) continue;
    if (info.fp8 || !core_->resident(i)) {
      WriteBack(&info);  // blocks the pass left acquired were not released here
      info.PointAtHost();
    }
  }
  return s;
}

void TorchRuntime::Synchronize() {
  std::lock_guard<std::mutex> lock(mu_);
  CheckOpen();
  DeviceScope scope(alloc_device_);
  ThrowIfError(core_->Synchronize());
}

void TorchRuntime::WriteBack(BlockTensors* info) {
  if (!info->WriteBackIfModified()) return;
  ++writebacks_;
  info->backed = false;  // its copy on disk has the old values
}

void TorchRuntime::ApplyEvictions() {
  core_->TakeEvicted(&evicted_);
  for (int b : evicted_) blocks_[b].PointAtHost();
}

void TorchRuntime::PointResidentBlocks() {
  for (int i = 0; i < static_cast<int>(blocks_.size()); ++i) {
    // fp8 blocks point at their device copy only while acquired.
    if (core_->resident(i) && !blocks_[i].fp8) blocks_[i].PointAtDevice(core_->resident_location(i), *allocator_);
  }
}

void TorchRuntime::UseMeasuredRates() {
  // Tiny timings say more about launch overheads than about rates: only from
  // 256 MiB of uploads and 64 MiB of transforms on.
  const Stats st = core_->GetStats(false);
  const bool link = st.timed_upload_bytes >= (256ULL << 20) && st.upload_ms > 0;
  const bool xform = st.transform_bytes >= (64ULL << 20) && st.transform_ms > 0;
  core_->SetRates(link ? static_cast<double>(st.timed_upload_bytes) / (st.upload_ms * 1e-3) : 0,
                  xform ? static_cast<double>(st.transform_bytes) / (st.transform_ms * 1e-3) : 0);
  rates_measured_ = link && xform;
}

void TorchRuntime::UnloadLocked() {
  touched_ = -1;
  SettleArrivalsLocked(/*finish=*/true);
  if (!core_->loaded()) return;
  // Before anything changes: pointing a converted tensor back at its host copy
  // would silently undo the conversion.
  for (const BlockTensors& info : blocks_) {
    if (info.on_device()) info.CheckUnchanged();
  }
  SyncCompute();
  for (BlockTensors& info : blocks_) {
    WriteBack(&info);
    info.PointAtHost();
    info.ClearViews();
  }
  ThrowIfError(core_->Unload());
  ApplyEvictions();
}

// ---- stats and close ------------------------------------------------------------------------

PlanInfo TorchRuntime::PlanInfoLocked() const {
  const ResidencyPlan& p = core_->plan();
  PlanInfo d;
  d.policy = PlanPolicyName(p.policy());
  d.prefetch = p.prefetch();
  d.num_blocks = core_->num_blocks();
  d.resident_blocks = p.num_resident();
  d.streamed_blocks = p.num_streamed() - p.num_coded();
  d.split_blocks = p.num_split();
  d.coded_blocks = p.num_coded();
  d.coded_block_bytes = p.coded_block_bytes();
  d.staging_bytes = p.staging_bytes();
  d.copy_ms_per_pass = p.copy_seconds_per_pass() * 1e3;
  d.link_gbps = p.link_rate() / 1e9;
  d.transform_gbps = p.transform_rate() / 1e9;
  d.rates_measured = rates_measured_;
  for (int i = 0; i < core_->num_blocks(); ++i) d.split_bytes.push_back(core_->planned() ? core_->split_bytes(i) : 0);
  d.slot_count = p.slot_count();
  d.slot_bytes = p.slot_bytes();
  d.fixed_bytes = p.fixed_bytes();
  d.resident_block_bytes = p.resident_block_bytes();
  d.streamed_block_bytes = p.streamed_block_bytes();
  d.device_bytes = p.device_bytes();
  d.describe = p.Describe();
  return d;
}

TorchRuntime::Pace TorchRuntime::GetPace() {
  std::lock_guard<std::mutex> lock(mu_);
  Pace p;
  if (closed_ || registering_) return p;
  DeviceScope scope(alloc_device_);
  SettleArrivalsLocked(/*finish=*/false);
  const Stats s = core_->GetStats(/*wait=*/false);
  p.disk_bytes = s.disk_bytes;
  p.compute_ms = s.compute_ms;
  p.disk_wait_ms = s.disk_wait_ms;
  p.disk_gbps = DiskGbps(s);
  p.passes = s.passes;
  p.host_budget_bytes = host_budget_bytes_;
  for (const BlockTensors& b : blocks_) p.disk_block_bytes += b.disk ? b.disk_bytes : 0;
  return p;
}

RuntimeStats TorchRuntime::GetStats() {
  std::lock_guard<std::mutex> lock(mu_);
  RuntimeStats d;
  d.engine = engine_->name();
  d.device = device_.str();
  d.closed = closed_;
  if (!closed_ && !registering_) {
    DeviceScope scope(alloc_device_);
    SettleArrivalsLocked(/*finish=*/false);  // the units that arrived show it
    d.core = core_->GetStats(/*wait=*/true);
  }
  d.writebacks = writebacks_;
  for (const BlockTensors& b : blocks_) {
    d.block_pinned.push_back(b.pinned);
    if (b.exact) {
      ++d.exact_blocks;
      for (const PackedTensor& pt : b.tensors) d.exact_plain_bytes += static_cast<uint64_t>(pt.nbytes);
      d.exact_transfer_bytes += b.transfer_bytes;
    }
    if (!b.fp8) continue;
    ++d.fp8_blocks;
    d.fp8_error.Merge(b.fp8_error);
    d.fp8_block_error.push_back(b.fp8_error);
  }
  d.device_bytes = allocator_->allocated_bytes();
  d.peak_device_bytes = allocator_->peak_bytes();
  d.host_bytes = host_bytes_;
  d.pinned_bytes =
      pinned_bytes_ + (closed_ ? 0 : Int(core_->read_ring_bytes(/*pinned_only=*/true)));  // the read ring is pinned too
  d.pageable_bytes = pageable_bytes_;
  d.live_host_bytes = live_host_bytes_->load();
  d.exact_coded_tensors = exact_coded_tensors_;
  d.exact_stored_tensors = exact_stored_tensors_;
  d.exact_skips.assign(exact_skips_.begin(), exact_skips_.end());
  d.cache_dir = cache_->dir();
  d.cache_hits = cache_->hits();
  d.cache_misses = cache_->misses();
  d.cache_stored = cache_->stored();
  d.cache_rebuilt = cache_->rebuilt();
  d.cache_error = cache_->first_error();
  d.host_budget_bytes = host_budget_bytes_;
  for (int i = 0; !closed_ && i < core_->num_blocks(); ++i) d.block_compute_ms.push_back(core_->compute_ms(i));
  for (const BlockTensors& b : blocks_) {
    d.block_on_disk.push_back(b.disk);
    d.block_arriving.push_back(arrivals_.count(static_cast<int>(&b - blocks_.data())) > 0);
    if (!b.disk) continue;
    ++d.disk_blocks;
    d.disk_block_bytes += b.disk_bytes;
    // read from the model's own file, not the spill file
    if (!b.extents.empty() && (spill_file_id_ < 0 || b.extents[0].file != spill_file_id_)) {
      d.source_block_bytes += b.disk_bytes;
    }
  }
  d.disk_over_bytes = disk_over_bytes_;
  d.spill_error = spill_error_;
  d.arrival_error = arrival_error_;
  d.source_note = source_note_;
  if (spill_) {
    d.spill_path = spill_->path();
    d.spill_bytes = spill_->size();
  }
  if (reader_ && spill_file_id_ >= 0) d.disk_how = reader_->how(spill_file_id_);
  if (!closed_) d.read_ring_bytes = core_->read_ring_bytes();
  d.pin_how.assign(pin_how_.begin(), pin_how_.end());
  std::sort(d.pin_how.begin(), d.pin_how.end());
  d.loaded = !closed_ && core_->loaded();
  d.planned = !closed_ && core_->planned();
  if (d.planned) d.plan = PlanInfoLocked();
  return d;
}

void TorchRuntime::ResetStats() {
  std::lock_guard<std::mutex> lock(mu_);
  if (closed_ || registering_) return;
  core_->ResetStats();
  allocator_->ResetPeak();
  writebacks_ = 0;
}

void TorchRuntime::Close(bool restore_pageable) {
  std::lock_guard<std::mutex> lock(mu_);
  if (registering_) CheckOpen();  // throws: a registration is running
  DeviceScope scope(alloc_device_);
  CloseLocked(restore_pageable);
}

void TorchRuntime::CloseLocked(bool restore_pageable) {
  if (closed_) return;
  std::string lost;  // why blocks on disk could not be read back
  int lost_blocks = 0;
  touched_ = -1;
  if (core_->loaded()) {
    SyncCompute();
    core_->EndPass(ComputeQueue());
  }
  SettleArrivalsLocked(/*finish=*/true);  // what arrived is restored from its host copy, the rest from disk
  if (core_->loaded()) {
    for (BlockTensors& info : blocks_) {
      WriteBack(&info);
      info.PointAtHost();
      info.ClearViews();
    }
  }
  core_->Close();
  // Chunk by chunk: each host chunk goes as soon as its blocks' weights have memory of
  // their own again, so restoring holds one chunk more than the model, not two copies.
  for (size_t i = 0; i < blocks_.size(); ++i) {
    if (blocks_[i].disk && restore_pageable) {
      // the weights get their values back from the spill file; a file damaged
      // since leaves them at the placeholder, and the close goes on
      try {
        at::Tensor bytes = ReadDiskLocked(blocks_[i], 0, blocks_[i].disk_bytes);
        blocks_[i].Detach(true, bytes.data_ptr<uint8_t>());
      } catch (const std::exception& e) {
        if (lost.empty()) lost = e.what();
        ++lost_blocks;
        blocks_[i].Detach(false);
      }
      continue;
    }
    blocks_[i].Detach(restore_pageable);
    const int c = blocks_[i].chunk;
    if (c >= 0 && (i + 1 == blocks_.size() || blocks_[i + 1].chunk != c)) chunks_[c] = Chunk();
  }
  blocks_.clear();
  chunks_.clear();
  transfer_buffers_.clear();
  arrivals_.clear();  // buffers of units that had not arrived (their reads ended with the core)
  // the spill file goes (its disk space comes back) and with the reader its descriptors
  reader_.reset();
  spill_.reset();
  spill_file_id_ = -1;
  source_ids_.clear();
  disk_files_.clear();
  transforms_.clear();
  seen_.clear();
  closed_ = true;
#if defined(__GLIBC__)
  malloc_trim(0);  // hand freed heap pages back: RSS returns to its baseline
#endif
  if (!lost.empty()) {
    throw std::runtime_error("PinStream: closed, but the weights of " + std::to_string(lost_blocks) +
                             " block(s) on disk could not be read back (" + lost +
                             "); they are not usable: load the model again from its file");
  }
}

// ---- small accessors and fault injection -----------------------------------------------

void TorchRuntime::FailNextCopies(int count) { HostOnly("fail_next_copies")->FailNextCopies(count); }
void TorchRuntime::DelayNextCopies(int count, int us) { HostOnly("delay_next_copies")->DelayNextCopies(count, us); }
void TorchRuntime::FailNextSpillWrites(int count) {
  std::lock_guard<std::mutex> lock(mu_);
  fail_spill_writes_ = count;
  if (spill_) spill_->FailNextWrites(count);
}
void TorchRuntime::FailNextDiskReads(int count) {
  std::lock_guard<std::mutex> lock(mu_);
  Reader()->FailNextReads(count);
}
void TorchRuntime::FailNextHostAllocations(int count) {
  HostOnly("fail_next_host_allocations")->FailNextHostAllocations(count);
}

void TorchRuntime::SetDeviceCapacity(int64_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  allocator_->set_capacity(static_cast<uint64_t>(std::max<int64_t>(bytes, 0)));
}

int TorchRuntime::num_blocks() {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(blocks_.size());
}
int64_t TorchRuntime::device_bytes() {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(allocator_->allocated_bytes());
}
int64_t TorchRuntime::host_bytes() {
  std::lock_guard<std::mutex> lock(mu_);
  return host_bytes_;
}
int64_t TorchRuntime::ram_bytes() {
  std::lock_guard<std::mutex> lock(mu_);
  return host_bytes_ + (closed_ ? 0 : Int(core_->read_ring_bytes()));
}
int64_t TorchRuntime::pinned_bytes() {
  std::lock_guard<std::mutex> lock(mu_);
  return pinned_bytes_ + (closed_ ? 0 : Int(core_->read_ring_bytes(/*pinned_only=*/true)));
}
bool TorchRuntime::closed() {
  std::lock_guard<std::mutex> lock(mu_);
  return closed_;
}
bool TorchRuntime::loaded() {
  std::lock_guard<std::mutex> lock(mu_);
  return !closed_ && core_->loaded();
}
std::vector<int64_t> TorchRuntime::block_bytes() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<int64_t> out;
  for (const BlockTensors& b : blocks_) out.push_back(b.bytes);
  return out;
}
std::vector<bool> TorchRuntime::resident_blocks() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<bool> out;
  for (int i = 0; i < static_cast<int>(blocks_.size()); ++i) out.push_back(core_->planned() && core_->resident(i));
  return out;
}

}  // namespace pinstream
