// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/residency_plan.h"

#include <algorithm>
#include <cstdio>
#include <functional>

namespace pinstream {

std::string FormatBytes(unsigned long long bytes) {
  char buf[64];
  const double b = static_cast<double>(bytes);
  if (bytes >= (1ULL << 30)) {
    std::snprintf(buf, sizeof(buf), "%.2f GiB", b / (1024.0 * 1024.0 * 1024.0));
  } else if (bytes >= (1ULL << 20)) {
    std::snprintf(buf, sizeof(buf), "%.1f MiB", b / (1024.0 * 1024.0));
  } else {
    std::snprintf(buf, sizeof(buf), "%llu bytes", bytes);
  }
  return buf;
}

uint64_t AlignUp(uint64_t value, uint64_t alignment) { return (value + alignment - 1) / alignment * alignment; }

Status CheckCuts(const std::vector<uint64_t>& cuts, uint64_t bytes, const std::string& what) {
  uint64_t prev = 0;
  for (uint64_t c : cuts) {
    if (c <= prev || c >= bytes) {
      return Status::InvalidArgument(what + ": cuts must ascend strictly inside (0, " + std::to_string(bytes) +
                                     "), got " + std::to_string(c));
    }
    prev = c;
  }
  return Status::Ok();
}

const char* PlanPolicyName(PlanPolicy policy) {
  switch (policy) {
    case PlanPolicy::kAllResident:
      return "all_resident";
    case PlanPolicy::kStreamAll:
      return "stream_all";
    case PlanPolicy::kBudget:
      return "budget";
  }
  return "?";
}

namespace {

// Saturating add: budgets may be "unlimited".
uint64_t SatAdd(uint64_t a, uint64_t b) {
  return a > std::numeric_limits<uint64_t>::max() - b ? std::numeric_limits<uint64_t>::max() : a + b;
}

struct Candidate {
  bool valid = false;
  std::vector<uint8_t> resident;
  std::vector<uint64_t> prefix;  // split blocks' resident prefix (raw offset), else 0
  uint64_t slot_bytes = 0;
  int slots = 0;
  uint64_t resident_bytes = 0;
  uint64_t streamed_bytes = 0;  // streamed each pass: whole blocks, or split blocks' rests
};

// Picks `r` of the `m` candidate positions evenly spaced: j-th pick is at
// floor((j + 0.5) * m / r).
void EvenlySpaced(int m, int r, std::vector<int>* picks) {
  picks->clear();
  for (int j = 0; j < r; ++j) {
    picks->push_back(static_cast<int>((2LL * j + 1) * m / (2LL * r)));
  }
}

// With every block of size > slot_bytes resident and the ring sized for
// slot_bytes, spends what is left of the budget on extra resident blocks,
// evenly spaced, keeping at least one block streamed.
Candidate Evaluate(const std::vector<uint64_t>& sizes, uint64_t fixed, uint64_t budget, int prefetch,
                   uint64_t slot_bytes, bool stream_all) {
  Candidate c;
  const int n = static_cast<int>(sizes.size());
  c.resident.assign(n, 0);
  uint64_t forced = 0;
  std::vector<int> streamable;
  for (int i = 0; i < n; ++i) {
    if (sizes[i] > slot_bytes) {
      if (stream_all) return c;  // every block must fit a slot
      c.resident[i] = 1;
      forced += sizes[i];
    } else {
      streamable.push_back(i);
    }
  }
  if (streamable.empty()) return c;
  const int m = static_cast<int>(streamable.size());
  const int max_slots = prefetch + 1;
  // Base cost with the full ring.
  const uint64_t ring = slot_bytes * static_cast<uint64_t>(std::min(m, max_slots));
  const uint64_t base = SatAdd(SatAdd(fixed, forced), ring);
  if (base > budget) return c;
  uint64_t left = budget - base;
  if (!stream_all && m > 1) {
    // Largest evenly spaced set that fits, then greedy fill in order.
    std::vector<int> picks;
    for (int r = m - 1; r >= 1; --r) {
      EvenlySpaced(m, r, &picks);
      uint64_t sum = 0;
      for (int p : picks) sum += sizes[streamable[p]];
      if (sum <= left) {
        for (int p : picks) c.resident[streamable[p]] = 1;
        left -= sum;
        break;
      }
    }
    int streamed = 0;
    for (int i : streamable) streamed += c.resident[i] ? 0 : 1;
    for (int i : streamable) {
      if (streamed <= 1) break;
      if (!c.resident[i] && sizes[i] <= left) {
        c.resident[i] = 1;
        left -= sizes[i];
        --streamed;
      }
    }
  }
  uint64_t largest_streamed = 0;
  int streamed = 0;
  for (int i = 0; i < n; ++i) {
    if (c.resident[i]) {
      c.resident_bytes += sizes[i];
    } else {
      c.streamed_bytes += sizes[i];
      largest_streamed = std::max(largest_streamed, sizes[i]);
      ++streamed;
    }
  }
  c.slot_bytes = largest_streamed;
  c.slots = std::min(streamed, max_slots);
  c.valid = true;
  return c;
}

// Every position of [0, n) once, in van der Corput order: each prefix of the
// order is spread evenly over [0, n), so the blocks a split plan streams are
// spread through the pass whatever their number.
std::vector<int> SpreadOrder(int n) {
  std::vector<int> order;
  if (n <= 0) return order;
  order.reserve(n);
  std::vector<uint8_t> seen(n, 0);
  int bits = 0;
  while ((1LL << bits) < n) ++bits;
  for (uint64_t j = 0; j < (1ULL << bits); ++j) {
    uint64_t r = 0;
    for (int k = 0; k < bits; ++k) {
      if (j & (1ULL << k)) r |= 1ULL << (bits - 1 - k);
    }
    const int pos = static_cast<int>((r * static_cast<uint64_t>(n)) >> bits);
    if (!seen[pos]) {
      seen[pos] = 1;
      order.push_back(pos);
    }
  }
  for (int i = 0; i < n; ++i) {
    if (!seen[i]) order.push_back(i);
  }
  return order;
}

// One way to stream part of a block: keep `cut` raw bytes resident (aligned:
// `reduction` bytes less than the whole block resident) and stream `suffix`.
struct SplitOption {
  uint64_t suffix = 0;
  uint64_t reduction = 0;
  uint64_t cut = 0;  // 0: the whole block streams
};

// Per block, its options in ascending suffix (and so ascending reduction).
std::vector<std::vector<SplitOption>> SplitOptions(const PlanRequest& req, const std::vector<uint64_t>& sizes) {
  std::vector<std::vector<SplitOption>> out(sizes.size());
  for (size_t i = 0; i < sizes.size(); ++i) {
    const std::vector<uint64_t>& cuts = req.block_cuts[i];
    for (auto it = cuts.rbegin(); it != cuts.rend(); ++it) {  // largest cut: smallest suffix
      SplitOption o;
      o.cut = *it;
      o.suffix = AlignUp(req.block_bytes[i] - *it, req.alignment);
      const uint64_t kept = AlignUp(*it, req.alignment);
      if (kept >= sizes[i]) continue;
      o.reduction = sizes[i] - kept;
      if (!out[i].empty() && (o.suffix <= out[i].back().suffix || o.reduction <= out[i].back().reduction)) {
        continue;  // alignment made it no better than a larger cut
      }
      out[i].push_back(o);
    }
    SplitOption whole;
    whole.suffix = sizes[i];
    whole.reduction = sizes[i];
    if (out[i].empty() || out[i].back().suffix < whole.suffix) out[i].push_back(whole);
  }
  return out;
}

// With slots of `slot_bytes`, frees just enough of the budget by streaming
// blocks (whole or a rest no larger than a slot), block after block in
// `order`: each gives the most it can until the last one, which gives the
// least that is enough.
Candidate EvaluateSplit(const std::vector<std::vector<SplitOption>>& options, const std::vector<uint64_t>& sizes,
                        uint64_t fixed, uint64_t budget, int prefetch, uint64_t slot_bytes,
                        const std::vector<int>& order) {
  Candidate c;
  const int n = static_cast<int>(sizes.size());
  const int max_slots = std::min(n, prefetch + 1);
  uint64_t total = 0;
  for (uint64_t b : sizes) total = SatAdd(total, b);
  const uint64_t cost = SatAdd(SatAdd(fixed, total), slot_bytes * static_cast<uint64_t>(max_slots));
  if (cost <= budget) return c;  // nothing needs to stream: not a split plan
  uint64_t need = cost - budget;
  c.resident.assign(n, 1);
  c.prefix.assign(n, 0);
  uint64_t reduced = 0;
  uint64_t streamed_bytes = 0;
  uint64_t largest = 0;
  int streamed = 0;
  auto fits = [slot_bytes](const SplitOption& o) { return o.suffix <= slot_bytes; };
  for (int i : order) {
    if (need == 0) break;
    const std::vector<SplitOption>& opts = options[i];
    // options fitting a slot: a prefix of opts (ascending suffix)
    const size_t k = static_cast<size_t>(std::partition_point(opts.begin(), opts.end(), fits) - opts.begin());
    if (k == 0) continue;
    const SplitOption* pick = &opts[k - 1];
    if (pick->reduction >= need) {
      pick = &*std::lower_bound(opts.begin(), opts.begin() + static_cast<std::ptrdiff_t>(k), need,
                                [](const SplitOption& o, uint64_t v) { return o.reduction < v; });
    }
    c.resident[i] = 0;
    c.prefix[i] = pick->cut;
    reduced += pick->reduction;
    streamed_bytes += pick->suffix;
    largest = std::max(largest, pick->suffix);
    ++streamed;
    need = pick->reduction >= need ? 0 : need - pick->reduction;
  }
  if (need > 0 || streamed == 0) return c;
  c.slot_bytes = largest;
  c.slots = std::min(streamed, prefetch + 1);
  c.resident_bytes = total - reduced;
  c.streamed_bytes = streamed_bytes;
  c.valid = SatAdd(SatAdd(fixed, c.resident_bytes), c.slot_bytes * static_cast<uint64_t>(c.slots)) <= budget;
  return c;
}

// The split plan keeping the most bytes resident, over slot sizes taken from
// the blocks' possible rests (at most 512 of them, evenly picked).
Candidate BestSplit(const PlanRequest& req, const std::vector<uint64_t>& sizes, uint64_t fixed) {
  const std::vector<std::vector<SplitOption>> options = SplitOptions(req, sizes);
  std::vector<uint64_t> slot_sizes;
  for (const auto& opts : options) {
    for (const SplitOption& o : opts) slot_sizes.push_back(o.suffix);
  }
  std::sort(slot_sizes.begin(), slot_sizes.end());
  slot_sizes.erase(std::unique(slot_sizes.begin(), slot_sizes.end()), slot_sizes.end());
  constexpr size_t kMaxSlotSizes = 512;
  if (slot_sizes.size() > kMaxSlotSizes) {
    std::vector<uint64_t> picked;
    for (size_t j = 0; j < kMaxSlotSizes; ++j) {
      picked.push_back(slot_sizes[(j + 1) * slot_sizes.size() / kMaxSlotSizes - 1]);
    }
    slot_sizes.swap(picked);
  }
  const std::vector<int> order = SpreadOrder(static_cast<int>(sizes.size()));
  Candidate best;
  for (uint64_t slot : slot_sizes) {
    Candidate c = EvaluateSplit(options, sizes, fixed, req.budget_bytes, req.prefetch, slot, order);
    // ties: the larger slot (fewer blocks streamed)
    if (c.valid && (!best.valid || c.resident_bytes >= best.resident_bytes)) best = std::move(c);
  }
  return best;
}

// ---- plans with transformed blocks: resident as stored, resident coded, streamed ----

enum Residency : uint8_t { kStreamed = 0, kCoded = 1, kStored = 2 };

// One block's costs under each residency.
struct BlockCosts {
  bool can_code = false;     // transformed, and its transfer form is smaller than its layout
  uint64_t stream_ring = 0;  // slot bytes when streamed: its footprint
  uint64_t coded_ring = 0;   // slot bytes when resident coded: its layout
  uint64_t stored = 0;       // device bytes resident as stored
  uint64_t coded = 0;        // device bytes resident coded
  double stream_s = 0;       // copy-queue seconds per pass when streamed
  double coded_s = 0;        // ... when resident coded
};

std::vector<BlockCosts> CostsOf(const PlanRequest& req, const std::vector<uint64_t>& sizes) {
  std::vector<BlockCosts> out(sizes.size());
  const double link = req.link_bytes_per_second, xform = req.transform_bytes_per_second;
  for (size_t i = 0; i < sizes.size(); ++i) {
    BlockCosts& c = out[i];
    c.stream_ring = sizes[i];
    const uint64_t layout = req.block_layout_bytes[i], transfer = req.block_transfer_bytes[i];
    if (layout == 0 && transfer == 0) {  // sent as stored
      c.stored = sizes[i];
      c.stream_s = static_cast<double>(req.block_bytes[i]) / link;
      continue;
    }
    c.stored = sizes[i];  // its layout: what a slot holds too
    c.coded = AlignUp(transfer, req.alignment);
    c.coded_ring = c.stored;
    c.coded_s = static_cast<double>(layout) / xform;
    c.stream_s = static_cast<double>(transfer) / link + c.coded_s;
    c.can_code = c.coded < c.stored;
  }
  return out;
}

struct Candidate3 {
  bool valid = false;
  std::vector<uint8_t> state;
  uint64_t slot_bytes = 0;
  int slots = 0;
  uint64_t device_bytes = 0;
  double seconds = 0;
};

// The residency each block starts from with slots of `slot`: the cheapest in
// device bytes that the slot allows. Returns the bytes those starts hold and
// the number of blocks that use the ring.
uint64_t StartStates(const std::vector<BlockCosts>& costs, uint64_t slot, std::vector<uint8_t>* state,
                     int* ring_users) {
  uint64_t held = 0;
  *ring_users = 0;
  state->assign(costs.size(), kStored);
  for (size_t i = 0; i < costs.size(); ++i) {
    const BlockCosts& c = costs[i];
    if (c.stream_ring <= slot) {
      (*state)[i] = kStreamed;
    } else if (c.can_code && c.coded_ring <= slot) {
      (*state)[i] = kCoded;
      held += c.coded;
    } else {
      held += c.stored;
      continue;
    }
    ++*ring_users;
  }
  return held;
}

// With slots of `slot`, spends the budget left after the starts on the moves
// that save the most copy-queue time per device byte (ties: blocks spread
// evenly through the pass, by `rank`).
Candidate3 Evaluate3(const std::vector<BlockCosts>& costs, const std::vector<int>& rank, uint64_t fixed,
                     uint64_t staging, uint64_t budget, int prefetch, uint64_t slot) {
  Candidate3 c;
  int users = 0;
  const uint64_t held = StartStates(costs, slot, &c.state, &users);
  if (users == 0) return c;
  const uint64_t ring = slot * static_cast<uint64_t>(std::min(users, prefetch + 1));
  const uint64_t base = SatAdd(SatAdd(SatAdd(fixed, held), ring), staging);
  if (base > budget) return c;
  uint64_t left = budget - base;
  struct Move {
    int block;
    uint8_t from, to;
    uint64_t cost;
    double gain;
  };
  std::vector<Move> moves;
  for (int i = 0; i < static_cast<int>(costs.size()); ++i) {
    const BlockCosts& b = costs[i];
    if (c.state[i] == kStored) continue;
    if (c.state[i] == kStreamed) {
      if (b.can_code && b.coded_ring <= slot) moves.push_back({i, kStreamed, kCoded, b.coded, b.stream_s - b.coded_s});
      moves.push_back({i, kStreamed, kStored, b.stored, b.stream_s});
    }
    if (b.can_code) moves.push_back({i, kCoded, kStored, b.stored - b.coded, b.coded_s});
  }
  std::sort(moves.begin(), moves.end(), [&rank](const Move& a, const Move& b) {
    const double ea = a.gain * static_cast<double>(b.cost), eb = b.gain * static_cast<double>(a.cost);
    if (ea != eb) return ea > eb;
    if (rank[a.block] != rank[b.block]) return rank[a.block] < rank[b.block];
    return a.to < b.to;
  });
  // A move applies only from its block's current residency: a second sweep
  // takes the coded -> stored moves of blocks the first one coded.
  for (int sweep = 0; sweep < 2; ++sweep) {
    for (const Move& m : moves) {
      if (c.state[m.block] != m.from || m.cost > left) continue;
      c.state[m.block] = m.to;
      left -= m.cost;
    }
  }
  uint64_t device = fixed;
  users = 0;
  for (size_t i = 0; i < costs.size(); ++i) {
    const BlockCosts& b = costs[i];
    switch (c.state[i]) {
      case kStored:
        device += b.stored;
        break;
      case kCoded:
        device += b.coded;
        c.seconds += b.coded_s;
        c.slot_bytes = std::max(c.slot_bytes, b.coded_ring);
        ++users;
        break;
      default:
        c.seconds += b.stream_s;
        c.slot_bytes = std::max(c.slot_bytes, b.stream_ring);
        ++users;
    }
  }
  c.slots = std::min(users, prefetch + 1);
  c.device_bytes = SatAdd(SatAdd(device, c.slot_bytes * static_cast<uint64_t>(c.slots)), staging);
  c.valid = c.device_bytes <= budget;
  return c;
}

// Slot sizes worth trying: every block's ring need, at most 128 of them
// (evenly picked), largest first.
std::vector<uint64_t> SlotSizes3(const std::vector<BlockCosts>& costs) {
  std::vector<uint64_t> sizes;
  for (const BlockCosts& c : costs) {
    sizes.push_back(c.stream_ring);
    if (c.can_code) sizes.push_back(c.coded_ring);
  }
  std::sort(sizes.begin(), sizes.end(), std::greater<uint64_t>());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  constexpr size_t kMax = 128;
  if (sizes.size() > kMax) {
    std::vector<uint64_t> picked;
    for (size_t j = 0; j < kMax; ++j) picked.push_back(sizes[j * sizes.size() / kMax]);
    sizes.swap(picked);
  }
  return sizes;
}

// The smallest budget a three-residency plan runs in (every block as cheap as a
// slot size allows).
uint64_t Minimum3(const std::vector<BlockCosts>& costs, uint64_t fixed, uint64_t staging, int prefetch) {
  uint64_t best = std::numeric_limits<uint64_t>::max();
  std::vector<uint8_t> state;
  for (uint64_t slot : SlotSizes3(costs)) {
    int users = 0;
    const uint64_t held = StartStates(costs, slot, &state, &users);
    if (users == 0) continue;
    const uint64_t ring = slot * static_cast<uint64_t>(std::min(users, prefetch + 1));
    best = std::min(best, SatAdd(SatAdd(SatAdd(fixed, held), ring), staging));
  }
  return best;
}

bool HasLayouts(const PlanRequest& req) { return !req.block_layout_bytes.empty(); }

std::vector<uint64_t> AlignedSizes(const PlanRequest& req) {
  std::vector<uint64_t> sizes;
  sizes.reserve(req.block_bytes.size());
  for (uint64_t b : req.block_bytes) sizes.push_back(AlignUp(b, req.alignment));
  return sizes;
}

Status Validate(const PlanRequest& req) {
  if (req.prefetch < 0) {
    return Status::InvalidArgument("prefetch must be >= 0, got " + std::to_string(req.prefetch));
  }
  if (req.alignment == 0) {
    return Status::InvalidArgument("alignment must be > 0");
  }
  if (req.block_layout_bytes.size() != req.block_transfer_bytes.size() ||
      (HasLayouts(req) && req.block_layout_bytes.size() != req.block_bytes.size())) {
    return Status::InvalidArgument("block_layout_bytes and block_transfer_bytes need one entry per block (" +
                                   std::to_string(req.block_bytes.size()) + "), got " +
                                   std::to_string(req.block_layout_bytes.size()) + " and " +
                                   std::to_string(req.block_transfer_bytes.size()));
  }
  for (size_t i = 0; i < req.block_layout_bytes.size(); ++i) {
    if (req.block_transfer_bytes[i] != 0 && req.block_layout_bytes[i] != req.block_bytes[i]) {
      return Status::InvalidArgument("block " + std::to_string(i) + ": a transformed block's block_bytes (" +
                                     std::to_string(req.block_bytes[i]) + ") must be its layout bytes (" +
                                     std::to_string(req.block_layout_bytes[i]) + ")");
    }
  }
  if (!(req.link_bytes_per_second > 0) || !(req.transform_bytes_per_second > 0)) {
    return Status::InvalidArgument("link and transform rates must be > 0 bytes/s");
  }
  if (!req.block_cuts.empty()) {
    if (req.block_cuts.size() != req.block_bytes.size()) {
      return Status::InvalidArgument("block_cuts has " + std::to_string(req.block_cuts.size()) + " entries for " +
                                     std::to_string(req.block_bytes.size()) + " blocks");
    }
    for (size_t i = 0; i < req.block_cuts.size(); ++i) {
      PINSTREAM_RETURN_IF_ERROR(CheckCuts(req.block_cuts[i], req.block_bytes[i], "block " + std::to_string(i)));
    }
  }
  return Status::Ok();
}

}  // namespace

uint64_t ResidencyPlan::MinimumBudget(const PlanRequest& request) {
  const std::vector<uint64_t> sizes = AlignedSizes(request);
  const uint64_t fixed = AlignUp(request.fixed_bytes, request.alignment);
  const uint64_t staging = AlignUp(request.staging_bytes, request.alignment);
  uint64_t total = fixed;
  for (uint64_t s : sizes) total = SatAdd(total, s);
  total = SatAdd(total, staging);
  if (request.policy == PlanPolicy::kAllResident || sizes.empty()) return total;
  const int slots_max = request.prefetch + 1;
  const int n = static_cast<int>(sizes.size());
  if (request.policy == PlanPolicy::kStreamAll) {
    const uint64_t largest = *std::max_element(sizes.begin(), sizes.end());
    return SatAdd(SatAdd(fixed, largest * static_cast<uint64_t>(std::min(n, slots_max))), staging);
  }
  if (HasLayouts(request)) {
    return std::min(total, Minimum3(CostsOf(request, sizes), fixed, staging, request.prefetch));
  }
  // Budget: smallest over slot sizes of fixed + blocks above it + ring.
  uint64_t best = total;
  for (uint64_t s : sizes) {
    uint64_t forced = 0;
    int m = 0;
    for (uint64_t b : sizes) {
      if (b > s)
        forced += b;
      else
        ++m;
    }
    const uint64_t cost = SatAdd(SatAdd(fixed, forced), s * static_cast<uint64_t>(std::min(m, slots_max)));
    best = std::min(best, cost);
  }
  return best;
}

Status ResidencyPlan::Make(const PlanRequest& request, ResidencyPlan* out) {
  PINSTREAM_RETURN_IF_ERROR(Validate(request));
  const std::vector<uint64_t> sizes = AlignedSizes(request);
  const uint64_t fixed = AlignUp(request.fixed_bytes, request.alignment);
  const int n = static_cast<int>(sizes.size());
  uint64_t total_blocks = 0;
  for (uint64_t s : sizes) total_blocks = SatAdd(total_blocks, s);

  ResidencyPlan plan;
  plan.fixed_bytes_ = fixed;
  plan.prefetch_ = request.prefetch;
  plan.policy_ = request.policy;
  plan.resident_.assign(n, 0);
  plan.prefix_.assign(n, 0);
  plan.staging_bytes_ = AlignUp(request.staging_bytes, request.alignment);

  const uint64_t minimum = MinimumBudget(request);
  if (request.budget_bytes < minimum) {
    uint64_t largest = 0;
    for (uint64_t s : sizes) largest = std::max(largest, s);
    std::string why;
    if (request.policy == PlanPolicy::kAllResident) {
      why = "every block resident (non-block " + FormatBytes(fixed) + " + blocks " + FormatBytes(total_blocks) + ")";
    } else {
      why = "prefetch " + std::to_string(request.prefetch) + ": non-block " + FormatBytes(fixed) + " + " +
            std::to_string(std::min(n, request.prefetch + 1)) +
            " slot(s) of the largest streamed block (largest block " + FormatBytes(largest) + ")";
    }
    if (plan.staging_bytes_ > 0) {
      why += " + the staging buffer of coded/fp8 transfers (" + FormatBytes(plan.staging_bytes_) + ")";
    }
    return Status::InvalidArgument("budget " + FormatBytes(request.budget_bytes) + " is below the minimum " +
                                   FormatBytes(minimum) + " for " + why +
                                   "; raise the budget, lower prefetch, or use sequential mode");
  }

  if (request.policy == PlanPolicy::kAllResident || n == 0 ||
      (request.policy == PlanPolicy::kBudget &&
       SatAdd(SatAdd(fixed, total_blocks), plan.staging_bytes_) <= request.budget_bytes)) {
    plan.resident_.assign(n, 1);
    plan.resident_block_bytes_ = total_blocks;
    *out = std::move(plan);
    return Status::Ok();
  }
  if (request.policy == PlanPolicy::kBudget && HasLayouts(request)) {
    const std::vector<BlockCosts> costs = CostsOf(request, sizes);
    std::vector<int> rank(n);
    const std::vector<int> order = SpreadOrder(n);
    for (int j = 0; j < n; ++j) rank[order[j]] = j;
    Candidate3 best;
    for (uint64_t slot : SlotSizes3(costs)) {
      Candidate3 c = Evaluate3(costs, rank, fixed, plan.staging_bytes_, request.budget_bytes, request.prefetch, slot);
      if (!c.valid) continue;
      if (!best.valid || c.seconds < best.seconds * (1 - 1e-9) ||
          (c.seconds <= best.seconds * (1 + 1e-9) && c.device_bytes < best.device_bytes)) {
        best = std::move(c);
      }
    }
    if (!best.valid)
      return Status::InvalidArgument("no residency plan fits budget " + FormatBytes(request.budget_bytes));
    plan.coded_.assign(n, 0);
    for (int i = 0; i < n; ++i) {
      switch (best.state[i]) {
        case kStored:
          plan.resident_[i] = 1;
          plan.resident_block_bytes_ += costs[i].stored;
          break;
        case kCoded:
          plan.coded_[i] = 1;
          plan.coded_block_bytes_ += costs[i].coded;
          break;
        default:  // what crosses the link: the transfer form of a transformed block
          plan.streamed_block_bytes_ +=
              request.block_transfer_bytes[i] != 0 ? request.block_transfer_bytes[i] : request.block_bytes[i];
      }
    }
    plan.slot_bytes_ = best.slot_bytes;
    plan.slot_count_ = best.slots;
    plan.copy_seconds_ = best.seconds;
    plan.link_rate_ = request.link_bytes_per_second;
    plan.transform_rate_ = request.transform_bytes_per_second;
    *out = std::move(plan);
    return Status::Ok();
  }

  const bool stream_all = request.policy == PlanPolicy::kStreamAll;
  std::vector<uint64_t> distinct = sizes;
  std::sort(distinct.begin(), distinct.end(), std::greater<uint64_t>());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  Candidate best;
  for (uint64_t slot : distinct) {
    Candidate c = Evaluate(sizes, fixed, request.budget_bytes, request.prefetch, slot, stream_all);
    if (!c.valid) continue;
    if (!best.valid || c.resident_bytes > best.resident_bytes) best = std::move(c);
    if (stream_all) break;  // only the largest slot size streams everything
  }
  if (!best.valid) {
    // Unreachable when the budget is >= the minimum; kept as a guard.
    return Status::InvalidArgument("no residency plan fits budget " + FormatBytes(request.budget_bytes));
  }
  if (request.policy == PlanPolicy::kBudget && !request.block_cuts.empty()) {
    Candidate split = BestSplit(request, sizes, fixed);
    if (split.valid && split.resident_bytes > best.resident_bytes) best = std::move(split);
  }
  plan.resident_ = std::move(best.resident);
  if (!best.prefix.empty()) plan.prefix_ = std::move(best.prefix);  // a split plan
  plan.slot_bytes_ = best.slot_bytes;
  plan.slot_count_ = best.slots;
  plan.resident_block_bytes_ = best.resident_bytes;
  plan.streamed_block_bytes_ = best.streamed_bytes;
  *out = std::move(plan);
  return Status::Ok();
}

int ResidencyPlan::num_resident() const {
  int r = 0;
  for (uint8_t v : resident_) r += v;
  return r;
}

int ResidencyPlan::num_coded() const {
  int r = 0;
  for (uint8_t v : coded_) r += v;
  return r;
}

int ResidencyPlan::num_split() const {
  int r = 0;
  for (uint64_t p : prefix_) r += p != 0 ? 1 : 0;
  return r;
}

std::string ResidencyPlan::Describe() const {
  const int splits = num_split(), coded = num_coded();
  std::string out =
      std::string(PlanPolicyName(policy_)) + ": " + std::to_string(num_resident()) + " of " +
      std::to_string(num_blocks()) + " blocks resident" +
      (splits > 0 ? ", " + std::to_string(splits) + " split (head resident, rest streamed)" : std::string()) + " (" +
      FormatBytes(resident_block_bytes_) + "), ";
  if (coded > 0) {
    out += std::to_string(coded) + " resident coded (" + FormatBytes(coded_block_bytes_) +
           ", decoded into a slot at each use), ";
  }
  out += std::to_string(num_streamed() - coded) + " streamed (" + FormatBytes(streamed_block_bytes_) + "), ring " +
         std::to_string(slot_count_) + " x " + FormatBytes(slot_bytes_) + ", non-block " + FormatBytes(fixed_bytes_) +
         ", device total " + FormatBytes(device_bytes()) + ", prefetch " + std::to_string(prefetch_);
  if (copy_seconds_ > 0) {
    char buf[192];
    std::snprintf(buf, sizeof(buf), "; copy queue %.1f ms per pass at link %.1f GB/s, decode %.1f GB/s",
                  copy_seconds_ * 1e3, link_rate_ / 1e9, transform_rate_ / 1e9);
    out += buf;
  }
  return out;
}

}  // namespace pinstream
