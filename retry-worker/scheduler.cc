#include "retry-worker/scheduler.h"

#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "common/backoff.h"
#include "common/log.h"
#include "common/status.h"

namespace concert::retry {
namespace {

constexpr absl::Duration kFirstRetry = absl::Milliseconds(250);

// Kafka's rule for topic names. librdkafka would hand a bad one to the broker and report a
// failure per record; checking here makes it a permanent failure, parked with its reason.
absl::Status CheckTopicName(const std::string& topic) {
  if (topic.empty()) return absl::FailedPreconditionError("no original topic");
  bool valid = topic.size() <= 249 && topic != "." && topic != "..";
  for (char c : topic) {
    valid = valid && (absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' ||
                      c == '_' || c == '-');
  }
  if (!valid) return absl::FailedPreconditionError(absl::StrCat("invalid topic name ", topic));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(Options options,
                                                             FailedMessageStore& store,
                                                             metrics::Registry& registry) {
  std::unique_ptr<Scheduler> scheduler(new Scheduler(std::move(options), store, registry));
  RETURN_IF_ERROR(scheduler->EnsureProducer());
  return scheduler;
}

Scheduler::Metrics::Metrics(metrics::Registry& registry)
    : republished(registry.GetCounter("retry_republished_total",
                                      "Messages re-published to their original topic")),
      publish_errors(registry.GetCounter(
          "retry_publish_errors_total",
          "Re-publishes that failed (row parked, or PENDING again after the first backoff)")),
      parked(registry.GetCounter(kParkedMetric, kParkedMetricHelp)) {}

Scheduler::Scheduler(Options options, FailedMessageStore& store, metrics::Registry& registry)
    : options_(std::move(options)), store_(store), metrics_(registry) {}

absl::Status Scheduler::EnsureProducer() {
  if (producer_ != nullptr) {
    if (producer_->FatalError().ok()) return absl::OkStatus();
    log::Warn("recreating producer after a fatal error",
              {{"error", std::string(producer_->FatalError().message())}});
    producer_.reset();
  }
  kafka::Config config = kafka::ProducerConfig(options_.kafka, options_.client_id);
  // librdkafka must settle each record within our wait (see the header).
  int64_t timeout_ms = std::max<int64_t>(1000, absl::ToInt64Milliseconds(options_.publish_timeout));
  config["message.timeout.ms"] = std::to_string(timeout_ms);
  // A topic that does not exist must fail as such (ERR__UNKNOWN_TOPIC, parked), not as a
  // timeout (retried forever): give up waiting for its metadata well before the timeout.
  config["topic.metadata.propagation.max.ms"] = std::to_string(timeout_ms / 2);
  ASSIGN_OR_RETURN(producer_, kafka::Producer::Create(config));
  return absl::OkStatus();
}

std::vector<absl::Status> Scheduler::Publish(const std::vector<FailedMessage>& rows) {
  std::vector<absl::Status> results(rows.size(),
                                    absl::DeadlineExceededError("no acknowledgement from Kafka"));
  if (absl::Status s = EnsureProducer(); !s.ok()) {
    std::fill(results.begin(), results.end(), s);
    return results;
  }
  std::mutex mu;
  auto pending = std::make_shared<absl::BlockingCounter>(static_cast<int>(rows.size()));
  // The callbacks write into `results`; every one of them runs before this function returns
  // (see the Wait below), so capturing locals by reference is safe.
  for (size_t i = 0; i < rows.size(); ++i) {
    const FailedMessage& row = rows[i];
    kafka::Record record{.topic = row.original_topic, .key = row.key, .value = row.payload,
                         .headers = row.headers};
    record.headers.emplace_back(kafka::dlq::kAttempt, std::to_string(row.attempts + 1));
    absl::Status queued = CheckTopicName(row.original_topic);
    if (queued.ok()) {
      queued = producer_->Produce(std::move(record), [&, i, pending](const absl::Status& s) {
        {
          std::lock_guard lock(mu);
          results[i] = s;
        }
        pending->DecrementCount();
      });
    }
    if (!queued.ok()) {
      std::lock_guard lock(mu);
      results[i] = queued;
      pending->DecrementCount();
    }
  }
  // BlockingCounter has no timed wait. Flush bounds the wait instead: the producer's message
  // timeout equals publish_timeout, so every record is settled (acknowledged or failed) by then.
  absl::Status flushed = producer_->Flush(options_.publish_timeout + absl::Seconds(5));
  if (!flushed.ok()) {
    log::Error("producer did not settle the re-published records in time",
               {{"error", std::string(flushed.message())}});
  }
  pending->Wait();  // returns at once after a successful flush
  std::lock_guard lock(mu);
  return results;
}

absl::StatusOr<FailedMessageStore::PassResult> Scheduler::RunOnce() {
  absl::StatusOr<FailedMessageStore::PassResult> pass =
      store_.RepublishDue(options_.batch, [&](const std::vector<FailedMessage>& rows) {
        std::vector<absl::Status> results = Publish(rows);
        for (size_t i = 0; i < rows.size(); ++i) {
          nlohmann::json fields = {{"id", rows[i].id}, {"event_id", rows[i].event_id},
                                   {"topic", rows[i].original_topic},
                                   {"attempt", rows[i].attempts + 1}};
          if (results[i].ok()) {
            metrics_.republished.Increment();
            log::Info("re-published", fields);
            continue;
          }
          metrics_.publish_errors.Increment();
          fields["error"] = std::string(results[i].message());
          if (FailedMessageStore::IsPermanentPublishError(results[i])) {
            metrics_.parked.Increment();
            log::Warn("re-publish cannot succeed; parked", fields);
          } else {
            log::Warn("re-publish not acknowledged; due again after the first backoff", fields);
          }
        }
        return results;
      });
  if (options_.on_pass) options_.on_pass(pass.status());
  return pass;
}

void Scheduler::Run(const absl::Notification& stop) {
  // After a failed pass (Postgres away) the next comes sooner than `interval`, backing off up
  // to it: health, which follows the passes, then recovers soon after Postgres does.
  Backoff retry(kFirstRetry, options_.interval);
  while (!stop.HasBeenNotified()) {
    absl::StatusOr<FailedMessageStore::PassResult> pass = RunOnce();
    absl::Duration wait = options_.interval;
    if (!pass.ok()) {
      log::Warn("re-publish pass failed", {{"error", std::string(pass.status().message())}});
      wait = retry.Next();
    } else {
      retry.Reset();
      if (pass->claimed == options_.batch && pass->deferred == 0) continue;  // more may be due
    }
    stop.WaitForNotificationWithTimeout(wait);
  }
}

}  // namespace concert::retry
