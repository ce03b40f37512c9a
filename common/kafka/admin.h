// Topic administration: the topics a service needs, created at start with the cluster's
// replication settings.
//
//   RETURN_IF_ERROR(kafka::EnsureTopics(cluster, {{"payment-completed-topic", 3}}));
//
// Thread-safe: each call has an admin client of its own.
#ifndef CONCERT_COMMON_KAFKA_ADMIN_H_
#define CONCERT_COMMON_KAFKA_ADMIN_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/kafka/cluster.h"

namespace concert::kafka {

struct TopicSpec {
  std::string name;
  int partitions = 1;
};

// Creates the topics that do not exist yet, with the cluster's replication settings; existing
// ones are left as they are. Fails fast with a refusal (IsRefusal) when Kafka rejects the
// credentials or TLS, or cannot give a topic the replication asked for.
absl::Status EnsureTopics(const Cluster& cluster, const std::vector<TopicSpec>& topics,
                          absl::Duration timeout = absl::Seconds(30));

}  // namespace concert::kafka

#endif  // CONCERT_COMMON_KAFKA_ADMIN_H_
