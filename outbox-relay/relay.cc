#include "outbox-relay/relay.h"

#include <string>
#include <utility>
#include <vector>

#include <pqxx/pqxx>

#include "absl/time/clock.h"
#include "common/backoff.h"
#include "common/log.h"
#include "common/postgres.h"
#include "common/status.h"
#include "outbox-relay/outbox.h"
#include "outbox-relay/relay_metrics.h"
#include "outbox-relay/session.h"
#include "outbox-relay/slot.h"

namespace concert::relay {

Relay::Relay(RelayOptions options, metrics::Registry& registry,
             std::function<void(bool)> on_health)
    : options_(std::move(options)),
      metrics_(std::make_unique<RelayMetrics>(registry)),
      on_health_(std::move(on_health)) {}

Relay::~Relay() = default;

void Relay::SetHealth(bool serving) {
  if (health_reported_ && serving == serving_) return;
  health_reported_ = true;
  serving_ = serving;
  if (on_health_) on_health_(serving);
}

void Relay::MeasureSlotFromOutside() {
  absl::Time now = absl::Now();
  if (now < next_outside_measure_) return;
  next_outside_measure_ = now + options_.slot_stats_interval;
  try {
    pqxx::connection conn(WithConnectDefaults(options_.database_url));
    metrics_->MeasureSlot(conn, options_.slot);
  } catch (const std::exception&) {
    // Postgres is down: relay_postgres_up already says so.
  }
}

absl::Status Relay::PrepareKafka() {
  if (!kafka_suspect_ && producer_ != nullptr) return absl::OkStatus();
  // Creating the topics doubles as the probe that Kafka is back.
  std::vector<kafka::TopicSpec> topics = {
      {.name = options_.payment_completed_topic, .partitions = options_.topic_partitions},
      {.name = options_.dlq_topic, .partitions = options_.dlq_partitions}};
  if (!options_.unknown_event_topic.empty()) {
    topics.push_back({.name = options_.unknown_event_topic, .partitions = 1});
  }
  RETURN_IF_ERROR(kafka::EnsureTopics(options_.kafka, topics, absl::Seconds(10)));
  // A producer whose delivery failed is replaced: its queue may hold records that are now
  // out of order with the replay.
  producer_.reset();
  kafka::Config config = kafka::ProducerConfig(options_.kafka, "outbox-relay");
  config["message.timeout.ms"] =
      std::to_string(absl::ToInt64Milliseconds(options_.kafka_message_timeout));
  ASSIGN_OR_RETURN(producer_, kafka::Producer::Create(config));
  kafka_suspect_ = false;
  return absl::OkStatus();
}

absl::Status Relay::PreparePostgres() {
  if (schema_ready_) return absl::OkStatus();
  RETURN_IF_ERROR(MigrateSchema(options_.database_url));
  schema_ready_ = true;
  return absl::OkStatus();
}

void Relay::Run(const absl::Notification& stop) {
  metrics_->active.Set(0);
  SetHealth(false);
  Backoff backoff(options_.backoff_initial, options_.backoff_max);
  bool standby_logged = false;
  while (!stop.HasBeenNotified()) {
    absl::Status status = PrepareKafka();
    metrics_->kafka_up.Set(status.ok() ? 1 : 0);
    absl::Time started = absl::Now();
    if (!status.ok()) {
      status = KafkaFailure(status);
    } else if (status = PreparePostgres(); status.ok()) {
      Session session(options_, *metrics_, *producer_,
                      [this](bool serving) { SetHealth(serving); });
      status = session.Run(stop);
    }
    metrics_->active.Set(0);
    metrics_->postgres_up.Set(0);
    metrics_->pending.Set(0);
    SetHealth(false);
    if (stop.HasBeenNotified()) break;

    MeasureSlotFromOutside();
    absl::Duration wait;
    if (IsStandby(status)) {
      metrics_->postgres_up.Set(1);
      if (!standby_logged) {
        log::Info("slot held by another relay; waiting as standby",
                  {{"slot", options_.slot}, {"detail", std::string(status.message())}});
        standby_logged = true;
      }
      wait = options_.standby_poll_interval;
    } else {
      standby_logged = false;
      if (IsKafkaFailure(status)) {
        metrics_->restarts_kafka.Increment();
        metrics_->kafka_up.Set(0);
        kafka_suspect_ = true;
      } else {
        metrics_->restarts_postgres.Increment();
      }
      // A session that streamed for a while was healthy: start the backoff over.
      if (absl::Now() - started > absl::Seconds(30)) backoff.Reset();
      wait = backoff.Next();
      if (!refusals_.Report(status, "preparing Kafka")) {
        log::Warn("stream interrupted; restarting from the confirmed position",
                  {{"error", std::string(status.message())},
                   {"retry_in_ms", absl::ToInt64Milliseconds(wait)}});
      }
    }
    stop.WaitForNotificationWithTimeout(wait);
  }
  producer_.reset();  // flushes what is still queued
}

}  // namespace concert::relay
