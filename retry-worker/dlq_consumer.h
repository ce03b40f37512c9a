// The DLQ side of the retry-worker: reads the dead-letter topic in its consumer group, stores
// each record through FailedMessageStore, and commits the record's offset only after its row is
// committed, so a crash in between re-reads the record (Record() ignores a redelivery).
//
//   ASSIGN_OR_RETURN(auto consumer, DlqConsumer::Create(config, "payment-notification-dlq",
//                                                       store, registry));
//   consumer->Run(stop);  // until `stop` is notified
//
// Run() must be called from one thread; Create() and the destructor from the owning thread.
#ifndef CONCERT_RETRY_WORKER_DLQ_CONSUMER_H_
#define CONCERT_RETRY_WORKER_DLQ_CONSUMER_H_

#include <memory>
#include <string>

#include <librdkafka/rdkafkacpp.h>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "common/kafka.h"
#include "common/metrics.h"
#include "retry-worker/store.h"

namespace concert::retry {

// Reads the dead-letter headers (common/kafka.h, namespace dlq) of one DLQ record. Headers that
// are not dead-letter ones are the original record's and are kept for re-publishing. A record
// without an event_id gets "poison:<topic>:<partition>:<offset>" as its key; one without an
// original topic cannot be re-published and is classed "poison".
DlqEntry ParseDlqRecord(const RdKafka::Message& message);

class DlqConsumer {
 public:
  static absl::StatusOr<std::unique_ptr<DlqConsumer>> Create(const kafka::Config& config,
                                                             const std::string& topic,
                                                             FailedMessageStore& store,
                                                             metrics::Registry& registry);
  ~DlqConsumer();

  // Consumes until `stop`; a record whose row cannot be stored (Postgres down) is retried with
  // backoff and never skipped. Leaves the group on return.
  void Run(const absl::Notification& stop);

 private:
  DlqConsumer(std::unique_ptr<RdKafka::KafkaConsumer> consumer, FailedMessageStore& store,
              metrics::Registry& registry);
  // Stores one record, retrying until it is stored or `stop`; false when stopped first.
  bool Store(const RdKafka::Message& message, const absl::Notification& stop);

  std::unique_ptr<RdKafka::KafkaConsumer> consumer_;
  FailedMessageStore& store_;
  metrics::Counter& recorded_;
  metrics::Counter& parked_;
  metrics::Counter& store_errors_;
};

}  // namespace concert::retry

#endif  // CONCERT_RETRY_WORKER_DLQ_CONSUMER_H_
