// Kafka helpers on librdkafka 2.0.2: the cluster settings every service shares (brokers,
// TLS, SASL, further librdkafka properties, replication of the topics it creates),
// configuration with our defaults, topic creation, an asynchronous producer with delivery
// callbacks, header access, and the dead-letter header names that the notifier writes and the
// retry-worker reads.
//
//   kafka::Cluster cluster = kafka::ReadCluster(settings);   // KAFKA_* settings, in main()
//   ASSIGN_OR_RETURN(auto producer, Producer::Create(ProducerConfig(cluster, "outbox-relay")));
//   producer->Produce({.topic = "t", .key = "7", .value = bytes},
//                     [](const absl::Status& acked) { ... });  // on the producer's poll thread
//
// librdkafka reports errors as codes; they become absl::Status here, once.
#ifndef CONCERT_COMMON_KAFKA_H_
#define CONCERT_COMMON_KAFKA_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <librdkafka/rdkafkacpp.h>

#include "absl/strings/string_view.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/config.h"

namespace concert::kafka {

using Config = std::map<std::string, std::string>;
using Headers = std::vector<std::pair<std::string, std::string>>;

// The Kafka cluster a service talks to: where it is, how every client of the service
// authenticates there, and how the topics the service creates are replicated.
struct Cluster {
  Cluster() = default;
  // A cluster known by its address alone (tests, tools): PLAINTEXT, broker's replication.
  Cluster(std::string bootstrap) : bootstrap_servers(std::move(bootstrap)) {}  // NOLINT
  Cluster(const char* bootstrap) : bootstrap_servers(bootstrap) {}             // NOLINT

  std::string bootstrap_servers = "127.0.0.1:9092";
  // librdkafka properties set on every client: security.protocol, sasl.*, ssl.*, then the
  // operator's KAFKA_PROPERTIES (which win). Holds the SASL password: never log it.
  Config client_properties;
  // Of topics the service creates; -1: the broker's default.replication.factor.
  int replication_factor = -1;
  // min.insync.replicas of topics the service creates; 0: the broker's default.
  int min_insync_replicas = 0;
};

// Reads the KAFKA_* settings every Kafka-speaking service shares (KAFKA_BOOTSTRAP_SERVERS,
// KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*, KAFKA_PROPERTIES,
// KAFKA_TOPIC_REPLICATION_FACTOR, KAFKA_TOPIC_MIN_INSYNC_REPLICAS). Problems (an unknown
// protocol, a SASL setting without SASL, an unreadable file, an unknown librdkafka property)
// are reported through `settings` like any bad value; no secret appears in them.
Cluster ReadCluster(Settings& settings);

// Idempotent (exactly-once per partition), acks=all, ordered, lightly batched.
Config ProducerConfig(const Cluster& cluster, const std::string& client_id);
// Manual commits only, eager "range" assignor (librdkafka 2.0.2's cooperative-sticky has bugs),
// start at the earliest offset when the group has none.
Config ConsumerConfig(const Cluster& cluster, const std::string& group_id,
                      const std::string& client_id);

// A bad property is reported with its key; the value too unless it may be a secret.
absl::StatusOr<std::unique_ptr<RdKafka::Conf>> MakeConf(const Config& config);

// UNAVAILABLE: Kafka unreachable or busy, retry. INVALID_ARGUMENT: this record can never be
// accepted as it is (larger than the producer's message.max.bytes, malformed); see
// IsRecordRejected. A broker's own, smaller limit is reported later, per batch, to the
// delivery callback. FAILED_PRECONDITION: the topic or partition is missing.
absl::Status StatusFromError(RdKafka::ErrorCode code, absl::string_view context);
// True for a status that condemns the record, not Kafka: retrying it cannot help.
inline bool IsRecordRejected(const absl::Status& status) {
  return status.code() == absl::StatusCode::kInvalidArgument;
}

// True when Kafka refused this service rather than failing it: credentials or TLS rejected
// (UNAUTHENTICATED), or a topic the cluster will not create as configured: more replicas than
// brokers, not authorized (FAILED_PRECONDITION). Retrying cannot help until the configuration
// or the cluster changes.
bool IsRefusal(const absl::Status& status);

// Logs a refusal once, as an error, however often a service retries it; another kind of
// refusal (credentials or TLS, topic creation), or one after a spell of other failures, is
// logged again. Report() returns false for any other status: the caller logs those.
class RefusalLog {
 public:
  bool Report(const absl::Status& status, absl::string_view what);

 private:
  std::optional<absl::StatusCode> logged_;
};

struct TopicSpec {
  std::string name;
  int partitions = 1;
};

// Creates the topics that do not exist yet, with the cluster's replication settings; existing
// ones are left as they are. Fails fast with a refusal (IsRefusal) when Kafka rejects the
// credentials or TLS, or cannot give a topic the replication asked for.
absl::Status EnsureTopics(const Cluster& cluster, const std::vector<TopicSpec>& topics,
                          absl::Duration timeout = absl::Seconds(30));

// The value of the last header named `name`, if any.
std::optional<std::string> HeaderValue(const RdKafka::Message& message, absl::string_view name);
Headers AllHeaders(const RdKafka::Message& message);

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

// Headers on records of payment-completed-topic.
inline constexpr char kEventIdHeader[] = "event_id";
inline constexpr char kEventTypeHeader[] = "event_type";
inline constexpr char kContentTypeHeader[] = "content-type";
inline constexpr char kTraceparentHeader[] = "traceparent";

// Dead-letter headers, after Spring Kafka's kafka_dlt-* names that operators know.
namespace dlq {
inline constexpr char kOriginalTopic[] = "kafka_dlt-original-topic";
inline constexpr char kOriginalPartition[] = "kafka_dlt-original-partition";
inline constexpr char kOriginalOffset[] = "kafka_dlt-original-offset";
inline constexpr char kOriginalTimestamp[] = "kafka_dlt-original-timestamp";
inline constexpr char kOriginalTimestampType[] = "kafka_dlt-original-timestamp-type";
inline constexpr char kOriginalConsumerGroup[] = "kafka_dlt-original-consumer-group";
// A short machine-readable class: "poison", "telegram_4xx", "telegram_5xx", "timeout", ...
inline constexpr char kErrorClass[] = "kafka_dlt-exception-fqcn";
inline constexpr char kErrorMessage[] = "kafka_dlt-exception-message";
// The delivery attempt that failed, counted across the notifier -> DLQ -> retry loop, from 1:
// the notifier's own count of sends it began for the event (notification.deliveries.attempts,
// resends after a crash included), at least the number the incoming record carried. The
// retry-worker re-publishes with the next number.
inline constexpr char kAttempt[] = "retry_topic-attempts";
// Ours, not Spring's: "true" when a copy of the message may already have been delivered (the
// notifier found its delivery in flight after a crash, or the send timed out after the request
// went out). The kafka_dlt- prefix keeps it with the dead-letter headers, never re-published.
inline constexpr char kPossiblyDelivered[] = "kafka_dlt-possibly-delivered";
}  // namespace dlq

}  // namespace concert::kafka

#endif  // CONCERT_COMMON_KAFKA_H_
