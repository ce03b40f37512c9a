// Record headers: reading them off a consumed record, and the names our services agree on (the
// events' headers, and the dead-letter headers that the notifier writes and the retry-worker
// reads).
//
//   std::optional<std::string> id = kafka::HeaderValue(message, kafka::kEventIdHeader);
//
// Stateless; safe from any thread on a message that thread holds.
#ifndef CONCERT_COMMON_KAFKA_HEADERS_H_
#define CONCERT_COMMON_KAFKA_HEADERS_H_

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <librdkafka/rdkafkacpp.h>

#include "absl/strings/string_view.h"

namespace concert::kafka {

using Headers = std::vector<std::pair<std::string, std::string>>;

// The value of the last header named `name`, if any.
std::optional<std::string> HeaderValue(const RdKafka::Message& message, absl::string_view name);
// Every header, in order, repeated names included.
Headers AllHeaders(const RdKafka::Message& message);

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

#endif  // CONCERT_COMMON_KAFKA_HEADERS_H_
