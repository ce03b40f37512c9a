// KeyedConsumer: a consumer group member that reads one topic and hands every record to an
// injected RecordHandler, keeping each key's records in order (Lanes, common/kafka/lanes.h), and
// committing an offset only below the lowest unfinished record of its partition. The handler
// knows nothing of offsets, rebalances or flow control; the consumer nothing of what a record
// means (after Redpanda's kafka/client: the consumer apart from what handles the records).
//
//   class Handler : public kafka::RecordHandler {
//     void Handle(const RdKafka::Message& m, const kafka::Assignment& a,
//                 kafka::Completion done) override { ...; done(kafka::Completion::kDone); }
//   };
//   ASSIGN_OR_RETURN(auto consumer, kafka::KeyedConsumer::Create(options, handler, registry));
//   consumer->Run(stop, [&](bool healthy) { SetServing(healthy); });
//
// - Run()'s thread only polls, never waits for a handler: it stays in its group. Records
//   without a key are lanes of their own.
// - Commits: every `commit_interval` in the background, and synchronously at a revoke and at
//   stop. Beyond `max_pending` records read and unfinished the partitions are paused (polling
//   goes on) until a quarter drained.
// - Revoke (eager assignors only): the partitions' Assignments are cancelled, unstarted records
//   dropped, records being handled waited for (at most `revoke_timeout`), what finished is
//   committed, then the partitions go. A lost assignment (the session expired) is let go at
//   once, uncommitted: another member may own it already. Stop: the same for every partition, then the group is
//   left.
// - Lag: high watermark minus the committable offset, asked of the broker while paused (nothing
//   is fetched then); health: the cluster answers and the handler says its dependencies do.
//
// Create() and the destructor on the owning thread; Run() on one thread, once.
#ifndef CONCERT_COMMON_KAFKA_CONSUMER_H_
#define CONCERT_COMMON_KAFKA_CONSUMER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafkacpp.h>
#include <nlohmann/json.hpp>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/kafka/cluster.h"
#include "common/kafka/lanes.h"
#include "common/metrics.h"

namespace concert::kafka {

// What a KeyedConsumer calls. Handle() on a worker thread, the others on Run()'s thread.
class RecordHandler {
 public:
  virtual ~RecordHandler() = default;
  // Handles one record. `done` may be called before returning or later from any thread; the
  // record's key waits until then. Once `assignment.cancelled()` is notified the handler ends
  // promptly: done(kAbandoned) unless the record's outcome is known.
  virtual void Handle(const RdKafka::Message& record, const Assignment& assignment,
                      Completion done) = 0;
  // After partitions were assigned, and after they were revoked (their records finished).
  virtual void OnAssigned(const std::vector<int32_t>& partitions) {}
  virtual void OnRevoked(const std::vector<int32_t>& partitions) {}
  // Whether what the handler depends on is reachable; `probe`: ask it now (every
  // health_interval), else answer from what the handler saw. May add fields to `details` for
  // the health log line.
  virtual bool Healthy(bool probe, nlohmann::json& details) { return true; }
};

struct KeyedConsumerOptions {
  // librdkafka configuration: ConsumerConfig(cluster, group, client id).
  Config config;
  std::string topic;
  // Records handled at once (at most one per key).
  int concurrency = 32;
  // Records read and not yet finished before the partitions pause (resumed at three quarters).
  int max_pending = 10000;
  // How often finished offsets are committed (and at every rebalance and at stop). Shorter
  // means fewer redeliveries after a crash; longer, fewer commit requests.
  absl::Duration commit_interval = absl::Milliseconds(200);
  // How long a revoke waits for records being handled before letting their partitions go.
  absl::Duration revoke_timeout = absl::Seconds(20);
  // How often the cluster and the handler's dependencies are probed when nothing else shows.
  absl::Duration health_interval = absl::Seconds(5);
  // How long one poll waits for a record.
  absl::Duration poll_timeout = absl::Milliseconds(50);
  // Of ConsumerGauges; empty: none.
  std::string metrics_prefix;
};

// The consumer's gauges, <prefix>_in_flight, _pending, _consumer_lag, _oldest_pending_age_seconds,
// _consumer_unsettled_seconds and _kafka_up. Constructing them registers them at 0: a service does so at start, so that they
// exist before Kafka is reached.
struct ConsumerGauges {
  ConsumerGauges(metrics::Registry& registry, const std::string& prefix);
  metrics::Gauge& in_flight;
  metrics::Gauge& pending;
  metrics::Gauge& lag;
  metrics::Gauge& oldest_age;
  // How long the member has been without its group coordinator or outside a settled assignment
  // (joining, rebalancing): from librdkafka's statistics, every second; 0 while settled.
  metrics::Gauge& unsettled;
  metrics::Gauge& kafka_up;
};

class KeyedConsumer {
 public:
  // Creates the consumer and subscribes; fails on a configuration librdkafka refuses.
  static absl::StatusOr<std::unique_ptr<KeyedConsumer>> Create(KeyedConsumerOptions options,
                                                               RecordHandler& handler,
                                                               metrics::Registry& registry);
  ~KeyedConsumer();

