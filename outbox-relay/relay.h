// outbox-relay: streams committed rows of payment.outbox_events from the Postgres WAL (logical
// replication, pgoutput, a slot of its own) to Kafka, and confirms a WAL position to Postgres
// only once Kafka acknowledged every event up to it. A crash therefore replays from the last
// confirmed position: duplicates are possible (the notifier dedups by event_id), loss is not.
//
//   Relay relay(options, metrics::Default(), [&](bool ok) { SetServing(*grpc, ok); });
//   relay.Run(StopRequested());   // returns after a stop was requested and in-flight work ended
//
// Run() owns the whole life cycle: it creates the topics, its schema `relay`, the publication
// and the slot when missing, re-queues the rows a new slot would not stream (outbox.h), streams,
// retries Postgres and Kafka outages with backoff, waits as a standby while another relay holds
// the slot, and deletes outbox rows whose events Kafka acknowledged.
//
// A row that can never be relayed (no topic for its type, undecodable, larger than Kafka
// accepts) is set aside: counted in relay_set_aside_events_total{reason}, logged, recorded with
// its reason in relay.set_aside_events, and left in the outbox for an operator; the stream goes
// on. Only a stage-level failure (Postgres or Kafka unreachable) stops the stream, and then it
// resumes from the last confirmed position.
//
// The parts: settings in options.h; a session (session.h) turns the stream into records and
// confirms them; the slot and the synchronous-standby wait are slot.h's; the series are
// relay_metrics.h's. This class owns what outlives a session: the producer, the backoff
// between sessions and health.
//
// Call Run() from one thread; the health callback is called from that thread.
#ifndef CONCERT_OUTBOX_RELAY_RELAY_H_
#define CONCERT_OUTBOX_RELAY_RELAY_H_

#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/kafka/admin.h"
#include "common/kafka/cluster.h"
#include "common/kafka/producer.h"
#include "common/metrics.h"
#include "outbox-relay/options.h"

namespace concert::relay {

struct RelayMetrics;

class Relay {
 public:
  Relay(RelayOptions options, metrics::Registry& registry,
        std::function<void(bool serving)> on_health = nullptr);
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  void Run(const absl::Notification& stop);

 private:
  absl::Status PrepareKafka();
  // Schema `relay`, once per process.
  absl::Status PreparePostgres();
  void SetHealth(bool serving);
  // Between sessions: the slot's lag and retained WAL as the server sees them.
  void MeasureSlotFromOutside();

  RelayOptions options_;
  std::unique_ptr<RelayMetrics> metrics_;
  std::function<void(bool)> on_health_;
  std::unique_ptr<kafka::Producer> producer_;
  bool kafka_suspect_ = true;
  kafka::RefusalLog refusals_;  // probe Kafka (and create topics) before the next session
  bool schema_ready_ = false;  // schema `relay` migrated by this process
  absl::Time next_outside_measure_ = absl::InfinitePast();
  bool serving_ = false;
  bool health_reported_ = false;
};

}  // namespace concert::relay

#endif  // CONCERT_OUTBOX_RELAY_RELAY_H_
