#include "notifier/dead_letters.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/backoff.h"
#include "common/log.h"

namespace concert::notifier {
namespace {

std::string TimestampType(RdKafka::MessageTimestamp::MessageTimestampType type) {
  switch (type) {
    case RdKafka::MessageTimestamp::MSG_TIMESTAMP_CREATE_TIME:
      return "CREATE_TIME";
    case RdKafka::MessageTimestamp::MSG_TIMESTAMP_LOG_APPEND_TIME:
      return "LOG_APPEND_TIME";
    default:
      return "NO_TIMESTAMP_TYPE";
  }
}

// What one Produce() call learns from its delivery report.
struct Delivery {
  absl::Notification done;
  absl::Status status;
};

}  // namespace

DeadLetters::DeadLetters(Options options, ProducerFactory factory)
    : options_(std::move(options)), factory_(std::move(factory)) {}

kafka::Record DeadLetters::Build(const RdKafka::Message& original,
                                 const DeadLetter& letter) const {
  kafka::Record record;
  record.topic = options_.topic;
  if (original.key() != nullptr) record.key = *original.key();
  record.value.assign(static_cast<const char*>(original.payload()), original.len());
  for (auto& [name, value] : kafka::AllHeaders(original)) {
    // Our own headers are written fresh below; a retried record brings old ones along.
    if (absl::StartsWith(name, "kafka_dlt-") || name == kafka::dlq::kAttempt) continue;
    record.headers.emplace_back(std::move(name), std::move(value));
  }
  RdKafka::MessageTimestamp ts = original.timestamp();
  record.headers.insert(
      record.headers.end(),
      {{kafka::dlq::kOriginalTopic, original.topic_name()},
       {kafka::dlq::kOriginalPartition, std::to_string(original.partition())},
       {kafka::dlq::kOriginalOffset, std::to_string(original.offset())},
       {kafka::dlq::kOriginalTimestamp, std::to_string(ts.timestamp)},
       {kafka::dlq::kOriginalTimestampType, TimestampType(ts.type)},
       {kafka::dlq::kOriginalConsumerGroup, options_.group_id},
       {kafka::dlq::kErrorClass, letter.error_class},
       {kafka::dlq::kErrorMessage, letter.error},
       {kafka::dlq::kAttempt, std::to_string(letter.attempt)}});
  if (letter.possibly_delivered) {
    record.headers.emplace_back(kafka::dlq::kPossiblyDelivered, "true");
  }
  return record;
}

std::shared_ptr<kafka::Producer> DeadLetters::Producer() {
  std::lock_guard lock(mu_);
  if (producer_ == nullptr) {
    absl::StatusOr<std::unique_ptr<kafka::Producer>> created = factory_();
    if (!created.ok()) {
      log::Error("creating the DLQ producer failed",
                 {{"error", std::string(created.status().message())}});
      return nullptr;
    }
    producer_ = std::move(*created);
  }
  return producer_;
}

void DeadLetters::Recreate(const std::shared_ptr<kafka::Producer>& broken) {
  std::lock_guard lock(mu_);
  // Whoever sees the fatal error first replaces it; the old one goes when its last user does.
  if (producer_ == broken) producer_.reset();
}

absl::Status DeadLetters::Send(const RdKafka::Message& original, DeadLetter& letter,
                               const absl::Notification& stop) {
  kafka::Record record = Build(original, letter);
  Backoff backoff(absl::Milliseconds(100), options_.max_backoff);
  while (true) {
    std::shared_ptr<kafka::Producer> producer = Producer();
    absl::Status status = absl::UnavailableError("no DLQ producer");
    if (producer != nullptr) {
      auto delivery = std::make_shared<Delivery>();
      status = producer->Produce(record, [delivery](const absl::Status& s) {
        delivery->status = s;
        delivery->done.Notify();
      });
      if (status.ok()) {
        // Only the delivery report ends a copy's life; until then, no second copy.
        while (!delivery->done.WaitForNotificationWithTimeout(absl::Seconds(1))) {
          if (stop.HasBeenNotified() &&
              !delivery->done.WaitForNotificationWithTimeout(options_.stop_grace)) {
            return absl::CancelledError("stopping before the DLQ acknowledged the dead letter");
          }
        }
        status = delivery->status;
      }
    }
    if (status.ok()) {
      healthy_ = true;
      return absl::OkStatus();
    }
    if (kafka::IsRecordRejected(status) && !record.value.empty()) {
      size_t bytes = record.value.size();
      letter.error = absl::StrCat(letter.error_class, ": ", letter.error, "; the record (", bytes,
                                  " bytes) is too large for the DLQ (", status.message(),
                                  "): set aside by reference, read it at its original offset");
      letter.error_class = "poison";
      record = Build(original, letter);
      record.value.clear();
      record.headers.emplace_back(kOriginalValueBytesHeader, std::to_string(bytes));
      log::Warn("dead letter too large: setting it aside by reference",
                {{"event_id", letter.event_id}, {"bytes", static_cast<int64_t>(bytes)}});
      continue;
    }
    healthy_ = false;
    log::Error("DLQ produce failed; retrying",
               {{"event_id", letter.event_id}, {"error", std::string(status.message())}});
    if (producer != nullptr && !producer->FatalError().ok()) {
      log::Error("DLQ producer hit a fatal error: recreating it",
                 {{"error", std::string(producer->FatalError().message())}});
      Recreate(producer);
    }
    if (!backoff.Wait(stop)) return absl::CancelledError("stopping while the DLQ is unavailable");
  }
}

}  // namespace concert::notifier
