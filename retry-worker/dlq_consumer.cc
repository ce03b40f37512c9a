#include "retry-worker/dlq_consumer.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "common/status.h"

namespace concert::retry {
namespace {

template <typename Int>
Int HeaderInt(const RdKafka::Message& m, const char* name, Int fallback) {
  std::optional<std::string> value = kafka::HeaderValue(m, name);
  Int parsed;
  if (value && absl::SimpleAtoi(*value, &parsed)) return parsed;
  return fallback;
}

std::string HeaderString(const RdKafka::Message& m, const char* name) {
  return kafka::HeaderValue(m, name).value_or("");
}

}  // namespace

DlqEntry ParseDlqRecord(const RdKafka::Message& m) {
  DlqEntry e;
  if (m.key() != nullptr) e.key = *m.key();
  if (m.payload() != nullptr) e.payload.assign(static_cast<const char*>(m.payload()), m.len());
  e.original_topic = HeaderString(m, kafka::dlq::kOriginalTopic);
  e.original_partition = HeaderInt<int32_t>(m, kafka::dlq::kOriginalPartition, -1);
  e.original_offset = HeaderInt<int64_t>(m, kafka::dlq::kOriginalOffset, -1);
  e.original_timestamp_ms = HeaderInt<int64_t>(m, kafka::dlq::kOriginalTimestamp, -1);
  e.consumer_group = HeaderString(m, kafka::dlq::kOriginalConsumerGroup);
  e.error_class = HeaderString(m, kafka::dlq::kErrorClass);
  e.error_message = HeaderString(m, kafka::dlq::kErrorMessage);
  e.attempt = std::max(1, HeaderInt<int>(m, kafka::dlq::kAttempt, 1));
  for (auto& [name, value] : kafka::AllHeaders(m)) {
    if (absl::StartsWith(name, "kafka_dlt-") || name == kafka::dlq::kAttempt) continue;
    // The last value wins, as HeaderValue() reads it.
    auto same = std::find_if(e.headers.begin(), e.headers.end(),
                             [&](const auto& h) { return h.first == name; });
    if (same != e.headers.end()) {
      same->second = value;
    } else {
      e.headers.emplace_back(name, value);
    }
  }
  e.event_id = HeaderString(m, kafka::kEventIdHeader);
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
  return e;
}

absl::StatusOr<std::unique_ptr<DlqConsumer>> DlqConsumer::Create(const kafka::Config& config,
                                                                  const std::string& topic,
                                                                  FailedMessageStore& store,
                                                                  metrics::Registry& registry) {
  ASSIGN_OR_RETURN(std::unique_ptr<RdKafka::Conf> conf, kafka::MakeConf(config));
  std::string error;
  std::unique_ptr<RdKafka::KafkaConsumer> consumer(RdKafka::KafkaConsumer::create(conf.get(), error));
  if (!consumer) return absl::InvalidArgumentError(absl::StrCat("kafka consumer: ", error));
  RETURN_IF_ERROR(kafka::StatusFromError(consumer->subscribe({topic}), "subscribing to " + topic));
  return std::unique_ptr<DlqConsumer>(new DlqConsumer(std::move(consumer), store, registry));
}

DlqConsumer::DlqConsumer(std::unique_ptr<RdKafka::KafkaConsumer> consumer,
                         FailedMessageStore& store, metrics::Registry& registry)
    : consumer_(std::move(consumer)),
      store_(store),
      recorded_(registry.GetCounter("retry_dlq_records_total", "DLQ records stored")),
      parked_(registry.GetCounter("retry_parked_total",
                                  "Messages parked as FAILED after their last attempt")),
      store_errors_(registry.GetCounter("retry_dlq_store_errors_total",
                                        "Failures to store a DLQ record (retried)")) {}

DlqConsumer::~DlqConsumer() { consumer_->close(); }

bool DlqConsumer::Store(const RdKafka::Message& message, const absl::Notification& stop) {
  DlqEntry entry = ParseDlqRecord(message);
  absl::Duration backoff = absl::Milliseconds(200);
  while (true) {
    absl::StatusOr<RecordOutcome> outcome = store_.Record(entry);
    if (outcome.ok()) {
      recorded_.Increment();
      nlohmann::json fields = {{"event_id", entry.event_id}, {"id", outcome->id},
                               {"attempt", entry.attempt}, {"status", outcome->status},
                               {"error_class", entry.error_class}};
      if (outcome->parked) {
        parked_.Increment();
        fields["error_message"] = entry.error_message;
        log::Warn("message parked as FAILED", fields);
      } else if (outcome->ignored) {
        log::Debug("DLQ record already stored", fields);
      } else {
        log::Info("DLQ record stored", fields);
      }
      return true;
    }
    store_errors_.Increment();
    log::Warn("storing DLQ record failed; retrying",
              {{"event_id", entry.event_id}, {"error", std::string(outcome.status().message())}});
    if (stop.WaitForNotificationWithTimeout(backoff)) return false;
    backoff = std::min(backoff * 2, absl::Seconds(10));
  }
}

void DlqConsumer::Run(const absl::Notification& stop) {
  while (!stop.HasBeenNotified()) {
    std::unique_ptr<RdKafka::Message> m(consumer_->consume(200));
    switch (m->err()) {
      case RdKafka::ERR_NO_ERROR:
        break;
      case RdKafka::ERR__TIMED_OUT:
      case RdKafka::ERR__PARTITION_EOF:
        continue;
      default:
        log::Warn("DLQ consumer error", {{"error", m->errstr()}});
        continue;
    }
    if (!Store(*m, stop)) return;  // not stored: not committed, re-read after a restart
    // The row is committed; only now may the group move past the record.
    RdKafka::ErrorCode code = consumer_->commitSync(m.get());
    if (code != RdKafka::ERR_NO_ERROR) {
      // Harmless: the record is re-read later and Record() ignores it as already stored.
      log::Warn("committing DLQ offset failed", {{"error", RdKafka::err2str(code)}});
    }
  }
}

}  // namespace concert::retry
