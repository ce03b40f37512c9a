#include "outbox-relay/commit_tracker.h"

#include <algorithm>

namespace concert::relay {

uint64_t CommitTracker::Begin() {
  std::lock_guard lock(mu_);
  Transaction t;
  t.seq = next_seq_++;
  open_.push_back(std::move(t));
  return open_.back().seq;
}

CommitTracker::Transaction* CommitTracker::Find(uint64_t tx) {
  // Transactions are few at a time (usually one or two); seqs are increasing, so the offset
  // from the front is exact.
  if (open_.empty() || tx < open_.front().seq) return nullptr;
  size_t index = tx - open_.front().seq;
  return index < open_.size() ? &open_[index] : nullptr;
}

void CommitTracker::AddEvent(uint64_t tx, int64_t row_id) {
  std::lock_guard lock(mu_);
  Transaction* t = Find(tx);
  if (t == nullptr) return;
  ++t->outstanding;
  ++pending_;
  if (t->first_added == absl::InfiniteFuture()) t->first_added = absl::Now();
}

void CommitTracker::End(uint64_t tx, Lsn end_lsn, absl::Time committed_at) {
  std::lock_guard lock(mu_);
  if (Transaction* t = Find(tx)) {
    t->ended = true;
    t->end_lsn = end_lsn;
    t->committed_at = committed_at;
  }
}

void CommitTracker::Acknowledge(uint64_t tx, int64_t row_id, const absl::Status& status) {
  std::lock_guard lock(mu_);
  Transaction* t = Find(tx);
  if (t == nullptr) return;
  --t->outstanding;
  --pending_;
  if (status.ok()) {
    t->row_ids.push_back(row_id);
  } else if (failure_.ok()) {
    failure_ = status;
  }
}

void CommitTracker::Withdraw(uint64_t tx) {
  std::lock_guard lock(mu_);
  Transaction* t = Find(tx);
  if (t == nullptr) return;
  --t->outstanding;
  --pending_;
}

CommitTracker::Confirmable CommitTracker::TakeConfirmable() {
  std::lock_guard lock(mu_);
  Confirmable out;
  // After a failure nothing more is confirmed: a later transaction's success must not cover
  // the failed one.
  if (!failure_.ok()) return out;
  while (!open_.empty() && open_.front().ended && open_.front().outstanding == 0) {
    Transaction& t = open_.front();
    out.lsn = t.end_lsn;
    out.committed_at = std::max(out.committed_at, t.committed_at);
    out.row_ids.insert(out.row_ids.end(), t.row_ids.begin(), t.row_ids.end());
    ++out.transactions;
    open_.pop_front();
  }
  return out;
}

bool CommitTracker::Idle() const {
  std::lock_guard lock(mu_);
  return open_.empty();
}

int64_t CommitTracker::pending_events() const {
  std::lock_guard lock(mu_);
  return pending_;
}

absl::Time CommitTracker::oldest_pending_since() const {
  std::lock_guard lock(mu_);
  for (const Transaction& t : open_) {
    if (t.outstanding > 0) return t.first_added;
  }
  return absl::InfiniteFuture();
}

absl::Status CommitTracker::failure() const {
  std::lock_guard lock(mu_);
  return failure_;
}

}  // namespace concert::relay
