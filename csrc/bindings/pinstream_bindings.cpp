// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// pinstream._C: the only file that sees torch. A Runtime wraps the core's
// StreamingRuntime on torch tensors:
//   * register_blocks packs each block's tensors into pinned host chunks of our
//     own size (aligned offsets) and re-points the tensors there, so the
//     original host storage is released and no second copy stays alive;
//   * device memory for slots and resident blocks comes from torch's caching
//     allocator (CUDA) or plain CPU tensors (host engine), so the framework's
//     memory accounting sees it;
//   * acquire/release re-point a block's tensors at its device copy with
//     set_data (no Python per parameter), blocking calls release the GIL.
#include <torch/extension.h>

#include <sys/mman.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <cstring>
#include <vector>

#include "core/streaming_runtime.h"
#include "host/host_copy_engine.h"
#ifdef PINSTREAM_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "cuda/cuda_copy_engine.h"
#endif

namespace py = pybind11;

namespace pinstream {
namespace {

constexpr int64_t kTensorAlign = 64;    // every tensor starts 64-byte aligned
constexpr int64_t kBlockAlign = 512;    // blocks and device allocations

int64_t Align(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

// A block's packed layout in its host chunk and on the device: each tensor at
// a kTensorAlign offset, in order; returns the block's bytes (kBlockAlign).
int64_t PackLayout(const std::vector<int64_t>& nbytes, std::vector<int64_t>* offsets) {
  int64_t off = 0;
  offsets->clear();
  for (int64_t n : nbytes) {
    off = Align(off, kTensorAlign);
    offsets->push_back(off);
    off += n;
  }
  return Align(std::max<int64_t>(off, 1), kBlockAlign);
}

// Where a budget plan may cut a packed block: its tensor starts inside it.
std::vector<uint64_t> CutsOf(const std::vector<int64_t>& offsets, int64_t bytes) {
  std::vector<uint64_t> cuts;
  for (int64_t o : offsets) {
    if (o > 0 && o < bytes && (cuts.empty() || static_cast<uint64_t>(o) > cuts.back())) {
      cuts.push_back(static_cast<uint64_t>(o));
    }
  }
  return cuts;
}

// Raised for device or pinned-memory exhaustion; Python sees
// pinstream._C.OutOfMemoryError (a MemoryError). Safe to throw without the GIL.
class OutOfMemory : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Runs fn(begin, end) over [0, n) on up to torch's intra-op thread count of
// std::threads (at::parallel_for's OpenMP pragma is inert in a module built
// without -fopenmp). Items are handed out one at a time from a counter.
template <typename Fn>
void ParallelFor(int64_t n, const Fn& fn) {
  const int64_t threads = std::min<int64_t>(n, std::max(1, at::get_num_threads()));
  if (threads <= 1) {
    fn(0, n);
    return;
  }
  std::atomic<int64_t> next{0};
  auto work = [&] {
    for (int64_t k = next++; k < n; k = next++) fn(k, k + 1);
  };
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads - 1));
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
}

// The in-place-update counter of a weight, for write-back of weights changed on
// the device. Tensors made under torch.inference_mode() (ComfyUI runs every prompt,
// loaders included, in it) have no counter: they report 0, so they are never written
// back; PinStream's own patching (LoRA) writes into the host copy instead. Such a
// tensor keeps its disabled counter after set_data re-points it at a normal tensor
// (is_inference() is then false), so the counter itself is asked.
int64_t VersionOf(const at::Tensor& t) {
  const c10::VariableVersion& v = t.unsafeGetTensorImpl()->version_counter();
  return v.enabled() ? static_cast<int64_t>(v.current_version()) : 0;
}

// A contiguous `dtype` tensor of `sizes` over the bytes of `bytes` (a uint8
// tensor) from byte `offset` on: the form a weight is re-pointed at. set_data
// gives a weight the dispatch keys of its new data while it keeps its own version
// counter, so the alias must be of the weight's kind, whatever mode offload() or
// the forward runs in: an inference tensor for a weight made under
// torch.inference_mode() (no version counter; a normal alias would leave it a
// normal tensor without one, which torch's ops reject), a normal one otherwise.
at::Tensor AliasAs(const at::Tensor& bytes, int64_t offset, at::ScalarType dtype, at::IntArrayRef sizes,
                   bool inference) {
  const int64_t esize = static_cast<int64_t>(c10::elementSize(dtype));
  const int64_t start = bytes.storage_offset() + offset;
  TORCH_CHECK(start % esize == 0, "PinStream: internal error: misaligned tensor offset ", start);
  c10::InferenceMode guard(inference);
  at::Tensor t = at::empty({0}, bytes.options().dtype(dtype));
  t.set_(bytes.storage(), start / esize, sizes);
  return t;
}

bool IsInferenceWeight(const at::Tensor& t) { return !t.unsafeGetTensorImpl()->version_counter().enabled(); }

void Check(const Status& s) {
  if (s.ok()) return;
  switch (s.code()) {
    case Status::Code::kInvalidArgument:
      throw py::value_error("PinStream: " + s.message());
    case Status::Code::kOutOfMemory:
      throw OutOfMemory("PinStream: " + s.message());
    default:
      throw std::runtime_error("PinStream: " + s.ToString());
  }
}

// Process-wide accounting, so tests and the nodes can prove nothing leaks.
std::atomic<int64_t> g_live_host_bytes{0};
std::atomic<int64_t> g_live_pinned_bytes{0};
std::atomic<int64_t> g_live_device_bytes{0};
std::atomic<int64_t> g_live_runtimes{0};

// Device allocations as torch tensors (uint8, one per slot or resident block).
class TorchDeviceAllocator final : public DeviceAllocator {
 public:
  TorchDeviceAllocator(at::Device device, uint64_t capacity)
      : device_(device), capacity_(capacity) {}

