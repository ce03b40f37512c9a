// One streaming session of the relay: turns the rows the slot streams into Kafka records and
// confirms their WAL position once Kafka acknowledged them.
//
//   Session session(options, metrics, producer, [&](bool serving) { SetHealth(serving); });
//   absl::Status ended = session.Run(stop);  // OK after a stop; otherwise why it ended
//   if (IsKafkaFailure(ended)) ...           // replace the producer before the next session
//
// Per transaction of the stream: decode (pgoutput.h), route each outbox row to its topic by
// event type, set aside what can never be relayed (outbox.h's RecordSetAside, a metric and a
// log line; the stream goes on), produce the rest in commit order, and track them
// (commit_tracker.h). With synchronous replication a transaction is produced only once the
// synchronous standbys have its commit (slot.h's SyncStandby). Every STATUS_INTERVAL the rows
// of acknowledged transactions are deleted from the outbox, then their position is confirmed,
// in that order, so that a crash in between loses nothing.
//
// Any error ends the session (the Relay starts a new one from the slot's confirmed position):
// a Kafka failure is marked (IsKafkaFailure), a slot held by another relay is a standby
// status (slot.h's IsStandby), anything else is Postgres'. A stop waits up to 10 s for Kafka's
// answers to what was sent, confirms what they cover, and returns OK.
//
// Run() from one thread; `set_health` is called from it. Delivery callbacks run on
// librdkafka's thread and touch only the commit tracker and the metrics, both thread-safe.
#ifndef CONCERT_OUTBOX_RELAY_SESSION_H_
#define CONCERT_OUTBOX_RELAY_SESSION_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include <pqxx/pqxx>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/kafka/producer.h"
#include "outbox-relay/commit_tracker.h"
#include "outbox-relay/options.h"
#include "outbox-relay/outbox.h"
#include "outbox-relay/pgoutput.h"
#include "outbox-relay/relay_metrics.h"
#include "outbox-relay/slot.h"

namespace concert::relay {

// Marks a session that ended because of Kafka (the producer is then recreated).
absl::Status KafkaFailure(const absl::Status& cause);
bool IsKafkaFailure(const absl::Status& status);

class Session {
 public:
  // Everything given must outlive the session.
  Session(const RelayOptions& options, RelayMetrics& metrics, kafka::Producer& producer,
          std::function<void(bool serving)> set_health);
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Returns when `stop` is notified (after finishing in-flight work) or on an error.
  absl::Status Run(const absl::Notification& stop);

 private:
  // Positions of the columns the relay reads in the outbox's relation.
  struct OutboxColumns {
    int id = -1, event_id = -1, aggregate_id = -1, event_type = -1, payload = -1, headers = -1;
  };

  absl::Status Prepare();
  absl::Status Handle(absl::string_view copy_data);
  absl::Status HandleRelation(const Relation& relation);
  absl::Status HandleInsert(const Insert& insert);
  // Records why an event is not relayed; the stream goes on without it.
  absl::Status SetAsideEvent(const SetAside& entry);
  absl::Status Periodic(bool force_status);
  absl::Status CleanupAndConfirm();
  absl::Status SendStatus(bool reply_requested);
  void MeasureStranded();
  absl::Status Drain();

  const RelayOptions& o_;
  RelayMetrics& m_;
  kafka::Producer& producer_;
  std::function<void(bool)> set_health_;
  std::unique_ptr<pqxx::connection> catalog_;
  std::unique_ptr<SlotStream> stream_;
  // Set when the server has synchronous_standby_names: a transaction is relayed only once the
  // synchronous standbys have it.
  std::optional<SyncStandby> sync_standby_;
  // With sync_standby_, the open transaction's inserts: only its Commit says where its
  // commit record ends. pgoutput sends a transaction whole once it committed, so holding them
  // costs no time, and memory only for the size of one transaction.
  std::vector<Insert> held_inserts_;
  std::shared_ptr<CommitTracker> tracker_ = std::make_shared<CommitTracker>();

  std::map<uint32_t, OutboxColumns> relations_;  // outbox relation ids -> column positions
  std::optional<uint64_t> tx_;
  int64_t tx_commit_time_ = 0;

  Lsn received_ = 0;        // highest WAL position seen in the stream
  Lsn server_end_ = 0;      // the server's WAL end as last reported
  Lsn confirmed_ = 0;       // what we report as flushed; 0 until known
  Lsn acked_lsn_ = 0;       // acknowledged by Kafka, confirmed once to_delete_ is deleted
  std::vector<int64_t> to_delete_;
  // Every outbox row committed before this moment has been streamed and deleted (or set
  // aside), so one committed well before it and still in the outbox was left behind: the
  // commit time of the last confirmed transaction, or the last moment nothing received was
  // waiting for Kafka or deletion.
  absl::Time streamed_through_ = absl::InfinitePast();
  absl::Time confirmable_committed_at_ = absl::InfinitePast();  // of what to_delete_ holds
  absl::Time last_loop_ = absl::InfinitePast();  // see kPauseCheckAfter in session.cc
  absl::Time next_status_ = absl::InfinitePast();
  absl::Time next_slot_stats_ = absl::InfinitePast();
};

}  // namespace concert::relay

#endif  // CONCERT_OUTBOX_RELAY_SESSION_H_
