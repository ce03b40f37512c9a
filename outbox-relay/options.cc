#include "outbox-relay/options.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace concert::relay {
namespace {

// The names the relay puts into SQL and replication commands unquoted.
bool IsIdentifier(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  for (char c : name) {
    if (!(absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '_')) return false;
  }
  return !absl::ascii_isdigit(name[0]);
}

}  // namespace

absl::Status ServiceOptions::Validate() {
  if (!log::ParseLevel(log_level, &level)) {
    return absl::InvalidArgumentError(
        absl::StrCat("LOG_LEVEL: unknown level \"", log_level, "\""));
  }
  const RelayOptions& o = relay;
  if (!IsIdentifier(o.slot)) {
    return absl::InvalidArgumentError(
        "REPLICATION_SLOT: use lower-case letters, digits and _ (at most 63)");
  }
  if (!IsIdentifier(o.publication)) {
    return absl::InvalidArgumentError(
        "PUBLICATION: use lower-case letters, digits and _ (at most 63)");
  }
  if (o.payment_completed_topic.empty()) {
    return absl::InvalidArgumentError("PAYMENT_COMPLETED_TOPIC must not be empty");
  }
  if (o.topic_partitions < 1 || o.dlq_partitions < 1) {
    return absl::InvalidArgumentError("TOPIC_PARTITIONS and DLQ_PARTITIONS must be at least 1");
  }
  if (o.backoff_initial > o.backoff_max) {
    return absl::InvalidArgumentError(absl::StrCat(
        "BACKOFF_INITIAL (", absl::FormatDuration(o.backoff_initial),
        ") must not exceed BACKOFF_MAX (", absl::FormatDuration(o.backoff_max), ")"));
  }
  return absl::OkStatus();
}

ServiceOptions ReadOptions(Settings& s) {
  ServiceOptions options;
  RelayOptions& o = options.relay;
  o.database_url = s.RequiredString("DATABASE_URL", "Postgres URL (role with REPLICATION)");
  o.kafka = kafka::ReadCluster(s);
  o.payment_completed_topic = s.String("PAYMENT_COMPLETED_TOPIC", o.payment_completed_topic,
                                       "topic for PaymentCompleted events");
  o.topic_partitions =
      static_cast<int>(s.Int("TOPIC_PARTITIONS", o.topic_partitions, 1, 10000,
                             "partitions of PAYMENT_COMPLETED_TOPIC when created"));
  o.dlq_topic =
      s.String("DLQ_TOPIC", o.dlq_topic, "dead-letter topic, created at start when missing");
  o.dlq_partitions = static_cast<int>(
      s.Int("DLQ_PARTITIONS", o.dlq_partitions, 1, 10000, "partitions of DLQ_TOPIC when created"));
  o.unknown_event_topic = s.String("UNKNOWN_EVENT_TOPIC", o.unknown_event_topic,
                                   "topic for event types without one; empty: set aside "
                                   "(relay.set_aside_events), row kept in the outbox");
  o.slot = s.String("REPLICATION_SLOT", o.slot, "logical replication slot");
  o.publication = s.String("PUBLICATION", o.publication, "publication on the outbox table");
  o.status_interval =
      s.Duration("STATUS_INTERVAL", o.status_interval, absl::Milliseconds(100), absl::Seconds(30),
                 "how often the confirmed WAL position is reported and rows deleted");
  o.cleanup_batch = static_cast<int>(
      s.Int("CLEANUP_BATCH", o.cleanup_batch, 1, 1000000, "outbox rows deleted per statement"));
  // librdkafka's message.timeout.ms: 0 would mean "never", and it takes an int32 of ms.
  o.kafka_message_timeout =
      s.Duration("KAFKA_MESSAGE_TIMEOUT", o.kafka_message_timeout, absl::Seconds(1),
                 absl::Hours(1), "a record unacknowledged this long fails and the stream restarts");
  o.kafka_stall_threshold = s.Duration(
      "KAFKA_STALL_THRESHOLD", o.kafka_stall_threshold, absl::Seconds(1), absl::Hours(1),
      "events waiting longer than this for Kafka make health NOT_SERVING");
  o.backoff_initial =
      s.Duration("BACKOFF_INITIAL", o.backoff_initial, absl::Milliseconds(10), absl::Minutes(1),
                 "first wait before reconnecting after an error");
  o.backoff_max = s.Duration("BACKOFF_MAX", o.backoff_max, absl::Milliseconds(100),
                             absl::Minutes(10), "longest wait between reconnects");
  o.standby_poll_interval =
      s.Duration("STANDBY_POLL_INTERVAL", o.standby_poll_interval, absl::Milliseconds(100),
                 absl::Minutes(5), "how often a standby tries to take over the slot");
  o.slot_stats_interval =
      s.Duration("SLOT_STATS_INTERVAL", o.slot_stats_interval, absl::Seconds(1), absl::Hours(1),
                 "how often the slot's lag, retained WAL and stranded outbox rows are measured");
  o.stranded_after =
      s.Duration("STRANDED_AFTER", o.stranded_after, absl::Seconds(1), absl::Hours(24 * 7),
                 "an outbox row left this long behind the stream is counted and logged");
  options.requeue_older_than =
      s.Duration("OLDER_THAN", options.requeue_older_than, absl::ZeroDuration(),
                 absl::Hours(24 * 365), "requeue: only outbox rows created at least this long ago");
  options.grpc_address =
      s.ListenAddress("GRPC_ADDRESS", options.grpc_address, "gRPC health service address");
  options.metrics_address =
      s.ListenAddress("METRICS_ADDRESS", options.metrics_address, "Prometheus /metrics address");
  options.log_level = s.String("LOG_LEVEL", options.log_level, "debug, info, warn or error");
  return options;
}

}  // namespace concert::relay