  // Consumes until `stop`, lets the handler finish the records it is on, commits what is
  // finished and leaves the group. `on_health` is called on this thread whenever the health
  // changes.
  void Run(const absl::Notification& stop, std::function<void(bool)> on_health = nullptr);

 private:
  class Rebalancer;
  // Run()'s view of a partition.
  struct PartitionState {
    std::shared_ptr<Assignment> assignment;
    std::map<int64_t, int64_t> unfinished;  // offset -> record timestamp (ms)
    int64_t next = -1;                      // one past the highest offset read
    int64_t committed = -1;                 // as Kafka confirmed it
    int64_t commit_requested = -1;          // the last offset handed to a background commit
    int64_t high_watermark = -1;            // asked of the broker while paused
  };
  enum class Commit { kWait, kInBackground };

  KeyedConsumer(KeyedConsumerOptions options, RecordHandler& handler,
                metrics::Registry& registry);
  void Enqueue(std::unique_ptr<RdKafka::Message> message);
  void TakeFinished();
  void FlowControl();
  // kWait for a revoke or a stop (the next owner starts from it); the periodic commit does not
  // wait: it would hold this thread while Kafka is away.
  void CommitDone(const std::vector<int32_t>* only_partitions, Commit how);
  void Assign(const std::vector<int32_t>& partitions);
  // `lost`: the session expired, the partitions may be another member's already.
  void Revoke(const std::vector<int32_t>& partitions, bool lost = false);
  void CheckHealth(bool force);
  void ReportHealth(bool probe = false);
  void UpdateGauges();
  // librdkafka's statistics callback (on Run()'s thread, within a poll): the group's state.
  static int OnStatistics(rd_kafka_t* client, char* json, size_t size, void* opaque);
  void ReadGroupState(const std::string& json);
  // Drops this consumer from the statistics callback's registry, then the client.
  void CloseClient();

  KeyedConsumerOptions options_;
  RecordHandler& handler_;
  std::unique_ptr<ConsumerGauges> gauges_;  // null without a metrics prefix
  std::unique_ptr<Rebalancer> rebalancer_;
  std::unique_ptr<RdKafka::KafkaConsumer> consumer_;
  Lanes lanes_;
  std::map<int32_t, PartitionState> partitions_;
  bool paused_ = false;
  bool kafka_ok_ = false;
  int reported_health_ = -1;
  std::function<void(bool)> on_health_;
  absl::Time last_commit_ = absl::InfinitePast();
  absl::Time last_health_check_ = absl::InfinitePast();
  absl::Time last_gauges_ = absl::InfinitePast();
  absl::Time last_watermark_query_ = absl::InfinitePast();
  absl::Time unsettled_since_ = absl::Now();  // InfiniteFuture while settled
};

}  // namespace concert::kafka

#endif  // CONCERT_COMMON_KAFKA_CONSUMER_H_
