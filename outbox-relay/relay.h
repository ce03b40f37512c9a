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
// Call Run() from one thread; the health callback is called from that thread.
#ifndef CONCERT_OUTBOX_RELAY_RELAY_H_
#define CONCERT_OUTBOX_RELAY_RELAY_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/kafka.h"
#include "common/metrics.h"

namespace concert::relay {

struct RelayOptions {
  // Postgres (URL or key=value); the role needs REPLICATION (and rights to create the
  // publication). The replication connection adds replication=database to it.
  std::string database_url;
  kafka::Cluster kafka;
  // Event type PaymentCompleted goes here.
  std::string payment_completed_topic = "payment-completed-topic";
  int topic_partitions = 3;
  // Created at start for the notifier and retry-worker; the relay writes nothing to it.
  std::string dlq_topic = "payment-notification-dlq";
  int dlq_partitions = 1;
  // Where events of a type without a topic go. Empty (the default): they are set aside like
  // every event that cannot be relayed (see Relay); the stream goes on.
  std::string unknown_event_topic;
  std::string slot = "concert_outbox_relay";
  std::string publication = "concert_outbox";
  // How often the confirmed position is reported to Postgres (and outbox rows deleted).
  absl::Duration status_interval = absl::Seconds(1);
  // Outbox rows are deleted in batches of at most this many ids.
  int cleanup_batch = 5000;
  // A record not acknowledged within this time fails, and the relay restarts the stream
  // from the last confirmed position.
  absl::Duration kafka_message_timeout = absl::Seconds(60);
  // Events waiting longer than this for Kafka make the relay report NOT_SERVING.
  absl::Duration kafka_stall_threshold = absl::Seconds(10);
  absl::Duration backoff_initial = absl::Milliseconds(200);
  absl::Duration backoff_max = absl::Seconds(10);
  // How often a standby tries to take the slot over.
  absl::Duration standby_poll_interval = absl::Seconds(1);
  // How often the slot's retained WAL and the stranded outbox rows are measured.
  absl::Duration slot_stats_interval = absl::Seconds(10);
  // An outbox row still there this long after the stream moved past it is "stranded": counted
  // (relay_outbox_stranded_rows) and logged, whatever the cause.
  absl::Duration stranded_after = absl::Minutes(5);
};

// INVALID_ARGUMENT naming the setting when a name cannot be used as a Postgres identifier
// or a count is out of range.
absl::Status ValidateOptions(const RelayOptions& options);

class Relay {
 public:
  Relay(RelayOptions options, metrics::Registry& registry,
        std::function<void(bool serving)> on_health = nullptr);
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  void Run(const absl::Notification& stop);

 private:
  class Session;
  struct Metrics;

  absl::Status PrepareKafka();
  void SetHealth(bool serving);
  // Between sessions: the slot's lag and retained WAL as the server sees them.
  void MeasureSlotFromOutside();

  RelayOptions options_;
  std::unique_ptr<Metrics> metrics_;
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
