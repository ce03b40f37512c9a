// An asynchronous producer with delivery callbacks, over librdkafka's, with its own poll thread.
//
//   ASSIGN_OR_RETURN(auto producer, Producer::Create(ProducerConfig(cluster, "outbox-relay")));
//   producer->Produce({.topic = "t", .key = "7", .value = bytes},
//                     [](const absl::Status& acked) { ... });  // on the producer's poll thread
//
// Thread-safe: many threads produce at once.
#ifndef CONCERT_COMMON_KAFKA_PRODUCER_H_
#define CONCERT_COMMON_KAFKA_PRODUCER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <librdkafka/rdkafkacpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/kafka/cluster.h"
#include "common/kafka/headers.h"

namespace concert::kafka {

struct Record {
  std::string topic;
  int32_t partition = RdKafka::Topic::PARTITION_UA;
  std::string key;
  std::string value;
  Headers headers;
};

class Producer {
 public:
  // OK once Kafka acknowledged the record (all in-sync replicas), or the delivery error.
  using Callback = std::function<void(const absl::Status&)>;

  static absl::StatusOr<std::unique_ptr<Producer>> Create(const Config& config);
  ~Producer();  // flushes for up to 10 s, then stops the poll thread

  // Queues the record; `done` runs later on the poll thread. Waits while the local queue is
  // full; fails at once on a fatal producer error (the producer must then be recreated).
  absl::Status Produce(Record record, Callback done);
  // Produce() and wait for the acknowledgement.
  absl::Status ProduceAndWait(Record record, absl::Duration timeout);
  // Waits until everything queued is acknowledged or failed.
  absl::Status Flush(absl::Duration timeout);
  // A fatal error (e.g. the idempotent producer lost its sequence); OK when none.
  absl::Status FatalError();
  // The librdkafka handle, for what this wrapper does not offer (tests inject fatal errors).
  RdKafka::Producer& handle() { return *producer_; }

 private:
  explicit Producer(std::unique_ptr<RdKafka::Producer> producer);
  class DeliveryReporter;

  std::unique_ptr<DeliveryReporter> reporter_;
  std::unique_ptr<RdKafka::Producer> producer_;
  std::atomic<bool> stop_{false};
  std::thread poller_;
};

}  // namespace concert::kafka

#endif  // CONCERT_COMMON_KAFKA_PRODUCER_H_