  Status Allocate(uint64_t bytes, int64_t* id, void** ptr) override {
    if (capacity_ != 0 && allocated_ + bytes > capacity_) {
      return Status::OutOfMemory(FormatBytes(bytes) + " requested with " +
                                 FormatBytes(capacity_ - allocated_) + " of the " +
                                 FormatBytes(capacity_) + " device capacity free");
    }
    try {
      at::Tensor t;
      if (device_.is_cpu()) {
        // The host engine's "device": pages of our own, returned to the OS on free.
        const size_t len = bytes == 0 ? 4096 : (bytes + 4095) / 4096 * 4096;
        void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
          return Status::OutOfMemory("host arena: mmap of " + FormatBytes(bytes) + " failed");
        }
        t = torch::from_blob(p, {static_cast<int64_t>(bytes)}, [len](void* q) { munmap(q, len); },
                             at::TensorOptions().dtype(at::kByte));
      } else {
        t = at::empty({static_cast<int64_t>(bytes)},
                      at::TensorOptions().dtype(at::kByte).device(device_));
      }
      *id = next_id_++;
      *ptr = t.data_ptr();
      tensors_.emplace(*id, std::move(t));
      g_live_device_bytes += static_cast<int64_t>(bytes);
    } catch (const c10::OutOfMemoryError& e) {
      return Status::OutOfMemory("device allocation of " + FormatBytes(bytes) +
                                 " failed: " + e.what_without_backtrace());
    } catch (const c10::Error& e) {
      return Status::DeviceError(std::string("device allocation failed: ") +
                                 e.what_without_backtrace());
    }
    allocated_ += bytes;
    if (allocated_ > peak_) peak_ = allocated_;
    return Status::Ok();
  }
  void Free(int64_t id) override {
    auto it = tensors_.find(id);
    if (it == tensors_.end()) return;
    allocated_ -= static_cast<uint64_t>(it->second.numel());
    g_live_device_bytes -= it->second.numel();
    tensors_.erase(it);
  }
  uint64_t allocated_bytes() const override { return allocated_; }
  uint64_t peak_bytes() const override { return peak_; }
  void ResetPeak() override { peak_ = allocated_; }
  void set_capacity(uint64_t bytes) { capacity_ = bytes; }
  const at::Tensor& tensor(int64_t id) const { return tensors_.at(id); }

 private:
  at::Device device_;
  uint64_t capacity_;
  std::unordered_map<int64_t, at::Tensor> tensors_;
  int64_t next_id_ = 0;
  uint64_t allocated_ = 0;
  uint64_t peak_ = 0;
};

struct PackedTensor {
  at::Tensor param;       // the caller's tensor (same TensorImpl as its Parameter)
  std::string name;       // its name in the model, for error messages (may be empty)
  at::Tensor host_view;   // its bytes in the pinned chunk
  int64_t offset = 0;     // within the block
  int64_t nbytes = 0;
  int64_t version = 0;    // version when pointed at the device
  bool inference = false; // made under torch.inference_mode(): no version counter
};

struct BlockInfo {
  std::vector<PackedTensor> tensors;
  int64_t bytes = 0;
  int chunk = -1;
  int64_t chunk_offset = 0;
  bool streamable = true;
  int64_t location = -1;  // device allocation the tensors point at, -1 = host
                          // (a split block: its slot's; its head is fixed while loaded)
  bool fp8 = false;        // sent as fp8 codes + scales
  QuantError fp8_error;
  std::vector<std::pair<int64_t, std::vector<at::Tensor>>> view_cache;
};

PlanPolicy ParsePolicy(const std::string& p) {
  if (p == "all_resident") return PlanPolicy::kAllResident;
  if (p == "stream_all") return PlanPolicy::kStreamAll;
  if (p == "budget") return PlanPolicy::kBudget;
  throw py::value_error("PinStream: unknown plan policy '" + p +
                        "'; allowed: all_resident, stream_all, budget");
}

class Runtime {
 public:
  Runtime(const std::string& device, const std::string& engine, int prefetch,
          int64_t budget_bytes, double link_gbps, double latency_us,
          int random_delay_us, uint64_t seed, bool poison,
          int64_t device_capacity_bytes, const std::string& pin_mode,
          int64_t chunk_bytes, bool timing, int64_t pin_cap_bytes)
      : device_(device), prefetch_(prefetch), budget_bytes_(budget_bytes),
        chunk_bytes_(chunk_bytes), pin_cap_bytes_(pin_cap_bytes) {
    ++g_live_runtimes;
    if (prefetch < 0) {
      throw py::value_error("PinStream: prefetch must be >= 0, got " + std::to_string(prefetch));
    }
    if (chunk_bytes <= 0) {
      throw py::value_error("PinStream: chunk_bytes must be > 0");
    }
    std::string kind = engine;
    if (kind == "auto") kind = device_.is_cuda() ? "cuda" : "host";
    if (kind == "host") {
      HostEngineOptions opt;
      opt.bandwidth_bytes_per_s = link_gbps > 0 ? link_gbps * 1e9 : 0;
      opt.latency_us = latency_us;
      opt.max_random_delay_us = random_delay_us;
      opt.seed = seed;
      opt.poison = poison;
      auto* host = new HostCopyEngine(opt);
      host_engine_ = host;
      engine_.reset(host);
      alloc_device_ = at::Device(at::kCPU);
    } else if (kind == "cuda") {
#ifdef PINSTREAM_WITH_CUDA
      if (!device_.is_cuda()) {
        throw py::value_error("PinStream: engine 'cuda' needs a cuda device, got '" + device + "'");
      }
      if (!torch::cuda::is_available()) {
        throw std::runtime_error("PinStream: engine 'cuda' requested but torch sees no CUDA device; "
                                 "use engine='host' on a machine without a GPU");
      }
      if (!device_.has_index()) device_ = at::Device(at::kCUDA, 0);
      CudaEngineOptions opt;
      opt.device = device_.index();
      opt.timing = timing;
      opt.pin_mode = pin_mode == "register"  ? PinMode::kRegister
                     : pin_mode == "hostalloc" ? PinMode::kHostAlloc
                     : pin_mode == "pageable"  ? PinMode::kPageable
                                               : PinMode::kAuto;
      std::unique_ptr<CudaCopyEngine> cuda;
      Check(CudaCopyEngine::Create(opt, &cuda));
      engine_ = std::move(cuda);
      alloc_device_ = device_;
#else
      throw std::runtime_error(
          "PinStream: engine 'cuda' requested but this build has no CUDA engine "
          "(built without nvcc); rebuild with `python install.py` on a machine with "
          "the CUDA toolkit, or use engine='host'");
#endif
    } else {
      throw py::value_error("PinStream: unknown engine '" + engine +
                            "'; allowed: auto, cuda, host");
    }
    if (pin_mode != "auto" && pin_mode != "register" && pin_mode != "hostalloc" &&
        pin_mode != "pageable") {
      throw py::value_error("PinStream: unknown pin_mode '" + pin_mode +
                            "'; allowed: auto, register, hostalloc, pageable");
    }
    allocator_ = std::make_unique<TorchDeviceAllocator>(
        alloc_device_, static_cast<uint64_t>(std::max<int64_t>(device_capacity_bytes, 0)));
    core_ = std::make_unique<StreamingRuntime>(engine_.get(), allocator_.get());
  }

