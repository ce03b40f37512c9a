// outbox-relay's settings, one field per setting, read from the environment or flags through
// common Settings (so `outbox-relay --help` lists them all with their defaults and ranges).
//
//   Settings settings("outbox-relay", argc, argv);
//   relay::ServiceOptions options = relay::ReadOptions(settings);  // each value in range
//   settings.ExitIfInvalid();                   // --help, or one line naming it, exit 2
//   absl::Status valid = options.Validate();    // settings that must agree
//
// RelayOptions is what a Relay needs (tests fill it directly); ServiceOptions adds what the
// binary needs around it. Validate() checks what no single setting can (Postgres identifiers,
// a first backoff longer than the longest, a log level) and derives the fields marked
// "derived"; its error names the setting. Plain structs: copy them freely, no thread-safety concerns.
#ifndef CONCERT_OUTBOX_RELAY_OPTIONS_H_
#define CONCERT_OUTBOX_RELAY_OPTIONS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/config.h"
#include "common/kafka/cluster.h"
#include "common/log.h"

namespace concert::relay {

struct RelayOptions {
  // DATABASE_URL (required): Postgres (URL or key=value); the role needs REPLICATION (and
  // rights to create the publication). The replication connection adds replication=database.
  std::string database_url;
  // KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL, ...: the producer's cluster
  // (kafka::ReadCluster).
  kafka::Cluster kafka;
  // PAYMENT_COMPLETED_TOPIC: event type PaymentCompleted goes here.
  std::string payment_completed_topic = "payment-completed-topic";
  // TOPIC_PARTITIONS: of PAYMENT_COMPLETED_TOPIC when the relay creates it.
  int topic_partitions = 3;
  // DLQ_TOPIC / DLQ_PARTITIONS: created at start for the notifier and retry-worker; the relay
  // writes nothing to it.
  std::string dlq_topic = "payment-notification-dlq";
  int dlq_partitions = 1;
  // UNKNOWN_EVENT_TOPIC: where events of a type without a topic go. Empty (the default): they
  // are set aside like every event that cannot be relayed (see relay.h); the stream goes on.
  std::string unknown_event_topic;
  // REPLICATION_SLOT / PUBLICATION: Postgres identifiers (lower case, digits, _).
  std::string slot = "concert_outbox_relay";
  std::string publication = "concert_outbox";
  // STATUS_INTERVAL: how often the confirmed position is reported to Postgres (and outbox rows
  // deleted). At most half of Postgres' default wal_sender_timeout (60 s): longer confirms too
  // late to keep the slot's WAL and the outbox small.
  absl::Duration status_interval = absl::Seconds(1);
  // CLEANUP_BATCH: outbox rows are deleted in batches of at most this many ids.
  int cleanup_batch = 5000;
  // KAFKA_MESSAGE_TIMEOUT: a record not acknowledged within this time fails, and the relay
  // restarts the stream from the last confirmed position (librdkafka's message.timeout.ms).
  absl::Duration kafka_message_timeout = absl::Seconds(60);
  // KAFKA_STALL_THRESHOLD: events waiting longer than this for Kafka make the relay report
  // NOT_SERVING.
  absl::Duration kafka_stall_threshold = absl::Seconds(10);
  // BACKOFF_INITIAL / BACKOFF_MAX: the waits before a new session after an error (common
  // Backoff: doubled per failure, started over after a session that streamed for a while).
  absl::Duration backoff_initial = absl::Milliseconds(200);
  absl::Duration backoff_max = absl::Seconds(10);
  // STANDBY_POLL_INTERVAL: how often a standby tries to take the slot over.
  absl::Duration standby_poll_interval = absl::Seconds(1);
  // SLOT_STATS_INTERVAL: how often the slot's retained WAL and the stranded outbox rows are
  // measured.
  absl::Duration slot_stats_interval = absl::Seconds(10);
  // STRANDED_AFTER: an outbox row still there this long after the stream moved past it is
  // "stranded": counted (relay_outbox_stranded_rows) and logged, whatever the cause.
  absl::Duration stranded_after = absl::Minutes(5);
};

struct ServiceOptions {
  RelayOptions relay;
  // OLDER_THAN: `outbox-relay requeue` re-queues only outbox rows created this long ago.
  absl::Duration requeue_older_than = absl::Minutes(1);
  // GRPC_ADDRESS: the gRPC health service. Port 0 picks a free port.
  std::string grpc_address = "127.0.0.1:50053";
  // METRICS_ADDRESS: Prometheus /metrics. Port 0 picks a free port.
  std::string metrics_address = "127.0.0.1:9102";
  // LOG_LEVEL: debug, info, warn or error.
  std::string log_level = "info";
  // Derived from log_level by Validate().
  log::Level level = log::Level::kInfo;

  // INVALID_ARGUMENT, its message starting with the setting's name, when settings that are
  // each within range cannot be used together (or a name cannot be a Postgres identifier);
  // otherwise derives the fields marked "derived".
  absl::Status Validate();
};

// Reads every setting (unconditionally, so --help lists them all); a value out of range is
// reported by settings.Validate() / ExitIfInvalid().
ServiceOptions ReadOptions(Settings& settings);

}  // namespace concert::relay

#endif  // CONCERT_OUTBOX_RELAY_OPTIONS_H_
