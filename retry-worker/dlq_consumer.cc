#include "retry-worker/dlq_consumer.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/backoff.h"
#include "common/kafka/headers.h"
#include "common/log.h"
#include "common/status.h"

namespace concert::retry {
namespace {

constexpr char kUnstorableClass[] = "unstorable";
constexpr char kPoisonNote[] =
    "parked at once: a poison message cannot succeed by retrying; fix the cause, then Retry";

// Partition, offset and timestamp only say where the record came from: a header that is no
// number of the column's width reads as -1 ("unknown") rather than failing the record.
template <typename Int>
Int HeaderInt(const RdKafka::Message& m, const char* name, Int fallback) {
  std::optional<std::string> value = kafka::HeaderValue(m, name);
  Int parsed;
  if (value && absl::SimpleAtoi(*value, &parsed)) return parsed;
  return fallback;
}

std::string HeaderText(const RdKafka::Message& m, const char* name) {
  return DisplayText(kafka::HeaderValue(m, name).value_or(""));
}

void AddParkReason(DlqEntry& e, absl::string_view reason) {
  absl::StrAppend(&e.park_reason, e.park_reason.empty() ? "" : "; ", reason);
}

// The row for a DLQ record Postgres refused (`why`): keyed "unstorable:<dlq topic>:<partition>:
// <offset>", its key, payload and every header (the dead-letter ones too) as bytes, parked at
// once. Only values we control go into its text columns, so only Postgres itself can fail it.
DlqEntry UnstorableDlqEntry(const RdKafka::Message& m, const absl::Status& why) {
  DlqEntry e;
  e.event_id = absl::StrCat("unstorable:", m.topic_name(), ":", m.partition(), ":", m.offset());
  if (m.key() != nullptr) e.key = *m.key();
  if (m.payload() != nullptr) e.payload.assign(static_cast<const char*>(m.payload()), m.len());
  e.headers = kafka::AllHeaders(m);  // every header, the dead-letter ones too
  e.error_class = kUnstorableClass;
  e.error_message = DisplayText(why.message());
  AddParkReason(e, absl::StrCat("parked at once: DLQ record ", m.topic_name(), "/",
                                m.partition(), "@", m.offset(),
                                " could not be stored as it came; its key, payload and "
                                "headers are kept here as bytes"));
  return e;
}

// True when Postgres could not be used at all, as opposed to refusing what one record holds.
bool IsPostgresUnavailable(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:        // connection lost or refused, disk full, read-only
    case absl::StatusCode::kResourceExhausted:  // no pooled connection free in time
    case absl::StatusCode::kUnknown:            // commit outcome unknown (Record is idempotent)
    case absl::StatusCode::kAborted:            // serialization failures, retried too often
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kCancelled:
      return true;
    default:
      return false;
  }
}

}  // namespace

DlqEntry ParseDlqRecord(const RdKafka::Message& m) {
  DlqEntry e;
  if (m.key() != nullptr) e.key = *m.key();
  if (m.payload() != nullptr) e.payload.assign(static_cast<const char*>(m.payload()), m.len());
  e.original_topic = HeaderText(m, kafka::dlq::kOriginalTopic);
  e.original_partition = HeaderInt<int32_t>(m, kafka::dlq::kOriginalPartition, -1);
  e.original_offset = HeaderInt<int64_t>(m, kafka::dlq::kOriginalOffset, -1);
  e.original_timestamp_ms = HeaderInt<int64_t>(m, kafka::dlq::kOriginalTimestamp, -1);
  e.consumer_group = HeaderText(m, kafka::dlq::kOriginalConsumerGroup);
  e.error_class = HeaderText(m, kafka::dlq::kErrorClass);
  e.error_message = HeaderText(m, kafka::dlq::kErrorMessage);
  e.possibly_delivered = kafka::HeaderValue(m, kafka::dlq::kPossiblyDelivered) == "true";
  if (std::optional<std::string> attempt = kafka::HeaderValue(m, kafka::dlq::kAttempt)) {
    if (!absl::SimpleAtoi(*attempt, &e.attempt) || e.attempt < 1 ||
        e.attempt > kMaxAttemptNumber) {
      e.attempt = kUnknownAttempt;
      AddParkReason(e, absl::StrCat("parked at once: attempt header ", kafka::dlq::kAttempt,
                                    "=\"", DisplayText(*attempt),
                                    "\" is not a whole number from 1 to ", kMaxAttemptNumber,
                                    "; fix the sender, then Retry"));
    }
  }
  // Exactly what the original record carried (order and repeated names included), so that a
  // re-publish is byte for byte the same.
  for (auto& [name, value] : kafka::AllHeaders(m)) {
    if (absl::StartsWith(name, "kafka_dlt-") || name == kafka::dlq::kAttempt) continue;
    e.headers.emplace_back(std::move(name), std::move(value));
  }
  e.event_id = HeaderText(m, kafka::kEventIdHeader);
  if (e.event_id.empty()) {
    // Only a record that could not even be parsed lacks an id; key it by where it came from.
    bool known = !e.original_topic.empty();
    e.event_id = absl::StrCat("poison:", known ? e.original_topic : m.topic_name(), ":",
                              known ? e.original_partition : m.partition(), ":",
                              known ? e.original_offset : m.offset());
  }
  if (e.original_topic.empty()) {
    e.error_message = absl::StrCat("DLQ record without ", kafka::dlq::kOriginalTopic,
                                   " cannot be re-published; ", e.error_message);
    e.error_class = kPoisonClass;
  }
  if (e.error_class == kPoisonClass) AddParkReason(e, kPoisonNote);
  return e;
}