  ~Runtime() {
    try {
      CloseImpl(/*restore_pageable=*/true);
    } catch (...) {
    }
    --g_live_runtimes;
  }

  std::string engine_name() const { return engine_->name(); }
  std::string device_str() const { return device_.str(); }

  // Packs blocks into pinned chunks; returns their ids.
  std::vector<int> RegisterBlocks(const std::vector<std::vector<at::Tensor>>& blocks,
                                  const std::vector<bool>& streamable,
                                  const py::object& progress,
                                  const std::vector<bool>& fp8 = {},
                                  const std::vector<int>& pin_rank = {},
                                  const std::vector<std::vector<std::string>>& names = {}) {
    std::lock_guard<std::mutex> lock(mu_);
    CheckOpen();
    if (!names.empty()) {
      if (names.size() != blocks.size()) {
        throw py::value_error("PinStream: names has " + std::to_string(names.size()) + " entries for " +
                              std::to_string(blocks.size()) + " blocks");
      }
      for (size_t b = 0; b < blocks.size(); ++b) {
        if (names[b].size() != blocks[b].size()) {
          throw py::value_error("PinStream: names of block " + std::to_string(b) + " has " +
                                std::to_string(names[b].size()) + " entries for its " +
                                std::to_string(blocks[b].size()) + " tensors");
        }
      }
    }
    if (!fp8.empty() && fp8.size() != blocks.size()) {
      throw py::value_error("PinStream: fp8 has " + std::to_string(fp8.size()) + " entries for " +
                            std::to_string(blocks.size()) + " blocks");
    }
    if (!streamable.empty() && streamable.size() != blocks.size()) {
      throw py::value_error("PinStream: streamable has " + std::to_string(streamable.size()) +
                            " entries for " + std::to_string(blocks.size()) + " blocks");
    }
    if (core_->planned()) {
      throw std::runtime_error("PinStream: register blocks before plan()");
    }
    // Layout.
    std::vector<BlockInfo> infos(blocks.size());
    for (size_t b = 0; b < blocks.size(); ++b) {
      BlockInfo& info = infos[b];
      info.streamable = streamable.empty() ? true : streamable[b];
      std::vector<int64_t> nbytes;
      for (const at::Tensor& t : blocks[b]) {
        const size_t k = info.tensors.size();
        if (!t.defined()) throw py::value_error("PinStream: undefined tensor in block " + std::to_string(b));
        if (t.is_sparse() || t.layout() != at::kStrided) {
          throw py::value_error("PinStream: only dense strided tensors can be packed; block " +
                                std::to_string(b) + " has a " + c10::str(t.layout()) + " tensor");
        }
        if (t.is_quantized()) {
          throw py::value_error("PinStream: quantized torch tensors cannot be packed (block " +
                                std::to_string(b) + ")");
        }
        auto* impl = t.unsafeGetTensorImpl();
        if (!seen_.insert(impl).second) {
          throw py::value_error(
              "PinStream: a tensor appears twice (tied weights) in block " + std::to_string(b) +
              "; shared tensors must stay outside streamed blocks");
        }
        PackedTensor pt;
        pt.param = t;
        pt.inference = IsInferenceWeight(t);
        if (!names.empty()) pt.name = names[b][k];
        pt.nbytes = static_cast<int64_t>(t.numel()) * static_cast<int64_t>(t.element_size());
        nbytes.push_back(pt.nbytes);
        info.tensors.push_back(std::move(pt));
      }
      std::vector<int64_t> offsets;
      info.bytes = PackLayout(nbytes, &offsets);
      for (size_t k = 0; k < offsets.size(); ++k) info.tensors[k].offset = offsets[k];
    }
    // Chunks: consecutive blocks until the chunk size would be exceeded.
    std::vector<std::pair<size_t, size_t>> groups;  // [first, last) blocks
    std::vector<int64_t> group_bytes;
    for (size_t b = 0; b < infos.size();) {
      size_t e = b;
      int64_t sum = 0;
      while (e < infos.size() && (e == b || sum + infos[e].bytes <= chunk_bytes_)) {
        sum += infos[e].bytes;
        ++e;
      }
      groups.emplace_back(b, e);
      group_bytes.push_back(sum);
      b = e;
    }
    // Which chunks get pinned when the cap does not cover them all: the ones
    // holding the most-used blocks (lowest pin_rank: streamed blocks, uploaded
    // every pass, before resident ones, uploaded once), else registration order.
    std::vector<uint8_t> pin_chunk(groups.size(), 1);
    if (pin_cap_bytes_ >= 0) {
      std::vector<size_t> order(groups.size());
      std::vector<int> rank(groups.size(), 0);
      for (size_t g = 0; g < groups.size(); ++g) {
        order[g] = g;
        rank[g] = static_cast<int>(g);
        if (pin_rank.size() == blocks.size()) {
          rank[g] = pin_rank[groups[g].first];
          for (size_t b = groups[g].first; b < groups[g].second; ++b) rank[g] = std::min(rank[g], pin_rank[b]);
        }
      }
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return rank[a] < rank[b]; });
      int64_t budget = pin_cap_bytes_ - pinned_bytes_;
      for (size_t g : order) {
        pin_chunk[g] = group_bytes[g] <= budget;
        if (pin_chunk[g]) budget -= group_bytes[g];
      }
    }
    std::vector<int> ids;
    size_t done_blocks = 0;
    for (size_t g = 0; g < groups.size(); ++g) {
      at::Tensor chunk;
      {
        py::gil_scoped_release nogil;
        std::unique_ptr<HostBuffer> buf;
        const bool pin = pin_chunk[g] != 0;
        Check(engine_->AllocateHostBuffer(static_cast<uint64_t>(group_bytes[g]), pin, &buf));
        const bool pinned = buf->pinned();
        chunk_pinned_.push_back(pinned);
        if (!pinned) pageable_bytes_ += group_bytes[g];
        else pinned_bytes_ += group_bytes[g];
        pin_how_.insert(buf->how());
        host_bytes_ += group_bytes[g];
        std::shared_ptr<HostBuffer> owner(buf.release());
        live_host_bytes_->fetch_add(group_bytes[g]);
        g_live_host_bytes += group_bytes[g];
        if (pinned) g_live_pinned_bytes += group_bytes[g];
        auto counter = live_host_bytes_;
        const int64_t size = group_bytes[g];
        chunk = torch::from_blob(
            owner->data(), {size},
            [owner, counter, size, pinned](void*) mutable {
              counter->fetch_sub(size);
              g_live_host_bytes -= size;
              if (pinned) g_live_pinned_bytes -= size;
              owner.reset();
            },
            at::TensorOptions().dtype(at::kByte));
      }
      int64_t chunk_off = 0;
      for (size_t b = groups[g].first; b < groups[g].second; ++b) {
        BlockInfo& info = infos[b];
        info.chunk = static_cast<int>(chunks_.size());
        info.chunk_offset = chunk_off;
        {
          py::gil_scoped_release nogil;
          for (PackedTensor& pt : info.tensors) {
            at::Tensor view = chunk.narrow(0, chunk_off + pt.offset, pt.nbytes)
                                  .view(pt.param.scalar_type())
                                  .view(pt.param.sizes());
            view.copy_(pt.param);
            pt.host_view = AliasAs(chunk, chunk_off + pt.offset, pt.param.scalar_type(), pt.param.sizes(),
                                   pt.inference);
            pt.param.set_data(pt.host_view);  // original storage is freed here
          }
        }
        chunk_off += info.bytes;
        int id = -1;
        const size_t index = &info - infos.data();
        if (!fp8.empty() && fp8[index]) {
          // Sent as fp8: the pinned original stays the host truth (weights point
          // at it between uses); the link carries codes + per-row scales.
          const void* qptr = nullptr;
          uint64_t qbytes = 0;
          BlockTransform* transform = nullptr;
          {
            py::gil_scoped_release nogil;
            QuantizeBlock(&info, &qptr, &qbytes, &transform);
          }
          Check(core_->RegisterBlock(qptr, qbytes, info.streamable, &id));
          Check(core_->SetTransform(id, static_cast<uint64_t>(info.bytes), transform));
        } else {
          Check(core_->RegisterBlock(chunk.data_ptr<uint8_t>() + info.chunk_offset,
                                     static_cast<uint64_t>(info.bytes), info.streamable, &id));
          // its tensor boundaries: where a budget plan may keep a head resident
          std::vector<int64_t> offsets;
          for (const PackedTensor& pt : info.tensors) offsets.push_back(pt.offset);
          std::vector<uint64_t> cuts = CutsOf(offsets, info.bytes);
          if (info.streamable && !cuts.empty()) Check(core_->SetCuts(id, std::move(cuts)));
        }
        ids.push_back(id);
        blocks_.push_back(std::move(info));
        ++done_blocks;
        if (!progress.is_none()) progress(done_blocks, blocks.size());
      }
      chunks_.push_back(chunk);
    }
