// The DLQ side of the retry-worker: reads the dead-letter topic in its consumer group on a
// KeyedConsumer (common/kafka/consumer.h) with one worker, stores each record through
// FailedMessageStore, and lets the consumer commit the record's offset only after its row is
// committed, so a crash in between re-reads the record (Record() ignores a redelivery).
//
//   ASSIGN_OR_RETURN(auto consumer, DlqConsumer::Create(config, "payment-notification-dlq",
//                                                       store, registry));
//   consumer->Run(stop);  // until `stop` is notified
//
// Run() must be called from one thread; Create() and the destructor from the owning thread.
#ifndef CONCERT_RETRY_WORKER_DLQ_CONSUMER_H_
#define CONCERT_RETRY_WORKER_DLQ_CONSUMER_H_

#include <functional>
#include <memory>
#include <string>

#include <librdkafka/rdkafkacpp.h>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "common/kafka/cluster.h"
#include "common/kafka/consumer.h"
#include "common/metrics.h"
#include "retry-worker/store.h"

namespace concert::retry {

// Reads the dead-letter headers (common/kafka/headers.h, namespace dlq) of one DLQ record.
// Headers that are not dead-letter ones are the original record's and are kept, as bytes, for
// re-publishing.
// A record without an event_id gets "poison:<topic>:<partition>:<offset>" as its key; one
// without an original topic cannot be re-published and is classed "poison". Never fails: what
// cannot be used (an attempt header out of range) makes the entry park at once with the reason.
DlqEntry ParseDlqRecord(const RdKafka::Message& message);

class DlqConsumer : private kafka::RecordHandler {
 public:
  // The consumer's counters. Constructing them registers them at 0: RetryWorker does so at
  // start, so that they exist before Kafka and Postgres are reached.
  struct Metrics {
    explicit Metrics(metrics::Registry& registry);
    metrics::Counter& recorded;
    metrics::Counter& parked;
    metrics::Counter& store_errors;
    metrics::Counter& unstorable;
  };

  // `on_health` (on the consumer's worker thread) is told false while Postgres cannot store
  // anything and true once a record is stored again.
  static absl::StatusOr<std::unique_ptr<DlqConsumer>> Create(
      const kafka::Config& config, const std::string& topic, FailedMessageStore& store,
      metrics::Registry& registry, std::function<void(bool)> on_health = nullptr);
  ~DlqConsumer() override;

  // Consumes until `stop`. A record Postgres refuses for what it holds is stored as an
  // "unstorable" row (UnstorableDlqEntry) and the consumer goes on; while Postgres is
  // unavailable the record is retried with backoff and never skipped. Leaves the group on
  // return.
  void Run(const absl::Notification& stop);

 private:
  DlqConsumer(FailedMessageStore& store, metrics::Registry& registry,
              std::function<void(bool)> on_health);
  // kafka::RecordHandler: Store(), done once stored, abandoned at stop or revoke.
  void Handle(const RdKafka::Message& message, const kafka::Assignment& assignment,
              kafka::Completion done) override;
  // Stores one record, retrying until it is stored or `cancelled`; false when cancelled first.
  bool Store(const RdKafka::Message& message, const absl::Notification& cancelled);
  void ReportHealth(bool storing);

  FailedMessageStore& store_;
  std::function<void(bool)> on_health_;
  Metrics metrics_;
  std::unique_ptr<kafka::KeyedConsumer> consumer_;  // first to go: it calls the above
};

}  // namespace concert::retry

#endif  // CONCERT_RETRY_WORKER_DLQ_CONSUMER_H_
