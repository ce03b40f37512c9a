// The Kafka cluster a service talks to, and how our clients are configured for it: the KAFKA_*
// settings every service shares (brokers, TLS, SASL, further librdkafka properties, replication
// of the topics it creates), producer and consumer configuration with our defaults, and the one
// place where librdkafka's error codes become absl::Status.
//
//   kafka::Cluster cluster = kafka::ReadCluster(settings);   // KAFKA_* settings, in main()
//   ASSIGN_OR_RETURN(auto conf, kafka::MakeConf(kafka::ConsumerConfig(cluster, "g", "svc")));
//
// librdkafka is 2.12.0, built by `scripts/install-deps.sh librdkafka` (README: Quick start).
// Every client made through MakeConf logs through common/log.h. Thread-compatible values;
// RefusalLog belongs to one retry loop.
#ifndef CONCERT_COMMON_KAFKA_CLUSTER_H_
#define CONCERT_COMMON_KAFKA_CLUSTER_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include <librdkafka/rdkafkacpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/config.h"

namespace concert::kafka {

using Config = std::map<std::string, std::string>;

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
// Manual commits only, eager "range" assignor (chosen when librdkafka 2.0.2 had bugs in
// cooperative-sticky), start at the earliest offset when the group has none.
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
// `status`, marked so that IsRefusal() holds for it (for the clients of this folder).
absl::Status AsRefusal(absl::Status status);

// Logs a refusal once, as an error, however often a service retries it; another kind of
// refusal (credentials or TLS, topic creation), or one after a spell of other failures, is
// logged again. Report() returns false for any other status: the caller logs those.
class RefusalLog {
 public:
  bool Report(const absl::Status& status, absl::string_view what);

 private:
  std::optional<absl::StatusCode> logged_;
};

}  // namespace concert::kafka

#endif  // CONCERT_COMMON_KAFKA_CLUSTER_H_
