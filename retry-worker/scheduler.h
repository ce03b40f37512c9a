// The re-publishing side of the retry-worker: every interval, claims the due PENDING rows and
// re-publishes each to its ORIGINAL topic with the original key, value and headers (bytes, in
// order) and retry_topic-attempts = stored attempts + 1, then marks the acknowledged ones
// PROCESSED, parks those that can never be published (no or an invalid original topic, a topic
// that does not exist, a record too large) and moves the rest back (FailedMessageStore).
//
// The rows stay locked (FOR UPDATE SKIP LOCKED) until Kafka has answered for every one of them,
// which is what keeps two replicas from publishing the same attempt twice. The producer's
// message timeout equals the publish timeout, so librdkafka has settled every record (delivered
// or failed) before the wait ends and the locks are released: a record reported as failed is
// not silently delivered later.
//
//   ASSIGN_OR_RETURN(auto scheduler, Scheduler::Create(options, store, registry));
//   scheduler->Run(stop);  // RunOnce() every options.interval until `stop`
//
// Run() and RunOnce() from one thread at a time.
#ifndef CONCERT_RETRY_WORKER_SCHEDULER_H_
#define CONCERT_RETRY_WORKER_SCHEDULER_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "common/kafka/cluster.h"
#include "common/kafka/producer.h"
#include "common/metrics.h"
#include "retry-worker/store.h"

namespace concert::retry {

class Scheduler {
 public:
  struct Options {
    kafka::Cluster kafka;
    std::string client_id = "retry-worker";
    absl::Duration interval = absl::Seconds(30);
    int batch = 100;
    absl::Duration publish_timeout = absl::Seconds(10);
    // Called after every pass with its outcome (health reporting).
    std::function<void(const absl::Status&)> on_pass;
  };

  // The scheduler's counters. Constructing them registers them at 0: RetryWorker does so at
  // start, so that they exist before Kafka and Postgres are reached.
  struct Metrics {
    explicit Metrics(metrics::Registry& registry);
    metrics::Counter& republished;
    metrics::Counter& publish_errors;
    metrics::Counter& parked;
  };

  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(Options options,
                                                           FailedMessageStore& store,
                                                           metrics::Registry& registry);

  // One pass: claims up to `batch` due rows and re-publishes them.
  absl::StatusOr<FailedMessageStore::PassResult> RunOnce();
  // Passes until `stop`: a full batch is followed at once by another pass, otherwise the next
  // one comes after `interval`.
  void Run(const absl::Notification& stop);

 private:
  Scheduler(Options options, FailedMessageStore& store, metrics::Registry& registry);
  absl::Status EnsureProducer();
  std::vector<absl::Status> Publish(const std::vector<FailedMessage>& rows);

  Options options_;
  FailedMessageStore& store_;
  std::unique_ptr<kafka::Producer> producer_;
  Metrics metrics_;
};

}  // namespace concert::retry

#endif  // CONCERT_RETRY_WORKER_SCHEDULER_H_
