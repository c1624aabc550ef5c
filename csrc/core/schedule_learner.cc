// Copyright PinStream authors. SPDX-License-Identifier: Apache-2.0
#include "core/schedule_learner.h"

#include <algorithm>

namespace pinstream {

void ScheduleLearner::BeginPass() {
  if (in_pass_) EndPass();
  in_pass_ = true;
  current_.clear();
  pos_ = 0;
  deviated_ = false;
}

bool ScheduleLearner::Observe(int block) {
  if (!in_pass_) BeginPass();
  current_.push_back(block);
  if (!learned_) return false;
  if (pos_ < order_.size() && order_[pos_] == block) {
    ++pos_;
    return true;
  }
  // Look ahead: blocks between pos_ and the match were skipped this pass.
  for (size_t q = pos_ + 1; q < order_.size(); ++q) {
    if (order_[q] == block) {
      skips_ += q - pos_;
      pos_ = q + 1;
      return false;
    }
  }
  // Out of order (or unknown): this pass will replace the order at its end.
  deviated_ = true;
  for (size_t q = 0; q < order_.size(); ++q) {
    if (order_[q] == block) {
      pos_ = q + 1;
      return false;
    }
  }
  return false;
}

void ScheduleLearner::EndPass() {
  if (!in_pass_) return;
  in_pass_ = false;
  ++passes_;
  if (current_.empty()) return;
  if (!learned_) {
    order_ = current_;
    learned_ = true;
  } else if (deviated_) {
    order_ = current_;
    ++relearns_;
  }
  pos_ = 0;
}

void ScheduleLearner::Predict(int k, const std::vector<uint8_t>& eligible, std::vector<int>* out) const {
  out->clear();
  const size_t n = order_.size();
  if (!learned_ || n == 0 || k <= 0) return;
  // Positions after the current one, wrapping once into the next pass.
  const size_t start = in_pass_ ? pos_ : 0;
  for (size_t step = 0; step < n && static_cast<int>(out->size()) < k; ++step) {
    const int b = order_[(start + step) % n];
    if (!eligible.empty() && (b < 0 || static_cast<size_t>(b) >= eligible.size() || !eligible[b])) {
      continue;
    }
    if (std::find(out->begin(), out->end(), b) != out->end()) continue;
    out->push_back(b);
  }
}

}  // namespace pinstream
