// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
//
// ScheduleLearner records the order in which blocks run during the first pass
// (one forward of the model) and predicts the next blocks at any point, so the
// runtime can upload them ahead of time. Predictions wrap from the end of one
// pass to the start of the next.
//
// It copes with:
//  * a block that runs twice in a pass: the order simply contains it twice;
//  * a block skipped in some passes: a pass whose sequence is a subsequence of
//    the learned order keeps the order (the skip is counted);
//  * a changed order: a pass that runs a block the order did not expect at
//    that point is recorded, and at the end of that pass its sequence becomes
//    the new order (a re-learn, counted).
//
// Pass boundaries are explicit (BeginPass/EndPass). All methods are O(1)
// amortised except a mismatch, which scans the order once; nothing allocates
// once the first pass has been recorded.
#ifndef PINSTREAM_CORE_SCHEDULE_LEARNER_H_
#define PINSTREAM_CORE_SCHEDULE_LEARNER_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pinstream {

class ScheduleLearner {
 public:
  ScheduleLearner() = default;

  void BeginPass();
  // Records that `block` is about to run. Returns true when it is the block
  // the learned order expected next.
  bool Observe(int block);
  void EndPass();

  // Appends to `out` (after clearing it) up to `k` distinct blocks predicted to
  // run after the current point, skipping blocks for which eligible[block] is
  // 0 (e.g. resident blocks). Wraps into the next pass at most once around the
  // order. `eligible` may be empty (every block eligible).
  void Predict(int k, const std::vector<uint8_t>& eligible, std::vector<int>* out) const;

  bool learned() const { return learned_; }
  bool in_pass() const { return in_pass_; }
  const std::vector<int>& order() const { return order_; }
  uint64_t relearns() const { return relearns_; }
  uint64_t skips() const { return skips_; }
  uint64_t passes() const { return passes_; }

 private:
  std::vector<int> order_;
  std::vector<int> current_;
  size_t pos_ = 0;  // index in order_ of the next expected block
  bool learned_ = false;
  bool in_pass_ = false;
  bool deviated_ = false;  // this pass ran a block out of the learned order
  uint64_t relearns_ = 0;
  uint64_t skips_ = 0;
  uint64_t passes_ = 0;
};

}  // namespace pinstream

#endif  // PINSTREAM_CORE_SCHEDULE_LEARNER_H_
