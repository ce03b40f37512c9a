// Private to common/kafka: what the clients of this folder share beyond the public headers
// (the cluster's properties on a configuration, secrets kept out of messages, librdkafka's log
// lines through our logger). Not for use outside common/kafka.
#ifndef CONCERT_COMMON_KAFKA_INTERNAL_CLIENT_H_
#define CONCERT_COMMON_KAFKA_INTERNAL_CLIENT_H_

#include <string>

#include <librdkafka/rdkafka.h>

#include "common/kafka/cluster.h"

namespace concert::kafka::internal {

// `config` with the cluster's client properties set on it (they win).
Config WithClusterProperties(Config config, const Cluster& cluster);
// "key=value", or "key=(hidden)" for a property that may hold a secret.
std::string Shown(const std::string& key, const std::string& value);
// librdkafka's log callback: its lines (a broker down, a request timed out) through our logger
// instead of its own "%3|<time>|FAIL|<client>| ..." lines on stderr. On librdkafka's threads.
void WriteKafkaLine(const rd_kafka_t* rk, int syslog_level, const char* facility,
                    const char* message);

}  // namespace concert::kafka::internal

#endif  // CONCERT_COMMON_KAFKA_INTERNAL_CLIENT_H_