absl::StatusOr<std::unique_ptr<DlqConsumer>> DlqConsumer::Create(
    const kafka::Config& config, const std::string& topic, FailedMessageStore& store,
    metrics::Registry& registry, std::function<void(bool)> on_health) {
  std::unique_ptr<DlqConsumer> self(new DlqConsumer(store, registry, std::move(on_health)));
  // One worker: records are stored one after another, in the order read.
  ASSIGN_OR_RETURN(self->consumer_,
                   kafka::KeyedConsumer::Create(
                       {.config = config, .topic = topic, .concurrency = 1,
                        .poll_timeout = absl::Milliseconds(200)},
                       *self, registry));
  return self;
}

DlqConsumer::Metrics::Metrics(metrics::Registry& registry)
    : recorded(registry.GetCounter("retry_dlq_records_total", "DLQ records stored")),
      parked(registry.GetCounter(kParkedMetric, kParkedMetricHelp)),
      store_errors(registry.GetCounter("retry_dlq_store_errors_total",
                                       "Failures to store a DLQ record (retried)")),
      unstorable(registry.GetCounter(
          "retry_dlq_unstorable_total",
          "DLQ records Postgres refused as they came, parked as bytes (error class unstorable)")) {}

DlqConsumer::DlqConsumer(FailedMessageStore& store, metrics::Registry& registry,
                         std::function<void(bool)> on_health)
    : store_(store),
      on_health_(std::move(on_health)),
      metrics_(registry) {}

DlqConsumer::~DlqConsumer() = default;  // the consumer leaves the group

void DlqConsumer::Handle(const RdKafka::Message& message, const kafka::Assignment& assignment,
                         kafka::Completion done) {
  // Not stored: not committed, re-read after a restart or by the partition's next owner.
  done(Store(message, assignment.cancelled()) ? kafka::Completion::kDone
                                              : kafka::Completion::kAbandoned);
}

bool DlqConsumer::Store(const RdKafka::Message& message, const absl::Notification& cancelled) {
  DlqEntry entry = ParseDlqRecord(message);
  bool unstorable = false;
  Backoff backoff(absl::Milliseconds(200), absl::Seconds(10));
  while (true) {
    absl::StatusOr<RecordOutcome> outcome = store_.Record(entry);
    if (outcome.ok()) {
      ReportHealth(true);
      metrics_.recorded.Increment();
      nlohmann::json fields = {{"event_id", entry.event_id}, {"id", outcome->id},
                               {"attempt", entry.attempt}, {"status", outcome->status},
                               {"error_class", entry.error_class}};
      if (unstorable) metrics_.unstorable.Increment();
      if (outcome->parked) {
        metrics_.parked.Increment();
        fields["error_message"] = entry.error_message;
        fields["note"] = entry.park_reason;
        log::Warn(absl::StrCat("message parked as ", outcome->status), fields);
      } else if (outcome->ignored) {
        log::Debug("DLQ record already stored", fields);
      } else {
        log::Info("DLQ record stored", fields);
      }
      return true;
    }
    if (!unstorable && !IsPostgresUnavailable(outcome.status())) {
      // Postgres answered and refused this record: waiting will not change that. Keep its bytes
      // in a row made only of values we control, and go on with the next record.
      log::Error("DLQ record cannot be stored; parking its bytes",
                 {{"event_id", entry.event_id}, {"partition", message.partition()},
                  {"offset", message.offset()},
                  {"error", std::string(outcome.status().message())}});
      entry = UnstorableDlqEntry(message, outcome.status());
      unstorable = true;
      continue;
    }
    // Postgres is down, or refuses even that row: the stage, not the record, is in trouble.
    // Once it recovers, the record as it came gets the first chance again.
    if (unstorable) {
      entry = ParseDlqRecord(message);
      unstorable = false;
    }
    ReportHealth(false);
    metrics_.store_errors.Increment();
    log::Warn("storing DLQ record failed; retrying",
              {{"event_id", entry.event_id}, {"error", std::string(outcome.status().message())}});
    if (!backoff.Wait(cancelled)) return false;
  }
}

void DlqConsumer::ReportHealth(bool storing) {
  if (on_health_) on_health_(storing);
}

void DlqConsumer::Run(const absl::Notification& stop) { consumer_->Run(stop); }

}  // namespace concert::retry
