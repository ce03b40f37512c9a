// Which WAL position the relay may confirm to Postgres: the end LSN of a commit becomes
// confirmable only when every event of that transaction and of all earlier transactions has
// been acknowledged by Kafka. Confirming is what makes Postgres forget a transaction, so this
// class is the relay's no-loss guarantee.
//
//   CommitTracker t;                          // one per streaming session
//   uint64_t tx = t.Begin();                  // at pgoutput Begin (stream thread)
//   t.AddEvent(tx, row_id);                   // before producing each event
//   producer.Produce(..., [&](absl::Status s) { t.Acknowledge(tx, row_id, s); });  // poll thread
//   t.End(tx, commit.end_lsn, commit_time);   // at pgoutput Commit
//   CommitTracker::Confirmable c = t.TakeConfirmable();  // c.lsn, c.row_ids to delete
//
// Any failed acknowledgement latches failure(): the session must then be torn down and
// restarted from the last confirmed position (duplicates, never a gap). Thread-safe.
#ifndef CONCERT_OUTBOX_RELAY_COMMIT_TRACKER_H_
#define CONCERT_OUTBOX_RELAY_COMMIT_TRACKER_H_

#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "outbox-relay/pgoutput.h"

namespace concert::relay {

class CommitTracker {
 public:
  struct Confirmable {
    Lsn lsn = 0;                    // 0 when no transaction completed since the last call
    std::vector<int64_t> row_ids;   // outbox rows of those transactions, safe to delete
    int64_t transactions = 0;
    absl::Time committed_at = absl::InfinitePast();  // commit time of the last of those
  };

  // Opens the next transaction (they complete in commit order, as the stream delivers them).
  uint64_t Begin();
  // One more event of transaction `tx` awaits Kafka; `row_id` is its outbox row.
  void AddEvent(uint64_t tx, int64_t row_id);
  // The transaction's commit was received; `end_lsn` is what confirming it means, and
  // `committed_at` when Postgres committed it.
  void End(uint64_t tx, Lsn end_lsn, absl::Time committed_at = absl::InfinitePast());
  // Kafka's answer for one event added with AddEvent.
  void Acknowledge(uint64_t tx, int64_t row_id, const absl::Status& status);
  // Takes back one event added with AddEvent that was never handed to Kafka (set aside): the
  // transaction no longer waits for it, and its row is not deleted.
  void Withdraw(uint64_t tx);

  // Pops the longest prefix of ended, fully acknowledged transactions.
  Confirmable TakeConfirmable();

  // No open transaction and nothing waiting for Kafka: everything received is done.
  bool Idle() const;
  int64_t pending_events() const;
  // When the oldest event still waiting for Kafka was added; InfiniteFuture when none.
  absl::Time oldest_pending_since() const;
  // The first delivery error, or OK.
  absl::Status failure() const;

 private:
  struct Transaction {
    uint64_t seq = 0;
    bool ended = false;
    Lsn end_lsn = 0;
    absl::Time committed_at = absl::InfinitePast();
    int64_t outstanding = 0;
    std::vector<int64_t> row_ids;
    absl::Time first_added = absl::InfiniteFuture();
  };
  Transaction* Find(uint64_t tx);  // requires mu_

  mutable std::mutex mu_;
  std::deque<Transaction> open_;  // in commit order
  uint64_t next_seq_ = 1;
  int64_t pending_ = 0;
  absl::Status failure_;
};

}  // namespace concert::relay

#endif  // CONCERT_OUTBOX_RELAY_COMMIT_TRACKER_H_