#if defined(__GLIBC__)
    // The original tensors' storage was freed above; hand the heap pages back
    // to the OS so the process does not hold a second copy's worth of RSS.
    malloc_trim(0);
#endif
    return ids;
  }

  py::dict Plan(const std::string& policy, int64_t budget_bytes, int prefetch) {
    std::lock_guard<std::mutex> lock(mu_);
    CheckOpen();
    if (prefetch < 0) throw py::value_error("PinStream: prefetch must be >= 0, got " + std::to_string(prefetch));
    if (core_->loaded()) UnloadLocked();
    prefetch_ = prefetch;
    budget_bytes_ = budget_bytes;
    Check(core_->Plan(ParsePolicy(policy),
                      budget_bytes < 0 ? PlanRequest::kUnlimited : static_cast<uint64_t>(budget_bytes),
                      prefetch));
    return PlanDict();
  }

  void Load() {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(mu_);
    CheckOpen();
    Check(core_->Load(ComputeQueue()));
    PointResidentBlocks();
  }

  void Unload() {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(mu_);
    CheckOpen();
    UnloadLocked();
  }

  void BeginPass() {
    std::lock_guard<std::mutex> lock(mu_);
    CheckOpen();
    // A pass still open (a forward interrupted by a BaseException such as
    // KeyboardInterrupt skips the hooks that end it, leaving blocks acquired):
    // end it first, as end_pass() would have.
    if (touched_ >= 0 || core_->learner().in_pass() || core_->outstanding() > 0) Check(EndPassLocked());
    Check(core_->BeginPass());
  }

  void Acquire(int block) {
    std::lock_guard<std::mutex> lock(mu_);
    CheckOpen();
    CheckId(block);
    const bool was_loaded = core_->loaded();
    DeviceLocation loc;
    Status s = core_->Acquire(block, ComputeQueue(), &loc);
    ApplyEvictions();
    Check(s);
    if (!was_loaded) PointResidentBlocks();
    PointAtDevice(block, loc);
  }

  // missing_ok: a forward hook's release after its acquire raised (the
  // post-hook runs anyway) is not a second error.
  void Release(int block, bool missing_ok = false) {
    std::lock_guard<std::mutex> lock(mu_);
    if (missing_ok && closed_) return;
    CheckOpen();
    CheckId(block);
    if (missing_ok && !core_->acquired(block)) return;
    BlockInfo& info = blocks_[block];
    if (!core_->resident(block) || info.fp8) WriteBackIfModified(&info);
    Check(core_->Release(block, ComputeQueue()));
    // An fp8 block's device copy is an approximation: between uses its weights
    // show the exact host copy (state_dict, LoRA patching, saving).
    if (info.fp8 && !core_->acquired(block)) PointAtHost(&info);
  }

  // touch(i): for models that iterate a block's children without calling the
  // block itself (ComfyUI's UNet runs TimestepEmbedSequential children one by
  // one). Hooks on the children call touch: the first touch of a block
  // releases the block touched before it and acquires this one; repeated
  // touches of the same block cost one comparison.
  void Touch(int block) {
    if (touched_ == block) return;
    if (touched_ >= 0) {
      const int prev = touched_;
      touched_ = -1;
      Release(prev, /*missing_ok=*/true);
    }
    Acquire(block);
    touched_ = block;
  }

  void ReleaseTouched(int block) {
    if (touched_ != block) return;
    touched_ = -1;
    Release(block, /*missing_ok=*/true);
  }

  void EndPass() {
    std::lock_guard<std::mutex> lock(mu_);
    touched_ = -1;
    if (closed_) return;
    Check(EndPassLocked());
  }

  // Releases the blocks still acquired and closes the pass. Between passes a
  // block that is not wholly resident shows its host copy: its slot is refilled
  // by later uploads, so tensors taken now (state_dict(), detach()) must not
  // alias it (a split block's head too; the next acquire points it back). An
  // fp8 block's device copy is an approximation: it too shows the host copy.
  Status EndPassLocked() {
    touched_ = -1;
    Status s = core_->EndPass(ComputeQueue());
    ApplyEvictions();
    for (int i = 0; i < num_blocks(); ++i) {
      BlockInfo& info = blocks_[i];
      if (info.location < 0 || core_->acquired(i)) continue;
      if (info.fp8 || !core_->resident(i)) {
        WriteBackIfModified(&info);  // blocks the pass left acquired were not released here
        PointAtHost(&info);
      }
    }
    return s;
  }

  void Synchronize() {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(mu_);
    CheckOpen();
    Check(core_->Synchronize());
  }

  py::dict GetStats() {
    Stats s;
    {
      py::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lock(mu_);
      if (!closed_) s = core_->GetStats(/*wait=*/true);
    }
    py::dict d;
    d["engine"] = engine_->name();
    d["device"] = device_.str();
    d["acquires"] = s.acquires;
    d["bytes_uploaded"] = s.bytes_uploaded;
    d["uploads"] = s.uploads;
    d["hits"] = s.hits;
    d["misses"] = s.misses;
    d["prefetches"] = s.prefetches;
    d["upload_failures"] = s.upload_failures;
    d["stall_ms"] = s.stall_ms;
    d["upload_ms"] = s.upload_ms;
    d["timed_upload_bytes"] = s.timed_upload_bytes;
    d["upload_gbps"] = s.upload_ms > 0 ? static_cast<double>(s.timed_upload_bytes) / (s.upload_ms * 1e6) : 0.0;
    d["passes"] = s.passes;
    d["relearns"] = s.relearns;
    d["skips"] = s.skips;
    d["block_upload_ms"] = s.block_upload_ms;
    d["block_uploads"] = s.block_uploads;
    d["writebacks"] = writebacks_;
    {
      std::vector<bool> pinned;
      for (const BlockInfo& b : blocks_) {
        pinned.push_back(b.chunk >= 0 && b.chunk < static_cast<int>(chunk_pinned_.size()) &&
                         chunk_pinned_[b.chunk]);
      }
      d["block_pinned"] = pinned;
    }
    {
      py::list errs;
      QuantError all;
      int64_t fp8_blocks = 0;
      for (const BlockInfo& b : blocks_) {
        if (!b.fp8) continue;
        ++fp8_blocks;
        all.Merge(b.fp8_error);
        errs.append(py::make_tuple(b.fp8_error.max_abs, b.fp8_error.mean_abs));
      }
      d["fp8_blocks"] = fp8_blocks;
      d["fp8_block_error"] = errs;
      d["fp8_max_abs_error"] = all.max_abs;
      d["fp8_mean_abs_error"] = all.mean_abs;
    }
    d["device_bytes"] = allocator_->allocated_bytes();
    d["peak_device_bytes"] = allocator_->peak_bytes();
    d["host_bytes"] = host_bytes_;
    d["pinned_bytes"] = pinned_bytes_;
    d["pageable_bytes"] = pageable_bytes_;
    d["live_host_bytes"] = live_host_bytes_->load();
    py::list how;
    for (const auto& h : pin_how_) how.append(h);
    d["pin_how"] = how;
    d["loaded"] = core_->loaded();
    d["closed"] = closed_;
    if (core_->planned()) d["plan"] = PlanDict();
    return d;
  }

  void ResetStats() {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    core_->ResetStats();
    allocator_->ResetPeak();
    writebacks_ = 0;
  }

  void Close(bool restore_pageable) {
    py::gil_scoped_release nogil;
    std::lock_guard<std::mutex> lock(mu_);
    CloseImpl(restore_pageable);
  }

  // Fault injection for tests (host engine only).
  void FailNextCopies(int count) { HostOnly("fail_next_copies")->FailNextCopies(count); }
  void DelayNextCopies(int count, int us) { HostOnly("delay_next_copies")->DelayNextCopies(count, us); }
  void SetDeviceCapacity(int64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    allocator_->set_capacity(static_cast<uint64_t>(std::max<int64_t>(bytes, 0)));
  }

  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  int64_t device_bytes() const { return static_cast<int64_t>(allocator_->allocated_bytes()); }
  int64_t host_bytes() const { return host_bytes_; }
  int64_t pinned_bytes() const { return pinned_bytes_; }
  bool closed() const { return closed_; }
  bool loaded() const { return !closed_ && core_->loaded(); }
  std::vector<int64_t> block_bytes() const {
    std::vector<int64_t> out;
    for (const BlockInfo& b : blocks_) out.push_back(b.bytes);
    return out;
  }
  std::vector<bool> resident_blocks() const {
    std::vector<bool> out;
    for (int i = 0; i < num_blocks(); ++i) out.push_back(core_->planned() && core_->resident(i));
    return out;
  }

 private:
  HostCopyEngine* HostOnly(const char* what) {
    if (host_engine_ == nullptr) {
      throw std::runtime_error(std::string("PinStream: ") + what + " needs the host engine");
    }
    return host_engine_;
  }

  void CheckOpen() const {
    if (closed_) throw std::runtime_error("PinStream: runtime is closed; offload the model again");
  }

  void CheckId(int block) const {
    if (block < 0 || block >= num_blocks()) {
      throw py::index_error("PinStream: block id " + std::to_string(block) + " out of range [0, " +
                            std::to_string(num_blocks()) + ")");
    }
  }

  // Builds the fp8 transfer form of a packed block: per tensor, fp32 scales then
  // e4m3 codes for 2-D+ float weights (rows = dim 0), raw bytes for the rest;
  // and the transform that writes the block's device layout from it.
  void QuantizeBlock(BlockInfo* info, const void** qptr, uint64_t* qbytes,
                     BlockTransform** out_transform) {
    auto transform = std::make_unique<BlockTransform>();
    uint64_t off = 0;
    auto align16 = [](uint64_t v) { return (v + 15) / 16 * 16; };
    for (const PackedTensor& pt : info->tensors) {
      const at::ScalarType st = pt.host_view.scalar_type();
      const bool floaty = st == at::kFloat || st == at::kHalf || st == at::kBFloat16;
      TransformJob job;
      job.dst_offset = static_cast<uint64_t>(pt.offset);
      if (floaty && pt.host_view.dim() >= 2 && pt.host_view.numel() > 0) {
        job.kind = TransformJob::Kind::kDequantize;
        job.rows = pt.host_view.size(0);
        job.cols = pt.host_view.numel() / job.rows;
        job.out_dtype = st == at::kFloat ? FloatDtype::kFloat32
                        : st == at::kHalf ? FloatDtype::kFloat16 : FloatDtype::kBFloat16;
        job.scales_offset = align16(off);
        off = job.scales_offset + static_cast<uint64_t>(job.rows) * 4;
        job.src_offset = align16(off);
        off = job.src_offset + static_cast<uint64_t>(job.rows * job.cols);
      } else {
        job.kind = TransformJob::Kind::kCopy;
        job.src_offset = align16(off);
        job.bytes = static_cast<uint64_t>(pt.nbytes);
        off = job.src_offset + job.bytes;
      }
      transform->jobs.push_back(job);
    }
    std::unique_ptr<HostBuffer> buf;
    Check(engine_->AllocateHostBuffer(std::max<uint64_t>(off, 1), /*pin=*/true, &buf));
    auto* base = static_cast<uint8_t*>(buf->data());
    // Rows are independent: quantize row ranges of about kItemElems codes on
    // torch's intra-op threads. The ranges do not depend on the thread count
    // and their errors merge in order, so the result is the same on any machine.
    constexpr int64_t kItemElems = int64_t{1} << 22;
    struct Item {
      size_t tensor;
      int64_t row0, row1;
    };
    std::vector<Item> items;
    for (size_t i = 0; i < info->tensors.size(); ++i) {
      const PackedTensor& pt = info->tensors[i];
      const TransformJob& job = transform->jobs[i];
      if (job.kind == TransformJob::Kind::kCopy) {
        if (job.bytes > 0) std::memcpy(base + job.src_offset, pt.host_view.data_ptr(), job.bytes);
        continue;
      }
      const int64_t step = std::max<int64_t>(1, kItemElems / std::max<int64_t>(1, job.cols));
      for (int64_t r = 0; r < job.rows; r += step) {
        items.push_back({i, r, std::min(job.rows, r + step)});
      }
    }
    std::vector<QuantError> item_errors(items.size());
    std::vector<Status> item_status(items.size());
    auto quantize = [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const Item& it = items[static_cast<size_t>(k)];
        const PackedTensor& pt = info->tensors[it.tensor];
        const TransformJob& job = transform->jobs[it.tensor];
        const int esize = DtypeSize(job.out_dtype);
        item_status[k] = QuantizeRows(
            static_cast<const uint8_t*>(pt.host_view.data_ptr()) + it.row0 * job.cols * esize,
            job.out_dtype, it.row1 - it.row0, job.cols,
            base + job.src_offset + it.row0 * job.cols,
            reinterpret_cast<float*>(base + job.scales_offset) + it.row0, &item_errors[k]);
      }
    };
    ParallelFor(static_cast<int64_t>(items.size()), quantize);
    QuantError block_error;
    for (size_t k = 0; k < items.size(); ++k) {
      Check(item_status[k]);
      block_error.Merge(item_errors[k]);
    }
    info->fp8_error = block_error;
    info->fp8 = true;
    const int64_t size = static_cast<int64_t>(off);
    host_bytes_ += size;
    if (buf->pinned()) pinned_bytes_ += size; else pageable_bytes_ += size;
    g_live_host_bytes += size;
    if (buf->pinned()) g_live_pinned_bytes += size;
    *qptr = buf->data();
    *qbytes = off;
    *out_transform = transform.get();
    fp8_buffers_.push_back({std::move(buf), size});
    transforms_.push_back(std::move(transform));
  }

  void* ComputeQueue() const {
#ifdef PINSTREAM_WITH_CUDA
    if (alloc_device_.is_cuda()) {
      return c10::cuda::getCurrentCUDAStream(alloc_device_.index()).stream();
    }
#endif
    return nullptr;
  }

  void SyncCompute() const {
#ifdef PINSTREAM_WITH_CUDA
    if (alloc_device_.is_cuda()) {
      c10::cuda::getCurrentCUDAStream(alloc_device_.index()).synchronize();
    }
#endif
  }

  // Views of the block's tensors at `loc`; a split block's tensors below its
  // head_bytes are in the resident head, the others in the slot.
  const std::vector<at::Tensor>& ViewsAt(BlockInfo* info, const DeviceLocation& loc) {
    for (auto& entry : info->view_cache) {
      if (entry.first == loc.allocation) return entry.second;
    }
    const at::Tensor& base = allocator_->tensor(loc.allocation);
    const int64_t head = static_cast<int64_t>(loc.head_bytes);
    std::vector<at::Tensor> views;
    views.reserve(info->tensors.size());
    for (const PackedTensor& pt : info->tensors) {
      const bool in_head = pt.offset < head;
      const at::Tensor& src = in_head ? allocator_->tensor(loc.head_allocation) : base;
      views.push_back(AliasAs(src, in_head ? pt.offset : pt.offset - head, pt.host_view.scalar_type(),
                              pt.host_view.sizes(), pt.inference));
    }
    info->view_cache.emplace_back(loc.allocation, std::move(views));
    return info->view_cache.back().second;
  }

  // Re-points `param` at `view` (same sizes and strides by construction).
  // Within one device type only the storage and offset change: cheaper than
  // set_data, which also rebuilds dispatch keys and layout metadata.
  static void Repoint(at::Tensor& param, const at::Tensor& view) {
    if (param.device() == view.device() && param.dtype() == view.dtype()) {
      c10::TensorImpl* impl = param.unsafeGetTensorImpl();
      impl->set_storage_keep_dtype(view.storage());
      impl->set_storage_offset(view.storage_offset());
    } else {
      param.set_data(view);
    }
  }

  // A tensor converted by the caller while offloaded (module.double(), .half(),
  // .to(dtype)) or replaced by one of another shape no longer matches its stored
  // copy: PinStream cannot show it the stored bytes, and must not silently undo
  // the conversion either.
  void CheckUnchanged(const BlockInfo& info) const {
    for (const PackedTensor& pt : info.tensors) {
      if (pt.param.scalar_type() == pt.host_view.scalar_type() && pt.param.sizes() == pt.host_view.sizes()) {
        continue;
      }
      const std::string who = pt.name.empty() ? std::string("a weight") : pt.name;
      if (pt.param.scalar_type() != pt.host_view.scalar_type()) {
        throw std::runtime_error("PinStream: " + who + " was converted to " +
                                 std::string(c10::toString(pt.param.scalar_type())) +
                                 " while offloaded by PinStream (stored as " +
                                 std::string(c10::toString(pt.host_view.scalar_type())) +
                                 "); detach() the handle, convert, then offload again");
      }
      throw std::runtime_error("PinStream: " + who + " was replaced by a tensor of shape " +
                               c10::str(pt.param.sizes()) + " while offloaded by PinStream (stored as " +
                               c10::str(pt.host_view.sizes()) +
                               "); detach() the handle, change it, then offload again");
    }
  }

  void PointAtDevice(int block, const DeviceLocation& loc) {
    BlockInfo& info = blocks_[block];
    CheckUnchanged(info);
    if (info.location == loc.allocation) return;
    const std::vector<at::Tensor>& views = ViewsAt(&info, loc);
    for (size_t i = 0; i < info.tensors.size(); ++i) {
      PackedTensor& pt = info.tensors[i];
      Repoint(pt.param, views[i]);
      pt.version = VersionOf(pt.param);
    }
    info.location = loc.allocation;
  }

  void PointAtHost(BlockInfo* info) {
    if (info->location < 0) return;
    for (PackedTensor& pt : info->tensors) Repoint(pt.param, pt.host_view);
    info->location = -1;
  }

  // A block whose tensors were changed in place on the device (e.g. a weight
  // patch) is copied back to its host copy; untouched blocks never are.
  void WriteBackIfModified(BlockInfo* info) {
    if (info->location < 0) return;
    bool dirty = false;
    for (const PackedTensor& pt : info->tensors) dirty |= VersionOf(pt.param) != pt.version;
    if (!dirty) return;
    for (PackedTensor& pt : info->tensors) {
      pt.host_view.copy_(pt.param, /*non_blocking=*/false);
      pt.version = VersionOf(pt.param);
    }
    ++writebacks_;
  }

  void ApplyEvictions() {
    core_->TakeEvicted(&evicted_);
    for (int b : evicted_) PointAtHost(&blocks_[b]);
  }

  void PointResidentBlocks() {
    for (int i = 0; i < num_blocks(); ++i) {
      // fp8 blocks point at their device copy only while acquired.
      if (core_->resident(i) && !blocks_[i].fp8) {
        PointAtDevice(i, core_->resident_location(i));
      }
    }
  }

  void UnloadLocked() {
    touched_ = -1;
    if (!core_->loaded()) return;
    // Before anything changes: pointing a converted tensor back at its host copy
    // would silently undo the conversion.
    for (const BlockInfo& info : blocks_) {
      if (info.location >= 0) CheckUnchanged(info);
    }
    SyncCompute();
    for (BlockInfo& info : blocks_) {
      WriteBackIfModified(&info);
      PointAtHost(&info);
      info.view_cache.clear();
    }
    Check(core_->Unload());
    ApplyEvictions();
  }

  void CloseImpl(bool restore_pageable) {
    if (closed_) return;
    touched_ = -1;
    if (core_->loaded()) {
      SyncCompute();
      core_->EndPass(ComputeQueue());
      for (BlockInfo& info : blocks_) {
        WriteBackIfModified(&info);
        PointAtHost(&info);
        info.view_cache.clear();
      }
    }
    core_->Close();
    for (BlockInfo& info : blocks_) {
      for (PackedTensor& pt : info.tensors) {
        if (restore_pageable) {
          c10::InferenceMode guard(pt.inference);  // the copy of the weight's kind (AliasAs)
          pt.param.set_data(pt.host_view.clone());
        }
        pt.host_view = at::Tensor();
      }
      info.view_cache.clear();
    }
    blocks_.clear();
    chunks_.clear();
    chunk_pinned_.clear();
    for (auto& fb : fp8_buffers_) {
      g_live_host_bytes -= fb.second;
      if (fb.first->pinned()) g_live_pinned_bytes -= fb.second;
    }
    fp8_buffers_.clear();
    transforms_.clear();
    seen_.clear();
    closed_ = true;
#if defined(__GLIBC__)
    malloc_trim(0);  // hand freed heap pages back: RSS returns to its baseline
#endif
  }

  py::dict PlanDict() const {
    const ResidencyPlan& p = core_->plan();
    py::dict d;
    d["policy"] = PlanPolicyName(p.policy());
    d["prefetch"] = p.prefetch();
    d["num_blocks"] = core_->num_blocks();
    d["resident_blocks"] = p.num_resident();
    d["streamed_blocks"] = p.num_streamed();
    d["split_blocks"] = p.num_split();
    // per registered unit: the resident head of a split block (its rest streams), else 0
    std::vector<uint64_t> heads;
    for (int i = 0; i < core_->num_blocks(); ++i) heads.push_back(core_->planned() ? core_->split_bytes(i) : 0);
    d["split_bytes"] = heads;
    d["slot_count"] = p.slot_count();
    d["slot_bytes"] = p.slot_bytes();
    d["fixed_bytes"] = p.fixed_bytes();
    d["resident_block_bytes"] = p.resident_block_bytes();
    d["streamed_block_bytes"] = p.streamed_block_bytes();
    d["device_bytes"] = p.device_bytes();
    d["describe"] = p.Describe();
    return d;
  }

  std::mutex mu_;
  at::Device device_{at::kCPU};
  at::Device alloc_device_{at::kCPU};
  int prefetch_;
  int64_t budget_bytes_;
  int64_t chunk_bytes_;
  int64_t pin_cap_bytes_;
  std::unique_ptr<CopyEngine> engine_;
  HostCopyEngine* host_engine_ = nullptr;
  std::unique_ptr<TorchDeviceAllocator> allocator_;
  std::unique_ptr<StreamingRuntime> core_;
  std::vector<BlockInfo> blocks_;
  std::vector<at::Tensor> chunks_;
  std::vector<bool> chunk_pinned_;
  std::vector<std::pair<std::unique_ptr<HostBuffer>, int64_t>> fp8_buffers_;
  std::vector<std::unique_ptr<BlockTransform>> transforms_;
  std::unordered_set<const c10::TensorImpl*> seen_;
  std::unordered_set<std::string> pin_how_;
  std::vector<int> evicted_;
  std::shared_ptr<std::atomic<int64_t>> live_host_bytes_ = std::make_shared<std::atomic<int64_t>>(0);
  int64_t host_bytes_ = 0;
  int64_t pinned_bytes_ = 0;
  int64_t pageable_bytes_ = 0;
  uint64_t writebacks_ = 0;
  int touched_ = -1;
  bool closed_ = false;
};

// The residency the runtime would plan for these sizes (no runtime needed):
// lets the engine rank blocks for pinning before they are registered. With
// `tensor_bytes` (each block's tensor sizes, in order) the blocks are packed
// as registration packs them and may be split; True = wholly resident.
std::vector<bool> PlanResidency(const std::vector<uint64_t>& block_bytes, uint64_t fixed_bytes,
                                const std::string& policy, int64_t budget_bytes, int prefetch,
                                const std::vector<std::vector<int64_t>>& tensor_bytes) {
  PlanRequest req;
  req.policy = ParsePolicy(policy);
  req.block_bytes = block_bytes;
  if (!tensor_bytes.empty()) {
    if (tensor_bytes.size() != block_bytes.size()) {
      throw py::value_error("PinStream: tensor_bytes has " + std::to_string(tensor_bytes.size()) +
                            " entries for " + std::to_string(block_bytes.size()) + " blocks");
    }
    req.block_bytes.clear();
    for (const auto& nbytes : tensor_bytes) {
      std::vector<int64_t> offsets;
      const int64_t bytes = PackLayout(nbytes, &offsets);
      req.block_bytes.push_back(static_cast<uint64_t>(bytes));
      req.block_cuts.push_back(CutsOf(offsets, bytes));
    }
  }
  req.fixed_bytes = fixed_bytes;
  req.budget_bytes = budget_bytes < 0 ? PlanRequest::kUnlimited : static_cast<uint64_t>(budget_bytes);
  req.prefetch = prefetch;
  ResidencyPlan plan;
  Check(ResidencyPlan::Make(req, &plan));
  std::vector<bool> out;
  for (int i = 0; i < plan.num_blocks(); ++i) out.push_back(plan.resident(i));
  return out;
}

bool CudaBuilt() {
#ifdef PINSTREAM_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace pinstream

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using pinstream::Runtime;
  m.doc() = "PinStream native runtime: streams weight blocks from pinned host memory to the device";
  py::register_exception<pinstream::OutOfMemory>(m, "OutOfMemoryError", PyExc_MemoryError);
  m.def("cuda_built", &pinstream::CudaBuilt, "True when the CUDA engine was compiled in");
  m.def("plan_residency", &pinstream::PlanResidency, py::arg("block_bytes"), py::arg("fixed_bytes"),
        py::arg("policy"), py::arg("budget_bytes"), py::arg("prefetch"),
        py::arg("tensor_bytes") = std::vector<std::vector<int64_t>>(),
        "Which blocks a plan keeps wholly resident (True) for these sizes; with tensor_bytes "
        "(each block's tensor sizes) packed as registered, split blocks included (False)");
  m.def("live_bytes", [] {
    py::dict d;
    d["host"] = pinstream::g_live_host_bytes.load();
    d["pinned"] = pinstream::g_live_pinned_bytes.load();
    d["device"] = pinstream::g_live_device_bytes.load();
    d["runtimes"] = pinstream::g_live_runtimes.load();
    return d;
  }, "Bytes held by all PinStream runtimes in this process (host chunks, pinned, device)");
  py::class_<Runtime>(m, "Runtime")
      .def(py::init<const std::string&, const std::string&, int, int64_t, double, double, int,
                    uint64_t, bool, int64_t, const std::string&, int64_t, bool, int64_t>(),
           py::arg("device") = "cpu", py::arg("engine") = "auto", py::arg("prefetch") = 1,
           py::arg("budget_bytes") = -1, py::arg("link_gbps") = 0.0, py::arg("latency_us") = 0.0,
           py::arg("random_delay_us") = 0, py::arg("seed") = 0, py::arg("poison") = false,
           py::arg("device_capacity_bytes") = 0, py::arg("pin_mode") = "auto",
           py::arg("chunk_bytes") = 256LL << 20, py::arg("timing") = true,
           py::arg("pin_cap_bytes") = -1)
      .def_property_readonly("engine", &Runtime::engine_name)
      .def_property_readonly("device", &Runtime::device_str)
      .def_property_readonly("num_blocks", &Runtime::num_blocks)
      .def_property_readonly("device_bytes", &Runtime::device_bytes,
                             "device bytes held now (slots and resident blocks); no synchronization")
      .def_property_readonly("host_bytes", &Runtime::host_bytes)
      .def_property_readonly("pinned_bytes", &Runtime::pinned_bytes)
      .def_property_readonly("closed", &Runtime::closed)
      .def_property_readonly("loaded", &Runtime::loaded)
      .def_property_readonly("block_bytes", &Runtime::block_bytes)
      .def_property_readonly("resident_blocks", &Runtime::resident_blocks)
      .def("register_blocks", &Runtime::RegisterBlocks, py::arg("blocks"),
           py::arg("streamable") = std::vector<bool>(), py::arg("progress") = py::none(),
           py::arg("fp8") = std::vector<bool>(), py::arg("pin_rank") = std::vector<int>(),
           py::arg("names") = std::vector<std::vector<std::string>>(),
           "Packs each block's tensors into pinned host memory and re-points them there; "
           "names (per block, per tensor) are used in error messages")
      .def("register_block",
           [](Runtime& rt, const std::vector<at::Tensor>& tensors, bool streamable) {
             return rt.RegisterBlocks({tensors}, {streamable}, py::none())[0];
           },
           py::arg("tensors"), py::arg("streamable") = true)
      .def("plan", &Runtime::Plan, py::arg("policy") = "budget", py::arg("budget_bytes") = -1,
           py::arg("prefetch") = 1)
      .def("load", &Runtime::Load)
      .def("unload", &Runtime::Unload)
      .def("begin_pass", &Runtime::BeginPass)
      .def("acquire", &Runtime::Acquire, py::arg("block"),
           py::call_guard<py::gil_scoped_release>())
      .def("release", [](Runtime& rt, int block) { rt.Release(block, false); }, py::arg("block"),
           py::call_guard<py::gil_scoped_release>())
      .def("release_if_acquired", [](Runtime& rt, int block) { rt.Release(block, true); },
           py::arg("block"), py::call_guard<py::gil_scoped_release>(),
           "release() for forward hooks: a block whose acquire failed is skipped")
      .def("end_pass", &Runtime::EndPass, py::call_guard<py::gil_scoped_release>())
      .def("touch", &Runtime::Touch, py::arg("block"), py::call_guard<py::gil_scoped_release>(),
           "acquire `block`, releasing the block touched before it (for hooks on a block's children)")
      .def("release_touched", &Runtime::ReleaseTouched, py::arg("block"),
           py::call_guard<py::gil_scoped_release>())
      .def("synchronize", &Runtime::Synchronize)
      .def("stats", &Runtime::GetStats)
      .def("reset_stats", &Runtime::ResetStats)
      .def("close", &Runtime::Close, py::arg("restore_pageable") = true)
      .def("fail_next_copies", &Runtime::FailNextCopies, py::arg("count"))
      .def("delay_next_copies", &Runtime::DelayNextCopies, py::arg("count"), py::arg("us"))
      .def("set_device_capacity", &Runtime::SetDeviceCapacity, py::arg("bytes"));
}
